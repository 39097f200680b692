"""Image I/O: the uint8 conversions round as they always did, and the one grid writer draws both
grid looks (trainer: 1-pixel grey lines, grey kept grey; reports: 2-pixel white lines, RGB)
pixel for pixel as the two writers it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from patchforcing.images import (
    from_uint8,
    grid,
    pixels_to_float,
    save_grid,
    to_uint8,
    to_uint8_in_dtype,
    to_uint8_nhwc,
    to_uint8_rgb,
)
from patchforcing.training.evaluate import save_training_grid


def _values() -> torch.Tensor:
    """(2, 1, 8, 8) values in and beyond [-1, 1], including the exact .5 rounding ties of the uint8 grid."""
    ties = (torch.arange(64, dtype=torch.float32) + 0.5) / 127.5 - 1  # (k + 0.5) / 127.5 - 1
    wild = torch.linspace(-1.3, 1.3, 64)
    return torch.stack([ties, wild]).view(2, 1, 8, 8)


def test_to_uint8_is_the_rounding_of_every_writer():
    x = _values()
    expected = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(to_uint8(x), expected)
    assert np.array_equal(to_uint8_nhwc(x), expected.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(to_uint8_rgb(x), expected.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy())
    assert to_uint8_rgb(torch.zeros(1, 4, 2, 2)).shape == (1, 2, 2, 3)  # more channels: the first three


def test_inception_rounding_equals_to_uint8_on_float32_and_stays_separate_for_float64():
    x = _values()
    assert torch.equal(to_uint8_in_dtype(x), to_uint8(x))  # clamp before or after: the same for float32
    x64 = torch.tensor([[[[127.49999999 / 127.5 - 1]]]], dtype=torch.float64)  # rounds down in float64 only
    assert int(to_uint8_in_dtype(x64)) == 127 and int(to_uint8(x64)) == 128


def test_from_uint8_inverts_to_uint8_exactly():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(from_uint8(pixels)), pixels)
    nhwc = pixels.permute(0, 2, 3, 1).numpy()
    assert torch.equal(pixels_to_float(nhwc), pixels.float() / 127.5 - 1)


def _old_training_grid(images: torch.Tensor, columns: int, min_cell: int = 48) -> Image.Image:
    """The trainer's former grid writer, kept here as the reference."""
    m, c, h, w = images.shape
    rows = math.ceil(m / columns)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    canvas = torch.full((c, rows * (h + 1) + 1, columns * (w + 1) + 1), 128, dtype=torch.uint8)
    for i in range(m):
        r, k = divmod(i, columns)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = pixels[i]
    array = canvas.permute(1, 2, 0).numpy()
    img = Image.fromarray(np.ascontiguousarray(array[..., 0] if c == 1 else array))
    scale = max(1, math.ceil(min_cell / w))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def _old_report_grid(images: torch.Tensor, ncols: int, scale: int) -> Image.Image:
    """The reports' former grid writer (``viz.grid`` of ``viz.to_uint8``), kept here as the reference."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    tiles = (x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x).permute(0, 2, 3, 1).numpy()
    b, h, w, _ = tiles.shape
    nrows, pad = math.ceil(b / ncols), 2
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k in range(b):
        r, c = divmod(k, ncols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tiles[k]
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale != 1 else img


@pytest.mark.parametrize("channels", [1, 3])
def test_one_writer_draws_both_grid_looks_as_before(tmp_path, channels):
    images = torch.rand(5, channels, 8, 8, generator=torch.Generator().manual_seed(channels)) * 2.4 - 1.2
    written = save_training_grid(images, tmp_path / "train.png", 3)
    with Image.open(written) as img:
        assert img.mode == ("L" if channels == 1 else "RGB")
        assert np.array_equal(np.asarray(img), np.asarray(_old_training_grid(images, 3)))
    with Image.open(save_grid(images, tmp_path / "report.png", ncols=2, scale=3)) as img:
        assert np.array_equal(np.asarray(img), np.asarray(_old_report_grid(images, 2, 3)))
    with Image.open(save_grid(images, tmp_path / "default.png")) as img:  # default: square-ish, about 64 px a tile
        assert np.array_equal(np.asarray(img), np.asarray(_old_report_grid(images, 3, 8)))
    assert grid(to_uint8_rgb(images)).size == (3 * 10 + 2, 2 * 10 + 2)
