"""Generating samples for evaluation: one seed per image, shared across processes.

Image ``i`` of an evaluation always uses noise seed ``seed + i`` and label ``labels[i]``, so the
images (and the metrics) do not depend on the batch size or on how many processes share the work:
under ``torchrun`` rank ``r`` of ``W`` generates images ``r, r + W, r + 2W, ...``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError
from patchforcing.sampling import expected_nfe, noise_for_seeds, sample, steps_for_nfe


def balanced_labels(num_samples: int, num_classes: int, seed: int = 0) -> Tensor:
    """Class labels for ``num_samples`` images: every class equally often (up to one), shuffled."""
    if num_classes <= 0:
        return torch.full((num_samples,), -1, dtype=torch.long)  # unconditional marker
    labels = np.arange(num_samples) % num_classes
    np.random.default_rng(seed).shuffle(labels)
    return torch.from_numpy(labels).long()


def sampler_steps(sampler: str, nfe: int, **options: Any) -> tuple[int, int]:
    """Outer steps for an NFE budget, and the NFE those steps actually use."""
    steps = steps_for_nfe(sampler, nfe, **options)
    return steps, expected_nfe(sampler, steps, **options)


@torch.no_grad()
def generate_images(
    model: nn.Module,
    *,
    sampler: str,
    steps: int,
    num_samples: int,
    seed: int = 0,
    labels: Tensor | None = None,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    guide_model: nn.Module | None = None,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    indices: Tensor | None = None,
    **options: Any,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Generate this rank's share of ``num_samples`` images.

    Args:
        labels: (num_samples,) class per image (``-1`` or None: unconditional); default balanced.
        guidance_interval: guide only the outer steps with ``lo <= t_k <= hi`` (see ``sample``).
        guide_model: autoguidance with this weaker network instead of CFG (see ``sample``).
        indices: generate exactly these image indices (instead of ``rank, rank + W, ...``).
    Returns:
        ``(indices (M,), images (M, C, H, W) float32 on the CPU, labels (M,), info)`` where
        ``info["nfe"]`` is the NFE per image and ``info["steps"]`` the outer steps.
    """
    cfg = model.config
    if num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
    if labels is None:
        labels = balanced_labels(num_samples, cfg.num_classes, seed)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mine = torch.arange(rank, num_samples, world_size) if indices is None else indices
    out, nfe, guide_nfe = [], None, None
    for chunk in mine.split(batch_size):
        seeds = (chunk + seed).tolist()
        noise = noise_for_seeds(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size), device=device, dtype=dtype)
        y = labels[chunk]
        y = None if bool((y < 0).all()) else y.to(device)
        gen = [torch.Generator().manual_seed(s + 1_000_003) for s in seeds]  # one mask stream per image
        x, info = sample(model, noise, sampler=sampler, steps=steps, labels=y, cfg_scale=cfg_scale,
                         guidance_interval=guidance_interval, guide_model=guide_model,
                         return_info=True, generator=gen, **options)
        out.append(x.float().cpu())
        nfe, guide_nfe = info["nfe"], info["guide_nfe"]
    images = torch.cat(out) if out else torch.empty(0, cfg.in_channels, cfg.input_size, cfg.input_size)
    return mine, images, labels[mine], {"nfe": nfe, "guide_nfe": guide_nfe, "steps": steps, "sampler": sampler}


def to_uint8_nhwc(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, the layout of ADM-style ``.npz`` sample files."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
