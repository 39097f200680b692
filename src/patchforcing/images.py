"""Image I/O: pixels in [-1, 1] <-> uint8, and the one PNG grid writer.

Every network of this package sees images in [-1, 1]; files hold uint8. The conversions:

* ``to_uint8``: ``round((clamp(x, -1, 1) + 1) * 127.5)`` computed in float32, the rounding of
  every grid, sample file and pipeline output (``to_uint8_nhwc`` / ``to_uint8_rgb`` only
  change the layout).
* ``to_uint8_in_dtype``: ``clamp(round((x + 1) * 127.5), 0, 255)`` computed in the input's
  dtype, the Inception feature extractor's own rounding (equal to ``to_uint8`` for float32
  inputs; for float64 inputs it rounds the float64 values, so it stays a separate function).
* ``from_uint8``: ``p / 127.5 - 1`` in float32, exactly the values the uint8 encode.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from patchforcing.runs import atomic_write


def to_uint8(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, C, H, W) uint8 on the same device (values outside are clamped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8_nhwc(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 on the host (the layout of ``.npz`` sample files and PIL)."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def to_uint8_rgb(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8: grey repeated to RGB, more channels cut to the first three."""
    x = to_uint8(images).cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        x = x[:, :3]
    return x.permute(0, 2, 3, 1).numpy()


def to_uint8_in_dtype(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> uint8, mapped and rounded in the input's dtype, then clamped to [0, 255]."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(pixels: Tensor) -> Tensor:
    """uint8 pixels (any layout) -> float32 in [-1, 1]: ``p / 127.5 - 1``."""
    return pixels.float() / 127.5 - 1


def pixels_to_float(pixels: np.ndarray) -> Tensor:
    """(M, H, W, C) uint8 -> (M, C, H, W) float32 in [-1, 1], exactly the values the uint8 encode."""
    return from_uint8(torch.from_numpy(pixels).permute(0, 3, 1, 2))


# --- grids ----------------------------------------------------------------------------------------------
def grid(tiles: np.ndarray, ncols: int | None = None, *, pad: int = 2, fill: int = 255, scale: int = 1) -> Image.Image:
    """(B, H, W, C) uint8 tiles (C = 1 or 3) -> one PIL image ("L" or "RGB") of a grid.

    Args:
        tiles: the images, row-major into the grid.
        ncols: tiles per row (default: a square-ish grid).
        pad: pixels between tiles and around the border, of value ``fill``.
        scale: nearest-neighbour enlargement of the whole grid.
    """
    b, h, w, c = tiles.shape
    ncols = ncols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / ncols)
    canvas = np.full((rows * (h + pad) + pad, ncols * (w + pad) + pad, c), fill, dtype=np.uint8)
    for k in range(b):
        r, j = divmod(k, ncols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = tiles[k]
    img = Image.fromarray(np.ascontiguousarray(canvas[..., 0] if c == 1 else canvas))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save_grid(images: Tensor, path: str | Path, ncols: int | None = None, scale: int | None = None, *, pad: int = 2,
              fill: int = 255, rgb: bool = True) -> Path:
    """Write (B, C, H, W) images in [-1, 1] as one grid picture, atomically (format from the suffix, else PNG).

    The one grid writer of the package: sample grids of ``sample``, ``evaluate``, the reports and
    the trainer (which draws 1-pixel grey lines and keeps grey images grey).

    Args:
        ncols: tiles per row (default: a square-ish grid).
        scale: nearest-neighbour enlargement (default: small images up to about 64 pixels a tile).
        pad, fill: the lines between and around the tiles (2 white pixels by default).
        rgb: repeat grey images to RGB (False keeps 1-channel images grey, mode "L").
    """
    path = Path(path)
    scale = scale or max(1, 64 // images.shape[-1])
    tiles = to_uint8_rgb(images) if rgb else to_uint8_nhwc(images)
    picture = grid(tiles, ncols, pad=pad, fill=fill, scale=scale)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: picture.save(tmp, format=image_format))
