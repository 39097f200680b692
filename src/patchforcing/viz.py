"""Turning tensors into pictures: per-patch time maps and difficulty maps (grids: ``patchforcing.images``)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from patchforcing.images import grid, save_grid, to_uint8_rgb

# The image I/O lives in patchforcing.images; these names stay here for the report modules.
to_uint8, save_image_grid = to_uint8_rgb, save_grid
__all__ = ["colormap", "difficulty_panels", "grid", "patch_map_to_pixels", "save_image_grid", "to_uint8"]


def colormap(values: Tensor, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(B, H, W) scalars -> (B, H, W, 3) uint8 with a perceptual blue-yellow ramp."""
    v = values.detach().float().cpu()
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    u = ((v - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy()
    # A small viridis-like ramp: dark blue -> teal -> yellow.
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    pos = u * (len(stops) - 1)
    i = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    f = (pos - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).round().astype(np.uint8)


def patch_map_to_pixels(values: Tensor, height: int, width: int) -> Tensor:
    """(B, N) per-patch values on a square grid -> (B, H, W) by nearest upsampling."""
    b, n = values.shape
    g = int(round(math.sqrt(n)))
    m = values.view(b, 1, g, g).float()
    return torch.nn.functional.interpolate(m, size=(height, width), mode="nearest")[:, 0]


def difficulty_panels(images: Tensor, difficulty: Tensor | None, time_map: Tensor | None) -> np.ndarray:
    """Side-by-side tiles per sample: image | difficulty map | per-patch time map.

    Args:
        images: (B, C, H, W) in [-1, 1]. difficulty: (B, 1, H, W) or None. time_map: (B, N) or None.
    Returns:
        (B, H, k*W, 3) uint8 with k = 1 + number of maps given.
    """
    b, _, h, w = images.shape
    parts = [to_uint8_rgb(images)]
    if difficulty is not None:
        d = torch.nn.functional.interpolate(difficulty.float(), size=(h, w), mode="nearest")
        parts.append(colormap(torch.log(d[:, 0].clamp_min(1e-12))))
    if time_map is not None:
        parts.append(colormap(patch_map_to_pixels(time_map, h, w), 0.0, 1.0))
    return np.concatenate(parts, axis=2)
