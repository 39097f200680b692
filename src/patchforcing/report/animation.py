"""Animations of adaptive sampling: per sampler step, the current sample, the clean image the
network predicts from it, the difficulty map the head predicts and the per-patch time map, side by
side for a handful of samples.

Colours (``patchforcing.viz.colormap``): dark blue = low, yellow = high. In the difficulty panel
low is easy (small predicted variance, relative within each frame); in the time panel dark is
noise (``t = 0``) and yellow is clean (``t = 1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from patchforcing.flow import patch_time_to_pixels
from patchforcing.sampling import SamplingPlan, noise_for_seeds, sample
from patchforcing.viz import difficulty_panels, to_uint8

PANELS = ("image", "prediction", "difficulty", "patch time")
GAP = 1  # pixels (before upscaling) between the panels of a sample
ANIMATION_SEED = 7_000_000  # noise seeds of the animated samples (apart from the evaluation seeds)


@torch.no_grad()
def record(model: nn.Module, sampler: str, nfe: int, count: int = 6, seed: int = ANIMATION_SEED,
           plan: SamplingPlan | None = None) -> tuple[list[dict], Tensor, dict[str, Any]]:
    """Sample ``count`` images within ``nfe`` network calls (or with ``plan``) and keep the trajectory.

    Returns:
        (frames of ``info["trajectory"]``, the final samples (B, C, H, W), info).
    """
    cfg = model.config
    noise = noise_for_seeds(range(seed, seed + count), (cfg.in_channels, cfg.input_size, cfg.input_size))
    labels = torch.arange(count) % cfg.num_classes if cfg.num_classes > 0 else None
    x, info = sample(model, noise, plan or SamplingPlan.from_nfe(sampler, nfe), labels=labels,
                     return_info=True, record_trajectory=True, generator=torch.Generator().manual_seed(seed))
    frames = info.pop("trajectory")
    for frame in frames:  # a context frame (look-ahead's masked steps) stands for two network calls
        frame["nfe"] = 2 if frame["context"] else 1
        frame["prediction"] = _prediction(model, frame, labels)
    return frames, x.float().cpu(), info


def _prediction(model: nn.Module, frame: dict, labels: Tensor | None) -> Tensor:
    """The clean image the network predicts from the frame's state: ``x + (1 - t) v(x, t)``.

    For display only (not counted as NFE). A context frame records the context times of its
    second evaluation; its state ``x`` is still at ``t_k``, the smallest time of the frame's map.
    """
    x, t = frame["x"], frame["t"]  # (B, C, H, W), (B, N)
    if frame["context"]:
        t = t.min(dim=1, keepdim=True).values.expand_as(t)
    p = model.config.patch_size
    v = model(x.to(next(model.parameters()).dtype), t, labels).velocity.float()
    return (x + (1 - patch_time_to_pixels(t, p, *x.shape[-2:])) * v).clamp(-1, 1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _tiles(x: Tensor, prediction: Tensor | None, difficulty: Tensor | None, t: Tensor) -> np.ndarray:
    """(B, H, 4W + 3 GAP, 3) uint8: image | prediction | difficulty | patch time, white gaps between."""
    if difficulty is None:  # no map yet: a flat panel keeps the layout fixed
        difficulty = torch.ones(x.shape[0], 1, *x.shape[-2:])
    maps = difficulty_panels(x if prediction is None else prediction, difficulty, t)  # (B, H, 3W, 3)
    w = x.shape[-1]
    gap = np.full((*maps.shape[:2], GAP, 3), 255, dtype=np.uint8)
    parts = [to_uint8(x)] + [maps[:, :, k * w:(k + 1) * w] for k in range(3)]
    return np.concatenate([parts[0], gap, parts[1], gap, parts[2], gap, parts[3]], axis=2)


def trajectory_gif(frames: list[dict], final: Tensor, path: str | Path, *, title: str, scale: int = 6,
                   columns: int = 2, frame_ms: int = 280, hold_ms: int = 1600) -> Path:
    """Write the trajectory as a looping GIF: one GIF frame per recorded frame, plus the result.

    Args:
        frames: ``info["trajectory"]`` of ``sample(..., record_trajectory=True)``, optionally with
            ``"nfe"`` (network calls the frame stands for, 1 by default) and ``"prediction"`` (the
            predicted clean image, shown next to the state) per frame, as :func:`record` adds them.
        final: (B, C, H, W) the samples the sampler returned (shown with ``t = 1`` everywhere).
        scale: nearest-neighbour upscaling (16 px digits -> 96 px at 6).
    Returns:
        The GIF's path.
    """
    if not frames:
        raise ValueError("no trajectory frames to animate (sample with record_trajectory=True)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    b = final.shape[0]
    images, durations, difficulty = [], [], None
    steps, total_nfe = sum(not f.get("inner") for f in frames), sum(f.get("nfe", 1) for f in frames)
    step = nfe = 0
    for frame in frames:
        difficulty = frame["difficulty"] if frame["difficulty"] is not None else difficulty  # fixed in inner steps
        t = frame["t"]
        step, nfe = step + (not frame.get("inner")), nfe + frame.get("nfe", 1)
        caption = f"{title}   step {step}/{steps}   NFE {nfe}/{total_nfe}   mean patch time {float(t[:b].mean()):.2f}"
        caption += "   (inner: hard patches)" if frame.get("inner") else ""
        images.append(_compose(_tiles(frame["x"][:b], _first(frame.get("prediction"), b), _first(difficulty, b), t[:b]),
                               caption, scale, columns))
        durations.append(frame_ms)
    done = torch.ones_like(frames[-1]["t"][:b])
    images.append(_compose(_tiles(final, final, _first(difficulty, b), done), f"{title}   result (t = 1 everywhere)   NFE {total_nfe}", scale, columns))
    durations.append(hold_ms)
    durations[0] = max(durations[0], 700)
    palette = [im.convert("P", palette=Image.Palette.ADAPTIVE, colors=255) for im in images]
    palette[0].save(path, format="GIF", save_all=True, append_images=palette[1:], duration=durations, loop=0, disposal=1)
    return path


def _first(t: Tensor | None, b: int) -> Tensor | None:
    return None if t is None else t[:b]


def _compose(tiles: np.ndarray, caption: str, scale: int, columns: int) -> Image.Image:
    """Lay the samples' tiles out in ``columns`` columns under a caption and the panel labels."""
    b, h, w, _ = tiles.shape
    columns = max(1, min(columns, b))
    rows = -(-b // columns)
    th, tw, pad = h * scale, w * scale, 12
    font, small = _font(13), _font(11)
    head, foot = 40, 22
    canvas = Image.new("RGB", (columns * (tw + pad) + pad, head + rows * (th + pad) + foot), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), caption, fill=(20, 20, 20), font=font)
    panel_w = (w - (len(PANELS) - 1) * GAP) // len(PANELS) * scale
    for c in range(columns):
        for k, name in enumerate(PANELS):
            cx = pad + c * (tw + pad) + k * (panel_w + GAP * scale) + panel_w // 2
            draw.text((cx - draw.textlength(name, font=small) / 2, head - 17), name, fill=(60, 60, 60), font=small)
    for i in range(b):
        r, c = divmod(i, columns)
        tile = Image.fromarray(tiles[i]).resize((tw, th), Image.Resampling.NEAREST)
        canvas.paste(tile, (pad + c * (tw + pad), head + r * (th + pad)))
    draw.text((pad, canvas.height - foot + 4), "dark blue = low, yellow = high   (difficulty: easy -> hard;  time: noise -> clean)",
              fill=(90, 90, 90), font=small)
    return canvas
