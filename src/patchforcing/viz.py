"""Turning tensors into pictures: per-patch time maps and difficulty maps (grids: ``patchforcing.images``)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from patchforcing.images import grid, save_grid, to_uint8_rgb

# The image I/O lives in patchforcing.images; these names stay here for the report modules.
to_uint8, save_image_grid = to_uint8_rgb, save_grid
__all__ = ["colormap", "difficulty_panels", "grid", "labelled_panel_grid", "panel_names", "patch_map_to_pixels", "save_image_grid",
           "to_uint8"]

# The legend of each map of ``difficulty_panels``: (name over the panel, left end, right end of its colour bar).
PANEL_LEGENDS = {"difficulty": ("difficulty", "easy", "hard (log variance, relative)"),
                 "patch time": ("patch time", "t = 0 noise", "t = 1 data")}


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


def panel_names(difficulty: Tensor | None, time_map: Tensor | None) -> list[str]:
    """The names of the panels ``difficulty_panels`` draws side by side, in order."""
    return ["image"] + (["difficulty"] if difficulty is not None else []) + (["patch time"] if time_map is not None else [])


def labelled_panel_grid(tiles: np.ndarray, names: list[str], ncols: int, scale: int, *, note: str = "") -> Image.Image:
    """``grid`` of ``difficulty_panels`` tiles with each panel named above the first row and a legend
    below: a colour bar per map with what its two ends mean, and ``note`` (e.g. which step the maps show).

    Args:
        tiles: (B, H, k*W, 3) uint8, k panels of width W per tile. names: the k panel names (``panel_names``).
        ncols: tiles per row. scale: nearest-neighbour enlargement of the grid.
    """
    pad = 2  # grid()'s default padding between tiles
    body = grid(tiles, ncols=ncols, scale=scale).convert("RGB")
    panel_w = tiles.shape[2] // len(names) * scale
    font = ImageFont.load_default()
    line = _text_height(font) + 4
    legends = [PANEL_LEGENDS[n] for n in names if n in PANEL_LEGENDS]
    footer = line * (len(legends) + (1 if note else 0)) + 4
    page = Image.new("RGB", (max(body.width, 360), line + body.height + footer), "white")
    page.paste(body, (0, line))
    draw = ImageDraw.Draw(page)
    for j in range(min(ncols, tiles.shape[0])):  # names over every panel of the first row of tiles
        x0 = scale * (pad + j * (tiles.shape[2] + pad))
        for i, name in enumerate(names):
            width = draw.textlength(name, font=font)
            draw.text((x0 + i * panel_w + max(0, (panel_w - width) / 2), 2), name, fill="black", font=font)
    y = line + body.height + 2
    ramp = colormap(torch.linspace(0, 1, 96).repeat(line - 6, 1)[None])[0]  # (line - 6, 96, 3)
    for title, lo, hi in legends:
        x = 4
        draw.text((x, y), f"{title}:", fill="black", font=font)
        x += draw.textlength(f"{title}: ", font=font) + 2
        draw.text((x, y), lo, fill="black", font=font)
        x += draw.textlength(lo, font=font) + 4
        page.paste(Image.fromarray(ramp), (int(x), y + 2))
        draw.text((x + ramp.shape[1] + 4, y), hi, fill="black", font=font)
        y += line
    if note:
        draw.text((4, y), note, fill="black", font=font)
    return page


def _text_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom - top) + 2
