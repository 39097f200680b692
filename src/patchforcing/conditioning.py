"""What a network is conditioned on: one type for class labels and text states.

A ``Condition`` pairs a batch-first ``value`` with its ``null`` (the unconditional input of the
same shape): class labels ``(B,)`` long with the null-class row, or text-encoder states
``(B, L, D)`` float with the empty-prompt encoding expanded to the batch. Guidance, the trainer
and the command-line tools pass this one object along, whatever the network conditions on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from patchforcing.errors import ShapeError


@dataclass(frozen=True)
class Condition:
    """A batch of conditions and their unconditional counterparts.

    Attributes:
        value: (B,) long class labels, or (B, L, D) float text-encoder states.
        null: the same shape and dtype as ``value``: the null class, or the empty-prompt states.
    """

    value: Tensor
    null: Tensor

    def __post_init__(self) -> None:
        if self.value.ndim == 0:
            raise ShapeError("a condition needs a batch dimension: pass labels of shape (B,) or text states (B, L, D)")
        if self.value.shape != self.null.shape:
            raise ShapeError(
                f"the null condition has shape {tuple(self.null.shape)} but the condition has {tuple(self.value.shape)}; "
                "expand the null condition to the batch (Condition.from_labels / Condition.from_text do this)"
            )
        if self.value.dtype != self.null.dtype:
            raise ShapeError(f"the null condition is {self.null.dtype} but the condition is {self.value.dtype}; cast one")

    # --- factories -----------------------------------------------------------------------------
    @classmethod
    def from_labels(cls, labels: Tensor, null_label: int) -> Condition:
        """Class labels (B,) and the index of the null class (the network's last table row)."""
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.dtype.is_floating_point:
            raise ShapeError(f"labels must be integer class indices of shape (B,), got {labels.dtype} {tuple(labels.shape)}")
        labels = labels.long()
        return cls(labels, torch.full_like(labels, int(null_label)))

    @classmethod
    def from_text(cls, states: Tensor, null_states: Tensor) -> Condition:
        """Text-encoder states (B, L, D) and the empty-prompt states (L, D), (1, L, D) or (B, L, D)."""
        if states.ndim != 3 or not states.dtype.is_floating_point:
            raise ShapeError(f"text states must be float (B, L, D), got {states.dtype} {tuple(states.shape)}")
        if null_states.ndim == 2:
            null_states = null_states[None]
        if null_states.ndim != 3 or null_states.shape[1:] != states.shape[1:] or null_states.shape[0] not in (1, states.shape[0]):
            raise ShapeError(
                f"the empty-prompt states have shape {tuple(null_states.shape)}; expected (L, D), (1, L, D) or (B, L, D) "
                f"matching the prompts' {tuple(states.shape)} (encode both with the same encoder and padding length)"
            )
        return cls(states, null_states.to(states.dtype).expand_as(states))

    # --- what guidance needs -------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.value.shape[0]

    @property
    def is_text(self) -> bool:
        return self.value.dtype.is_floating_point

    def __len__(self) -> int:
        return self.batch_size

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Condition:
        """Move to ``device``; ``dtype`` casts text states only (labels stay long)."""
        cast = dtype if self.is_text else None
        return Condition(self.value.to(device=device, dtype=cast), self.null.to(device=device, dtype=cast))

    def doubled(self) -> Tensor:
        """``[null; value]`` (2B, ...): the unconditional half first, as classifier-free guidance batches it."""
        return torch.cat([self.null, self.value])

    def select(self, index: Tensor | slice | list[int]) -> Condition:
        """The conditions of the samples at ``index`` (along the batch)."""
        return Condition(self.value[index], self.null[index])
