"""What each image of an evaluation is conditioned on: class labels or prompts, one per index.

A condition source fixes, for every image index ``i`` of an evaluation, its condition (a class
label, a prompt) and its ``target`` (the class, or the prompted digit; ``-1`` when unconditional),
independently of batches and processes. The one evaluation pipeline (``generate -> parts ->
processes -> decode -> score``) asks the source for the condition of a chunk of indices and never
branches on the kind of network:

* ``ClassLabels.balanced(n, classes, seed)``: every class equally often, shuffled (the default of
  class-conditional networks; all ``-1`` for unconditional ones);
* ``ClassLabels(labels)``: fixed labels, one per image;
* ``Prompts(prompts, encoder, targets, attributes)``: text, encoded per chunk (``evaluation/t2i.py``
  builds the balanced digits-captions prompts);
* ``EncodedPrompts(condition)``: prompts encoded at once, one row per image (``patchforcing sample``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from patchforcing.conditioning import Condition
from patchforcing.errors import ConfigError
from patchforcing.text import text_condition


class ConditionSource:
    """Base: ``targets`` (M,) int64 and ``condition(indices, device)`` -> keywords of ``sample``."""

    targets: Tensor

    @property
    def num_samples(self) -> int:
        return int(self.targets.shape[0])

    def condition(self, indices: Tensor, device: torch.device | str) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What identifies the conditions (written to the parts' ``plan.json``)."""
        raise NotImplementedError


class ClassLabels(ConditionSource):
    """One class label per image (``-1``: unconditional)."""

    def __init__(self, labels: Tensor, kind: str = "fixed"):
        self.targets = torch.as_tensor(labels).long().cpu()
        self.kind = kind

    @classmethod
    def balanced(cls, num_samples: int, num_classes: int, seed: int = 0) -> ClassLabels:
        """Every class equally often (up to one), shuffled by ``seed``; all ``-1`` without classes."""
        if num_classes <= 0:
            return cls(torch.full((num_samples,), -1, dtype=torch.long), "unconditional")
        labels = np.arange(num_samples) % num_classes
        np.random.default_rng(seed).shuffle(labels)
        return cls(torch.from_numpy(labels).long(), "balanced")

    def condition(self, indices: Tensor, device: torch.device | str) -> dict[str, Any]:
        y = self.targets[indices]
        return {"labels": None if bool((y < 0).all()) else y.to(device)}

    def describe(self) -> dict[str, Any]:
        digest = int(np.asarray(self.targets, dtype=np.int64).dot(np.arange(1, self.num_samples + 1) % 9973))
        return {"kind": self.kind, "labels_digest": digest}


class Prompts(ConditionSource):
    """One prompt per image, encoded chunk by chunk with ``encoder``.

    Args:
        prompts: the M prompts.
        encoder: a text encoder of ``patchforcing.text`` (its width must fit the network).
        targets: (M,) the class each prompt asks for (``-1``: none), scored like class labels.
        attributes: optional named (M,) targets a scorer checks (e.g. ``thickness``, ``slant``).
        name: what the prompts are (recorded), e.g. ``digits-captions``.
    """

    def __init__(self, prompts: list[str], encoder, targets: Tensor | None = None,
                 attributes: dict[str, Tensor] | None = None, name: str = "prompts"):
        if not prompts:
            raise ConfigError("no prompts to evaluate: give at least one")
        self.prompts, self.encoder, self.name = list(prompts), encoder, name
        self.targets = torch.full((len(prompts),), -1, dtype=torch.long) if targets is None else targets.long().cpu()
        self.attributes = dict(attributes or {})

    def condition(self, indices: Tensor, device: torch.device | str) -> dict[str, Condition]:
        return {"condition": text_condition(self.encoder, [self.prompts[int(i)] for i in indices], device)}

    def describe(self) -> dict[str, Any]:
        return {"kind": "prompts", "name": self.name, "num_prompts": len(self.prompts), "first": self.prompts[0],
                "encoder": getattr(self.encoder, "name", type(self.encoder).__name__)}


class EncodedPrompts(ConditionSource):
    """Prompts already encoded: one ``Condition`` holding every image's (``patchforcing sample``
    encodes its prompts at once); no targets."""

    def __init__(self, condition: Condition, name: str = "prompts"):
        self.encoded, self.name = condition, name
        self.targets = torch.full((condition.value.shape[0],), -1, dtype=torch.long)

    def condition(self, indices: Tensor, device: torch.device | str) -> dict[str, Condition]:
        return {"condition": self.encoded.select(indices.to(self.encoded.value.device))}

    def describe(self) -> dict[str, Any]:
        return {"kind": "encoded-prompts", "name": self.name, "num_prompts": self.num_samples}
