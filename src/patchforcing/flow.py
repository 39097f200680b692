"""The flow: its conventions, the noising path and the patch-time helpers.

Conventions (stated once, used everywhere in this package; docs/method.md §1):
    * ``t = 0`` is pure noise, ``t = 1`` is clean data.
    * ``x_t = t * x1 + (1 - t) * x0`` with data ``x1`` and noise ``x0 ~ N(0, I)``.
    * Velocity target ``u = x1 - x0``.
    * Patch-level time ``t`` has shape (B, N), patches numbered row-major over the
      ``H/p x W/p`` grid (patch (i, j) is token ``i * w + j``); a global time (B,) is the
      special case where all patches share one value.

The training and validation losses on this path live in ``patchforcing.loss``; a training
example is drawn in ``patchforcing.training.example``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from patchforcing.errors import ShapeError


def patch_time_to_pixels(t: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """Spread per-patch values (B, N) (or per-sample (B,)) to a pixel map (B, 1, H, W)."""
    b = t.shape[0]
    if t.ndim == 1:
        return t.view(b, 1, 1, 1).expand(b, 1, height, width)
    gh, gw = height // patch_size, width // patch_size
    if t.shape[1] != gh * gw:
        raise ShapeError(f"t has {t.shape[1]} patches; a {height}x{width} input with patch size {patch_size} has {gh * gw}")
    grid = t.view(b, 1, gh, gw)
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def pixels_to_patch_mean(m: Tensor, patch_size: int) -> Tensor:
    """Average a pixel map (B, 1, H, W) over each p x p patch: (B, N) row-major."""
    return F.avg_pool2d(m, kernel_size=patch_size, stride=patch_size).flatten(1)


def interpolate(x0: Tensor, x1: Tensor, t: Tensor, patch_size: int) -> Tensor:
    """``x_t = t x1 + (1 - t) x0`` with every pixel of patch n at time ``t[:, n]``."""
    tp = patch_time_to_pixels(t, patch_size, x1.shape[-2], x1.shape[-1]).to(x1.dtype)
    return tp * x1 + (1 - tp) * x0
