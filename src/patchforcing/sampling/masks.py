"""Which patches are certain (run ahead) and which are uncertain (refine) (docs/method.md, samplers).

A mask is a boolean pixel map (B, 1, H, W), constant over each patch; True means CERTAIN.

Every rule takes an optional ``among`` (B, N) bool: the patches that may be ranked at all (the
generated patches of an inpainting or editing region, ``sampling/region.py``, docs/inpainting.md).
The rule then runs on those patches alone, as if the others were not in the image: the quantile
over their pixels, ``certain_count`` of their number; the others are never certain. ``among=None``
ranks every patch, exactly as without a region.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from patchforcing.flow import patch_time_to_pixels


def difficulty_mask(logvar: Tensor, patch_size: int, p_frac: float, among: Tensor | None = None) -> Tensor:
    """Certain where the patch-averaged difficulty lies strictly below its per-sample quantile.

    ``d = exp(logvar)`` is averaged over every p x p patch and written back to its pixels; the
    threshold is the ``p_frac`` quantile of that pixel map (linear interpolation, float64), and
    a pixel is certain where ``d < tau`` (strict). These details follow the reference exactly:
    the quantile runs over pixels, not patches, and ties at the threshold count as uncertain.
    """
    d = torch.exp(logvar)
    pooled = F.avg_pool2d(d, patch_size, patch_size)  # (B, 1, h, w)
    d = pooled.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)  # (B, 1, H, W)
    flat = d.reshape(d.shape[0], -1).double()  # (B, H*W)
    if among is None:
        tau = torch.quantile(flat, p_frac, dim=-1)  # (B,)
        return d < tau.view(-1, 1, 1, 1)
    allowed = _pixels(among, patch_size, d)  # (B, 1, H, W)
    tau = torch.nanquantile(flat.masked_fill(~allowed.reshape(flat.shape), torch.nan), p_frac, dim=-1)  # NaN: none allowed
    return (d < tau.view(-1, 1, 1, 1)) & allowed


def _pixels(among: Tensor, patch_size: int, like: Tensor) -> Tensor:
    """(B, N) bool patches -> (B, 1, H, W) bool pixels of the size of ``like``."""
    return patch_time_to_pixels(among.to(like.device), patch_size, like.shape[-2], like.shape[-1])


def _counts(among: Tensor | None, b: int, n: int, patch_size: int, p_frac: float, device) -> Tensor:
    """(B, 1) certain patches per sample: ``certain_count`` of all N patches, or of the allowed ones."""
    if among is None:
        return torch.full((b, 1), certain_count(n, patch_size, p_frac), device=device)
    sizes = among.sum(dim=1).tolist()
    return torch.tensor([[certain_count(int(m), patch_size, p_frac) if m else 0] for m in sizes], device=device)


def certain_count(num_patches: int, patch_size: int, p_frac: float) -> int:
    """Patches the quantile rule marks certain when all difficulties differ.

    With M = N p^2 pixels the quantile sits at position ``q (M - 1)`` of the sorted pixels; the
    pixels strictly below it are the first ``ceil(q (M - 1))``, which cover
    ``ceil(q (M - 1)) // p^2`` whole patches (every patch is p^2 equal pixels).
    """
    pixels = num_patches * patch_size**2
    return math.ceil(p_frac * (pixels - 1) - 1e-9) // patch_size**2


def random_mask(shape: tuple[int, int, int, int], patch_size: int, p_frac: float, generator=None, device=None,
                among: Tensor | None = None) -> Tensor:
    """The random-mask ablation (docs/method.md, samplers): the same number of certain patches, chosen uniformly at random
    (among the ``among`` patches when given; the draws are the same either way)."""
    b, _, h, w = shape
    n = (h // patch_size) * (w // patch_size)
    k = certain_count(n, patch_size, p_frac) if among is None else _counts(among, b, n, patch_size, p_frac, device)  # (B, 1)
    if isinstance(generator, (list, tuple)):  # one generator per image: masks independent of batching
        if len(generator) != b:
            raise ValueError(f"got {len(generator)} generators for {b} images; pass one per image")
        scores = torch.stack([torch.rand((n,), generator=g) for g in generator]).to(device)
    else:
        scores = torch.rand((b, n), generator=generator, device=device)
    if among is None:
        certain = scores.argsort(dim=1) < k  # (B, N): exactly k True per row, uniformly placed
    else:  # the k allowed patches of the lowest draws (excluded ones drawn as 2, after every draw in [0, 1))
        certain = scores.masked_fill(~among.to(scores.device), 2.0).argsort(dim=1).argsort(dim=1) < k
    return patch_time_to_pixels(certain, patch_size, h, w)


def _patch_difficulty(logvar: Tensor, patch_size: int) -> Tensor:
    """``exp(logvar)`` averaged over every p x p patch: (B, 1, H, W) -> (B, N), row-major patches."""
    return F.avg_pool2d(torch.exp(logvar), patch_size, patch_size).flatten(1)


def inverted_mask(logvar: Tensor, patch_size: int, p_frac: float, among: Tensor | None = None) -> Tensor:
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
    if among is None:
        tau = torch.quantile(pixels, p_frac, dim=-1)  # (B,)
        return patch_time_to_pixels(neg < tau[:, None], patch_size, h, w)
    allowed = among.to(neg.device)
    masked = pixels.masked_fill(~allowed.repeat_interleave(patch_size**2, dim=1), torch.nan)
    tau = torch.nanquantile(masked, p_frac, dim=-1)  # (B,)
    return patch_time_to_pixels((neg < tau[:, None]) & allowed, patch_size, h, w)


def spread_mask(logvar: Tensor, patch_size: int, p_frac: float, block: int = 2, among: Tensor | None = None) -> Tensor:
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
    if among is not None:
        d = d.masked_fill(~among.to(d.device), torch.inf)  # the excluded rank after every allowed patch of a window
    index = torch.arange(n, device=d.device)
    window = (index // gw // block) * ((gw + block - 1) // block) + (index % gw) // block  # (N,)
    same = window[:, None] == window[None, :]  # (N, N)
    earlier = (d[:, None, :] < d[:, :, None]) | ((d[:, None, :] == d[:, :, None]) & (index[None, :] < index[:, None]))
    rank_in_window = (earlier & same).sum(dim=-1)  # (B, N): easier patches of the same window
    global_rank = d.argsort(dim=1, stable=True).argsort(dim=1)  # (B, N) in 0..N-1
    key = rank_in_window * n + global_rank  # exact integers: window rank first, then difficulty
    if among is not None:
        key = key.masked_fill(~among.to(key.device), (block * block + 1) * n)  # after every allowed patch
    k = _counts(among, b, n, patch_size, p_frac, key.device)  # (B, 1)
    certain = key.argsort(dim=1).argsort(dim=1) < k  # (B, N)
    return patch_time_to_pixels(certain.reshape(b, n), patch_size, h, w)
