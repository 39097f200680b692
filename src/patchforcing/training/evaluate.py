"""Periodic evaluation during training, always with the EMA network: the validation loss of
docs/method.md §4.4 on a fixed held-out batch, and sample grids written as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from patchforcing.images import save_grid
from patchforcing.loss import held_out_loss
from patchforcing.sampling import sample
from patchforcing.sampling.registry import plain_sampler
from patchforcing.streams import STREAM_SAMPLES, STREAM_VALIDATION, make_generator

MIN_CELL = 48  # small images are enlarged (nearest neighbour) to at least this many pixels a cell
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
    sampler = plain_sampler(cfg)
    if prompts is not None:
        images = sample(net, noise, sampler=sampler, steps=steps, condition=prompts(count), cfg_scale=cfg_scale)
        return save_training_grid(images, path, grid_columns(count, 10))
    images = sample(net, noise, sampler=sampler, steps=steps, labels=labels, cfg_scale=cfg_scale)
    return save_training_grid(images, path, grid_columns(count, cfg.num_classes))


def save_training_grid(images: Tensor, path: Path, columns: int) -> Path:
    """The training grid's look: 1-pixel grey lines, grey images kept grey, cells at least ``MIN_CELL`` pixels wide."""
    scale = max(1, math.ceil(MIN_CELL / images.shape[-1]))
    return save_grid(images.float().cpu(), path.with_suffix(".png"), columns, scale, pad=1, fill=128, rgb=False)


def can_draw(channels: int, is_latent: bool) -> bool:
    """Grids are written for 1- or 3-channel pixel data; latents would need the VAE to decode."""
    return not is_latent and channels in (1, 3)
