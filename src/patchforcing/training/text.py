"""Training text-to-image networks: captions of a step's batch -> text-encoder states.

The trainer draws images, noise, times and, for a text network, each row's caption or the empty
prompt (``batches.py``: the drops, docs/method.md §9.2, come from their own stream of ``(seed, step)``
for the GLOBAL batch, so resuming and any number of processes see the same drops);
``TextConditioner`` encodes those captions. The encoder is frozen and keeps the states of captions it has
seen (``EncodingCache``): on a small captioned data set every caption is encoded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from patchforcing.conditioning import Condition
from patchforcing.errors import ConfigError, DataError
from patchforcing.models import T2I_PRESETS
from patchforcing.text import TextEncoder, load_text_encoder, text_condition


class TextConditioner:
    """Captions of the training data, the frozen encoder, and the text dropout.

    Args:
        encoder: the frozen text encoder.
        captions: one caption per training image (``CaptionedDataset.captions``).
        dropout: probability that a caption is replaced by ``""`` (0.1 in the reference).
        seed: the run's seed (the dropout stream is ``(seed, STREAM_TEXT_DROPOUT, step)``).
    """

    def __init__(self, encoder: TextEncoder, captions: Sequence[str], dropout: float, seed: int):
        self.encoder, self.captions, self.dropout, self.seed = encoder, list(captions), float(dropout), seed

    @classmethod
    def for_run(cls, cfg: Any, data: Any) -> TextConditioner | None:
        """The conditioner of a run with a T2I model preset, or None for class-conditional runs."""
        if cfg.model not in T2I_PRESETS:
            if cfg.text_encoder is not None:
                raise ConfigError(f"--text-encoder needs a text-to-image network (a T2I-* model), not {cfg.model}")
            return None
        captions = getattr(data, "captions", None)
        if not captions:
            raise DataError(
                f"{data.name} has no captions; a text-to-image network needs captioned data: digits-captions, "
                "a folder with a .txt beside each image, or one with a captions.jsonl"
            )

        preset = T2I_PRESETS[cfg.model]
        if cfg.text_encoder is None or cfg.text_encoder == preset["text_encoder"]:
            name, length = preset["text_encoder"], cfg.text_length or preset["text_length"]
        else:  # another encoder: its own padded length unless --text-length says otherwise
            name, length = cfg.text_encoder, cfg.text_length
        return cls(load_text_encoder(name, max_length=length), captions, cfg.text_dropout, cfg.seed)

    # --- what the network config and the batches need ---------------------------------------------
    def batch_fields(self) -> dict[str, Any]:
        """``StepBatches``' keywords: the captions and the text dropout."""
        return {"captions": self.captions, "text_dropout": self.dropout}

    def network_fields(self) -> dict[str, Any]:
        return {"txt_in_dim": self.encoder.dim, "text_encoder": self.encoder.name, "text_length": self.encoder.max_length}

    # --- per step ---------------------------------------------------------------------------------
    def states(self, captions: Sequence[str], device: torch.device) -> Tensor:
        """(b, L, D) float32 text-encoder states of ``captions`` on ``device``."""
        return self.encoder.encode(list(captions), device)

    def condition(self, prompts: Sequence[str], device: torch.device | str | None = None) -> Condition:
        """Prompts -> Condition (the empty prompt as null)."""
        return text_condition(self.encoder, prompts, device)

    def grid_prompts(self, count: int) -> Condition:
        """The prompts of the training sample grids: the first training captions, cycled."""
        return self.condition([self.captions[i % len(self.captions)] for i in range(count)])
