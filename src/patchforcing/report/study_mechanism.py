"""The mechanism behind look-ahead, measured on held-out data (questions 3 and 4 of ``docs/study.md``).

Look-ahead (docs/method.md §5.5) evaluates the network at ``x_t``, pushes the certain patches ahead to
``t_ctx = min(rho t, 1)`` with the predicted velocity, and re-predicts the uncertain patches with that
cleaner context. The paper's explanation is that context helps: the second prediction of the patches
left behind is better than the first. Here, at a global time ``t`` on held-out images with known
``x0`` and ``x1`` (so the true velocity ``u = x1 - x0`` is known), we measure per mask kind:

    realised error of the uncertain patches  mean((v - u)^2) before, mean((v' - u)^2) after
    predicted error of the uncertain patches mean(exp(logvar)) before and after
    step error                               mean over all pixels of the velocity the sampler uses
                                             (v on certain, v' on uncertain), against Euler's v

and, with the certain patches advanced along the TRUE path instead ("oracle" context), how much of
the effect is lost to the error of the advance itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from patchforcing.flow import interpolate, pixels_to_patch_mean
from patchforcing.sampling.masks import difficulty_mask, inverted_mask, random_mask, spread_mask
from patchforcing.streams import study_seed
from patchforcing.viz import colormap, to_uint8

MASK_KINDS = ("difficulty", "random", "inverted", "spread")


def _noised(x1: Tensor, t: float, num_patches: int, patch_size: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded noise x0, the global time map (B, N) and ``x_t`` for clean images ``x1`` at time ``t``."""
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(x1)
    tt = torch.full((x1.shape[0], num_patches), t, device=x1.device, dtype=x1.dtype)
    return x0, tt, interpolate(x0, x1, tt, patch_size)


def study_mask(kind: str, logvar: Tensor, patch_size: int, p_frac: float, generator: torch.Generator) -> Tensor:
    """The certain-pixel map (B, 1, H, W) of one mask kind (True = certain, runs ahead)."""
    if kind == "difficulty":
        return difficulty_mask(logvar, patch_size, p_frac)
    if kind == "inverted":
        return inverted_mask(logvar, patch_size, p_frac)
    if kind == "spread":
        return spread_mask(logvar, patch_size, p_frac)
    if kind == "random":
        return random_mask(tuple(logvar.shape), patch_size, p_frac, generator, logvar.device)
    raise ValueError(f"unknown mask kind {kind!r}; one of {MASK_KINDS}")


def _mean(values: Tensor, where: Tensor) -> float:
    """Mean of ``values`` (B, 1, H, W) over the pixels where ``where`` is True."""
    where = where.expand_as(values)
    return float(values[where].double().mean()) if bool(where.any()) else float("nan")


