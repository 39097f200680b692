"""Which patches are certain (run ahead) and which are uncertain (refine) (docs/method.md, samplers).

A mask is a boolean pixel map (B, 1, H, W), constant over each patch; True means CERTAIN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from patchforcing.flow import patch_time_to_pixels


def difficulty_mask(logvar: Tensor, patch_size: int, p_frac: float) -> Tensor:
    """Certain where the patch-averaged difficulty lies strictly below its per-sample quantile.

    ``d = exp(logvar)`` is averaged over every p x p patch and written back to its pixels; the
    threshold is the ``p_frac`` quantile of that pixel map (linear interpolation, float64), and
    a pixel is certain where ``d < tau`` (strict). These details follow the reference exactly:
    the quantile runs over pixels, not patches, and ties at the threshold count as uncertain.
    """
    d = torch.exp(logvar)
    pooled = F.avg_pool2d(d, patch_size, patch_size)  # (B, 1, h, w)
    d = pooled.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)  # (B, 1, H, W)
    tau = torch.quantile(d.reshape(d.shape[0], -1).double(), p_frac, dim=-1)  # (B,)
    return d < tau.view(-1, 1, 1, 1)


def certain_count(num_patches: int, patch_size: int, p_frac: float) -> int:
    """Patches the quantile rule marks certain when all difficulties differ.

    With M = N p^2 pixels the quantile sits at position ``q (M - 1)`` of the sorted pixels; the
    pixels strictly below it are the first ``ceil(q (M - 1))``, which cover
    ``ceil(q (M - 1)) // p^2`` whole patches (every patch is p^2 equal pixels).
    """
    pixels = num_patches * patch_size**2
    return math.ceil(p_frac * (pixels - 1) - 1e-9) // patch_size**2


def random_mask(shape: tuple[int, int, int, int], patch_size: int, p_frac: float, generator=None, device=None) -> Tensor:
    """The random-mask ablation (docs/method.md, samplers): the same number of certain patches, chosen uniformly at random."""
    b, _, h, w = shape
    n = (h // patch_size) * (w // patch_size)
    k = certain_count(n, patch_size, p_frac)
    if isinstance(generator, (list, tuple)):  # one generator per image: masks independent of batching
        if len(generator) != b:
            raise ValueError(f"got {len(generator)} generators for {b} images; pass one per image")
        scores = torch.stack([torch.rand((n,), generator=g) for g in generator]).to(device)
    else:
        scores = torch.rand((b, n), generator=generator, device=device)
    order = scores.argsort(dim=1)
    certain = order < k  # (B, N): exactly k True per row, uniformly placed
    return patch_time_to_pixels(certain, patch_size, h, w)


def _patch_difficulty(logvar: Tensor, patch_size: int) -> Tensor:
    """``exp(logvar)`` averaged over every p x p patch: (B, 1, H, W) -> (B, N), row-major patches."""
    return F.avg_pool2d(torch.exp(logvar), patch_size, patch_size).flatten(1)


def inverted_mask(logvar: Tensor, patch_size: int, p_frac: float) -> Tensor:
    """An ablation: the difficulty mask turned around, so the HARDEST patches run ahead.

    Certain where the patch difficulty ``d`` lies strictly above its per-sample ``1 - p_frac``
    quantile in the order of ``-d`` (the rule of :func:`difficulty_mask` applied to ``-d``), so it
    marks as many patches certain as the difficulty mask does.

    Returns:
        (B, 1, H, W) bool, True where certain.
    """
    h, w = logvar.shape[-2:]
    neg = -_patch_difficulty(logvar, patch_size).double()  # (B, N)
    pixels = neg.repeat_interleave(patch_size**2, dim=1)  # every patch counted p^2 times, as pixels are
    tau = torch.quantile(pixels, p_frac, dim=-1)  # (B,)
    return patch_time_to_pixels(neg < tau[:, None], patch_size, h, w)


def spread_mask(logvar: Tensor, patch_size: int, p_frac: float, block: int = 2) -> Tensor:
    """Difficulty spread over space: the easiest patch of every ``block x block`` window first.

    The patch grid is cut into windows of ``block x block`` patches. Patches are ranked inside
    their window by difficulty (0 = the easiest of its window); the certain ones are the
    ``certain_count`` patches with the smallest (rank in window, difficulty) pair. So every window
    sends its easiest patch ahead before any window sends a second one: every hard patch has
    advanced context nearby, while the choice inside a window still follows the head. Ties in
    difficulty go to the lower patch index.

    Returns:
        (B, 1, H, W) bool, True where certain; ``certain_count(N, p, p_frac)`` True patches per image.
    """
    b = logvar.shape[0]
    h, w = logvar.shape[-2:]
    gh, gw = h // patch_size, w // patch_size
    n = gh * gw
    d = _patch_difficulty(logvar, patch_size).double()  # (B, N)
    index = torch.arange(n, device=d.device)
    window = (index // gw // block) * ((gw + block - 1) // block) + (index % gw) // block  # (N,)
    same = window[:, None] == window[None, :]  # (N, N)
    earlier = (d[:, None, :] < d[:, :, None]) | ((d[:, None, :] == d[:, :, None]) & (index[None, :] < index[:, None]))
    rank_in_window = (earlier & same).sum(dim=-1)  # (B, N): easier patches of the same window
    global_rank = d.argsort(dim=1, stable=True).argsort(dim=1)  # (B, N) in 0..N-1
    key = rank_in_window * n + global_rank  # exact integers: window rank first, then difficulty
    k = certain_count(n, patch_size, p_frac)
    certain = key.argsort(dim=1).argsort(dim=1) < k  # (B, N)
    return patch_time_to_pixels(certain.reshape(b, n), patch_size, h, w)
