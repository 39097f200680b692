"""The training objective and the validation loss (docs/method.md §4), as pure functions.

The loss never draws anything: a training ``Example`` (clean data, noise, times, condition,
REPA target) is drawn in one place, ``patchforcing.training.example.draw_example``, and
``example_loss(network, example)`` is then a function of its arguments alone (as edm2's loss).
The conventions (``t = 0`` noise, ``x_t = t x1 + (1 - t) x0``, velocity target ``x1 - x0``) and
the noising path are those of ``patchforcing.flow``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from patchforcing.errors import ShapeError
from patchforcing.flow import interpolate
from patchforcing.models import unwrap_model

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -15.0, 10.0  # clamp of the predicted sigma (docs/method.md §4.2)
NUM_SEGMENTS = 8  # the validation loss's global times t = (k + 0.5) / 8 (docs/method.md §4.4)


@dataclass
class Example:
    """One training example (a batch of rows), everything the loss sees.

    Attributes:
        x1: (B, C, H, W) clean data.
        x0: (B, C, H, W) noise.
        t: (B, N) per-patch times, or (B,) one time per sample (SiT).
        condition: (B,) class labels with guidance dropout applied, (B, L, D) text states with
            the dropped captions encoded as ``""``, or None (the null class).
        repa_target: (B, N', z) frozen-encoder features of ``x1``, or None (no REPA term).
    """

    x1: Tensor
    x0: Tensor
    t: Tensor
    condition: Any = None
    repa_target: Tensor | None = None

    def rows(self, part: slice) -> Example:
        """The rows ``part`` of every field (a micro-batch of ``--grad-accum``)."""
        return Example(self.x1[part], self.x0[part], self.t[part], _rows(self.condition, part), _rows(self.repa_target, part))

    def pin_memory(self) -> Example:
        """Every tensor in page-locked memory (``DataLoader(pin_memory=True)`` calls it)."""
        fields = (self.x1, self.x0, self.t, self.condition, self.repa_target)
        return Example(*tree_map(lambda v: v.pin_memory() if torch.is_tensor(v) else v, fields))


def example_loss(model: nn.Module, example: Example, *, uncertainty_weight: float = 0.01,
                 repa_weight: float = 0.5) -> dict[str, Tensor]:
    """Patch Forcing objective (docs/method.md §4): flow matching plus the difficulty head's Gaussian NLL.

    Args:
        model: a network from ``create_model``; patch size and head are read from its config.
        example: the drawn example (see ``Example``); with ``repa_target`` the network needs a
            projector (``repa_dim = z``); when ``N' != N`` the target is resized bilinearly on its
            square token grid to the network's grid.
        uncertainty_weight: lambda of ``loss = flow + lambda * nll`` (0.01 in the paper).
        repa_weight: weight of the REPA term (0.5 in the REPA paper).

    Returns:
        dict with scalar tensors ``loss``, ``flow_loss``, ``uncertainty_loss`` (zero without the head)
        and, with a REPA target, ``repa_loss``:
        ``loss = flow + uncertainty_weight * nll + repa_weight * repa_loss``.
    """
    cfg = unwrap_model(model).config
    x1, x0, t, repa_target = example.x1, example.x0, example.t, example.repa_target
    xt = interpolate(x0, x1, t, cfg.patch_size)
    target = x1 - x0
    if repa_target is None:
        velocity, logvar = model(xt, t, example.condition)
    else:
        out = model(xt, t, example.condition, return_features=True)
        velocity, logvar = out
    velocity, target = _at_least_fp32(velocity), _at_least_fp32(target)
    flow = (velocity - target).pow(2).mean()
    if logvar is None:
        losses = {"loss": flow, "flow_loss": flow, "uncertainty_loss": flow.new_zeros(())}
    else:
        nll = gaussian_nll(target, velocity.detach(), _at_least_fp32(logvar)).mean()
        losses = {"loss": flow + uncertainty_weight * nll, "flow_loss": flow, "uncertainty_loss": nll}
    if repa_target is not None:
        repa = repa_loss(_at_least_fp32(out.features), repa_target)
        losses.update(loss=losses["loss"] + repa_weight * repa, repa_loss=repa)
    return losses


def gaussian_nll(target: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Per-element Gaussian NLL with a clamped sigma (docs/method.md §4.2); ``logvar`` broadcasts over channels."""
    sigma = torch.exp(logvar / 2).clamp(math.exp(LOG_SIGMA_MIN), math.exp(LOG_SIGMA_MAX))
    return 0.5 * (math.log(2 * math.pi) + 2 * torch.log(sigma) + (target - mean) ** 2 / sigma**2)


def repa_loss(features: Tensor, target: Tensor) -> Tensor:
    """REPA alignment (Yu et al. 2024): ``-mean over (b, n) of cos(features[b, n], target[b, n])``.

    Args:
        features: (B, N, z) projected network tokens.
        target: (B, N', z) frozen encoder features of the clean images; with ``N' != N`` both
            token counts must be squares and the target is resized bilinearly on its 2-D grid
            (``align_corners=False``) to the network's ``sqrt(N) x sqrt(N)`` grid.
    """
    b, n, z = features.shape
    if target.ndim != 3 or target.shape[0] != b or target.shape[2] != z:
        raise ShapeError(
            f"REPA target has shape {tuple(target.shape)}; expected ({b}, N', {z}): one row of encoder features "
            "per image, as wide as the network's repa_dim"
        )
    target = resize_token_grid(target.to(features.dtype), n)
    return -F.cosine_similarity(features, target, dim=-1).mean()


def resize_token_grid(tokens: Tensor, n: int) -> Tensor:
    """Resize (B, N', z) row-major tokens of a square grid to (B, n, z), bilinearly."""
    b, m, z = tokens.shape
    if m == n:
        return tokens
    side, new = math.isqrt(m), math.isqrt(n)
    if side * side != m or new * new != n:
        raise ShapeError(f"cannot resize {m} encoder tokens to the network's {n}: both must form square grids")
    grid = tokens.transpose(1, 2).reshape(b, z, side, side)  # (B, z, h', w')
    grid = F.interpolate(grid, size=(new, new), mode="bilinear", align_corners=False)
    return grid.reshape(b, z, n).transpose(1, 2)  # (B, n, z)


def _at_least_fp32(x: Tensor) -> Tensor:
    """Losses are reduced in float32 under bf16/fp16 autocast, in float64 when the weights are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _rows(value: Any, part: slice) -> Any:
    """``value[part]`` for a tensor, element-wise for tuples/lists/dicts of tensors, else ``value``."""
    return tree_map(lambda v: v[part] if torch.is_tensor(v) and v.ndim > 0 else v, value)


# --- validation ---------------------------------------------------------------------------------------
def segment_times(num_segments: int = NUM_SEGMENTS) -> list[float]:
    """The validation loss's global times ``(k + 0.5) / K``, k = 0 .. K-1."""
    return [(k + 0.5) / num_segments for k in range(num_segments)]


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    x1: Tensor,
    *,
    x0: Tensor | None = None,
    labels: Tensor | None = None,
    num_segments: int = NUM_SEGMENTS,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Flow loss at ``num_segments`` global times ``t = (k + 0.5) / K`` with shared noise (docs/method.md §4.4).

    Args:
        x1: (B, C, H, W) held-out data; x0: noise like it (drawn from ``generator`` when None).
        labels: the condition, as for the network.

    Returns:
        (mean over segments, per-segment losses (K,)).
    """
    if num_segments < 1:
        raise ValueError("num_segments must be at least 1")
    cfg = unwrap_model(model).config
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    target = x1 - x0
    losses = []
    for time in segment_times(num_segments):
        t = torch.full((x1.shape[0], cfg.num_patches), time, device=x1.device, dtype=x1.dtype)
        velocity, _ = model(interpolate(x0, x1, t, cfg.patch_size), t, labels)
        losses.append((velocity - target).pow(2).mean())
    per_segment = torch.stack(losses)
    return per_segment.mean(), per_segment


@torch.no_grad()
def held_out_loss(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor, Any]]) -> tuple[float, list[float]]:
    """The validation loss over many batches, each segment averaged over all images.

    Args:
        batches: ``(x1, x0, labels)`` on the network's device, (b, C, H, W) each (labels as for
            the network); how the images are split into batches does not change the result.

    Returns:
        (mean of the ``NUM_SEGMENTS`` segment losses, the segment losses).
    """
    total = torch.zeros(NUM_SEGMENTS, dtype=torch.float64)
    n = 0
    for x1, x0, labels in batches:
        _, per_segment = validation_loss(model, x1, x0=x0, labels=labels, num_segments=NUM_SEGMENTS)
        total += per_segment.double().cpu() * x1.shape[0]
        n += x1.shape[0]
    segments = (total / n).tolist()
    return float(np.mean(segments)), segments