@torch.no_grad()
def context_effect(model: nn.Module, x1: Tensor, labels: Tensor | None, *, times: tuple[float, ...],
                   configs: list[tuple[float, float]], kinds: tuple[str, ...] = MASK_KINDS, seed: int = 0,
                   oracle: tuple[float, float] | None = (0.4, 1.4)) -> list[dict[str, Any]]:
    """Errors of the uncertain patches before and after the certain ones run ahead.

    Args:
        model: a Patch Forcing network with the difficulty head.
        x1: (B, C, H, W) held-out images; labels: (B,) their classes or None.
        times: global times t at which to measure.
        configs: (p_frac, context_ratio) pairs.
        kinds: mask kinds (``MASK_KINDS``).
        seed: noise and random masks; the same noise serves every config at a time.
        oracle: the one (p_frac, context_ratio) also measured with context advanced along the true path.
    Returns:
        One row per (t, kind, p, rho, context): errors before and after (see the module docstring).
    """
    cfg = model.config
    p = cfg.patch_size
    param = next(model.parameters())
    x1 = x1.to(device=param.device, dtype=param.dtype)
    y = None if labels is None else labels.to(param.device)
    rows = []
    for ti, t in enumerate(times):
        x0, tt, xt = _noised(x1, float(t), cfg.num_patches, p, study_seed(seed, ti))
        u = x1 - x0
        v, logvar = model(xt, tt, y)
        err = (v - u).pow(2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        pred = logvar.exp()
        for kind in kinds:
            for p_frac, rho in configs:
                sources = ("predicted", "oracle") if oracle == (p_frac, rho) else ("predicted",)
                certain = study_mask(kind, logvar, p, p_frac, torch.Generator().manual_seed(study_seed(seed, ti)))
                delta = min(rho * t, 1.0) - t
                certain_patch = pixels_to_patch_mean(certain.to(x1.dtype), p) > 0.5  # (B, N)
                t_ctx = tt + delta * certain_patch
                for source in sources:
                    if source == "predicted":  # as the sampler does: along the predicted velocity
                        x_ctx = xt + delta * v * certain
                    else:  # along the true path: perfect context
                        x_ctx = torch.where(certain, interpolate(x0, x1, t_ctx, p), xt)
                    v2, logvar2 = model(x_ctx, t_ctx, y)
                    err2 = (v2 - u).pow(2).mean(dim=1, keepdim=True)
                    uncertain = ~certain
                    step_err = torch.where(certain, err, err2)
                    rows.append({
                        "t": float(t), "kind": kind, "p": float(p_frac), "context_ratio": float(rho), "context": source,
                        "uncertain_real_before": _mean(err, uncertain), "uncertain_real_after": _mean(err2, uncertain),
                        "uncertain_pred_before": _mean(pred, uncertain), "uncertain_pred_after": _mean(logvar2.exp(), uncertain),
                        "certain_real": _mean(err, certain), "step_before": float(err.double().mean()),
                        "step_after": float(step_err.double().mean()),
                    })
    return rows


def busy_patches(x1: Tensor, patch_size: int, data: str) -> Tensor:
    """(B, N) True where a clean patch holds content: a stroke on digits (any pixel brighter than
    -0.9; the digits' background is -1), texture on photos (luminance std at or above the median
    over all patches of ``x1``)."""
    if data == "digits":
        mx = torch.nn.functional.max_pool2d(x1.float().amax(1, keepdim=True), patch_size)  # (B, 1, h, w)
        return (mx > -0.9).flatten(1)
    luma = x1.float().mean(1, keepdim=True)
    mean = torch.nn.functional.avg_pool2d(luma, patch_size)
    std = (torch.nn.functional.avg_pool2d(luma**2, patch_size) - mean**2).clamp_min(0).sqrt().flatten(1)
    return std >= std.median()


@torch.no_grad()
def mask_composition(model: nn.Module, x1: Tensor, labels: Tensor | None, data: str, *, times: tuple[float, ...],
                     p_frac: float = 0.4, kinds: tuple[str, ...] = MASK_KINDS, seed: int = 0) -> list[dict[str, Any]]:
    """Share of the certain (ahead-running) patches that hold content, per time and mask kind.

    Returns:
        One row per (t, kind): ``busy_share`` among certain patches and ``busy_base`` among all patches.
    """
    cfg = model.config
    p = cfg.patch_size
    param = next(model.parameters())
    x1 = x1.to(device=param.device, dtype=param.dtype)
    y = None if labels is None else labels.to(param.device)
    busy = busy_patches(x1, p, data)  # (B, N)
    rows = []
    for ti, t in enumerate(times):
        _, tt, xt = _noised(x1, float(t), cfg.num_patches, p, study_seed(seed, ti))
        _, logvar = model(xt, tt, y)
        for kind in kinds:
            certain = study_mask(kind, logvar, p, p_frac, torch.Generator().manual_seed(study_seed(seed, ti)))
            certain_patch = pixels_to_patch_mean(certain.float(), p) > 0.5
            rows.append({"t": float(t), "kind": kind, "p": p_frac, "busy_share": float(busy[certain_patch].float().mean()),
                         "busy_base": float(busy.float().mean())})
    return rows


@torch.no_grad()
def mask_picture(model: nn.Module, x1: Tensor, labels: Tensor | None, *, times: tuple[float, ...], p_frac: float = 0.4,
                 kinds: tuple[str, ...] = ("difficulty", "spread"), seed: int = 0) -> np.ndarray:
    """Tiles per image and time: clean image | noisy x_t | log difficulty | one overlay per mask kind.

    In an overlay the certain (ahead-running) patches show the clean image tinted red; the others
    are dimmed. Returns (rows = images x times, H, (3 + len(kinds)) * W, 3) uint8.
    """
    cfg = model.config
    p = cfg.patch_size
    param = next(model.parameters())
    x1 = x1.to(device=param.device, dtype=param.dtype)
    y = None if labels is None else labels.to(param.device)
    out = []
    for ti, t in enumerate(times):
        x0, tt, xt = _noised(x1, float(t), cfg.num_patches, p, study_seed(seed, ti))
        _, logvar = model(xt, tt, y)
        d = pixels_to_patch_mean(logvar.float(), p)  # (B, N) patch-mean log-variance
        h, w = x1.shape[-2:]
        dmap = d.view(-1, 1, h // p, w // p).repeat_interleave(p, 2).repeat_interleave(p, 3)[:, 0]
        clean = to_uint8(x1).astype(np.float64)
        parts = [to_uint8(x1), to_uint8(xt), colormap(dmap)]
        for kind in kinds:
            certain = study_mask(kind, logvar, p, p_frac, torch.Generator().manual_seed(study_seed(seed, ti)))
            c = certain[:, 0].cpu().numpy()[..., None]  # (B, H, W, 1)
            tinted = 0.5 * clean + 0.5 * np.array([255.0, 40.0, 40.0])
            parts.append(np.where(c, tinted, 0.35 * clean).round().astype(np.uint8))
        out.append(np.concatenate(parts, axis=2))  # (B, H, k*W, 3)
    return np.stack(out, 1).reshape(-1, *out[0].shape[1:])  # images major, then times


def summarize(rows: list[dict[str, Any]], key: Callable[[dict], tuple]) -> dict[tuple, dict[str, float]]:
    """Average each error over the times of a group; relative changes ``after / before - 1``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for k, rs in groups.items():
        mean = {f: float(np.nanmean([r[f] for r in rs])) for f in rs[0] if f.endswith(("before", "after", "real"))}
        mean["uncertain_real_change"] = mean["uncertain_real_after"] / mean["uncertain_real_before"] - 1
        mean["uncertain_pred_change"] = mean["uncertain_pred_after"] / mean["uncertain_pred_before"] - 1
        mean["step_change"] = mean["step_after"] / mean["step_before"] - 1
        out[k] = mean
    return out
