"""Periodic evaluation during training, always with the EMA network: the validation loss of
SPEC 4 on a fixed held-out batch, and sample grids written as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from patchforcing.runs import atomic_write
from patchforcing.loss import held_out_loss
from patchforcing.sampling import sample
from patchforcing.streams import STREAM_SAMPLES, STREAM_VALIDATION, make_generator

EVAL_SEED = 0  # fixed, not the run's seed: validation losses and sample noise compare across runs


class Validator:
    """The validation loss on ``size`` held-out images with fixed noise (the same at every call).

    The images are a fixed random subset of the test split; noise and subset depend on neither
    the run's seed nor the number of processes.
    """

    def __init__(self, images: Tensor, labels: Tensor, size: int, device: torch.device, batch: int = 256):
        g = make_generator(EVAL_SEED, STREAM_VALIDATION)
        rows = torch.randperm(images.shape[0], generator=g)[: min(size, images.shape[0])].sort().values
        self.x1 = images[rows]
        self.x0 = torch.randn(self.x1.shape, generator=g)
        self.labels = labels[rows]
        self.device, self.batch = device, batch

    @torch.no_grad()
    def __call__(self, net: nn.Module) -> tuple[float, list[float]]:
        """Returns (mean over the 8 segments, the 8 segment losses), each a mean over all images."""
        rows = range(0, self.x1.shape[0], self.batch)
        return held_out_loss(net, (tuple(v[i : i + self.batch].to(self.device) for v in (self.x1, self.x0, self.labels))
                                   for i in rows))


def sample_labels(count: int, num_classes: int) -> Tensor | None:
    """Labels of a sample grid: class ``i % num_classes`` for image i (None when unconditional)."""
    return torch.arange(count) % num_classes if num_classes > 0 else None


def grid_columns(count: int, num_classes: int) -> int:
    """One column per class for up to 16 classes, else a square-ish grid."""
    return num_classes if 0 < num_classes <= 16 else math.ceil(math.sqrt(count))


@torch.no_grad()
def write_sample_grid(net: nn.Module, path: Path, *, count: int, steps: int, cfg_scale: float, device: torch.device,
                      prompts=None) -> Path:
    """Sample ``count`` images from fixed noise (Euler; ``euler-pf`` for Patch Forcing networks)
    and write them as one PNG grid, pixels mapped from [-1, 1] to [0, 255].

    ``prompts``: for a text network, a callable ``count -> Condition`` giving the grid's prompts.
    """
    cfg = net.config
    g = make_generator(EVAL_SEED, STREAM_SAMPLES)
    noise = torch.randn((count, cfg.in_channels, cfg.input_size, cfg.input_size), generator=g).to(device)
    labels = sample_labels(count, cfg.num_classes)
    labels = labels.to(device) if labels is not None else None
    sampler = "euler-pf" if cfg.has_difficulty_head else "euler"
    if prompts is not None:
        images = sample(net, noise, sampler=sampler, steps=steps, condition=prompts(count), cfg_scale=cfg_scale)
        return save_grid(images.float().cpu(), path, grid_columns(count, 10))
    images = sample(net, noise, sampler=sampler, steps=steps, labels=labels, cfg_scale=cfg_scale)
    return save_grid(images.float().cpu(), path, grid_columns(count, cfg.num_classes))


def save_grid(images: Tensor, path: Path, columns: int, min_cell: int = 48) -> Path:
    """Tile (M, C, H, W) images in [-1, 1] (C = 1 or 3) into a PNG; small images are enlarged
    (nearest neighbour) so that a cell is at least ``min_cell`` pixels wide."""
    from PIL import Image

    m, c, h, w = images.shape
    rows = math.ceil(m / columns)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (M, C, H, W)
    canvas = torch.full((c, rows * (h + 1) + 1, columns * (w + 1) + 1), 128, dtype=torch.uint8)  # grey lines
    for i in range(m):
        r, k = divmod(i, columns)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = pixels[i]
    array = canvas.permute(1, 2, 0).numpy()
    img = Image.fromarray(np.ascontiguousarray(array[..., 0] if c == 1 else array))  # uint8: "L" or "RGB"
    scale = max(1, math.ceil(min_cell / w))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return atomic_write(path.with_suffix(".png"), lambda tmp: img.save(tmp, format="PNG"))


def can_draw(channels: int, is_latent: bool) -> bool:
    """Grids are written for 1- or 3-channel pixel data; latents would need the VAE to decode."""
    return not is_latent and channels in (1, 3)
