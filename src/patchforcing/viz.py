"""Turning tensors into pictures: image grids, per-patch time maps and difficulty maps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from patchforcing.runs import atomic_write


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8 (grey images are repeated to RGB)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        x = x[:, :3]
    return x.permute(0, 2, 3, 1).numpy()


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


def grid(tiles: np.ndarray, ncols: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """(B, H, W, 3) uint8 -> one PIL image with the tiles in a grid, upscaled by ``scale``."""
    b, h, w, _ = tiles.shape
    ncols = ncols or int(math.ceil(math.sqrt(b)))
    nrows = int(math.ceil(b / ncols))
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k in range(b):
        r, c = divmod(k, ncols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tiles[k]
    img = Image.fromarray(canvas)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def patch_map_to_pixels(values: Tensor, height: int, width: int) -> Tensor:
    """(B, N) per-patch values on a square grid -> (B, H, W) by nearest upsampling."""
    b, n = values.shape
    g = int(round(math.sqrt(n)))
    m = values.view(b, 1, g, g).float()
    return torch.nn.functional.interpolate(m, size=(height, width), mode="nearest")[:, 0]


def save_image_grid(images: Tensor, path: str | Path, ncols: int | None = None, scale: int | None = None) -> Path:
    """Save (B, C, H, W) images in [-1, 1] as a PNG grid; small images are upscaled for viewing."""
    from PIL import Image

    path = Path(path)
    h = images.shape[-1]
    scale = scale or max(1, 64 // h)
    picture = grid(to_uint8(images), ncols=ncols, scale=scale)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: picture.save(tmp, format=image_format))


def difficulty_panels(images: Tensor, difficulty: Tensor | None, time_map: Tensor | None) -> np.ndarray:
    """Side-by-side tiles per sample: image | difficulty map | per-patch time map.

    Args:
        images: (B, C, H, W) in [-1, 1]. difficulty: (B, 1, H, W) or None. time_map: (B, N) or None.
    Returns:
        (B, H, k*W, 3) uint8 with k = 1 + number of maps given.
    """
    b, _, h, w = images.shape
    parts = [to_uint8(images)]
    if difficulty is not None:
        d = torch.nn.functional.interpolate(difficulty.float(), size=(h, w), mode="nearest")
        parts.append(colormap(torch.log(d[:, 0].clamp_min(1e-12))))
    if time_map is not None:
        parts.append(colormap(patch_map_to_pixels(time_map, h, w), 0.0, 1.0))
    return np.concatenate(parts, axis=2)
