"""Inference: ``sample(model, noise, sampler=..., steps=...)`` and the sampler registry (SPEC 5)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError, ShapeError
from patchforcing.conditioning import Condition
from patchforcing.sampling.guidance import Guide, Guided, check_condition, check_labels
from patchforcing.sampling.masks import certain_count, difficulty_mask, random_mask
from patchforcing.sampling.samplers import (
    SAMPLERS,
    Context,
    expected_nfe,
    make_mask_fn,
    resolve_options,
    steps_for_nfe,
    time_grid,
)


class TrajectoryRecorder:
    """Collects, per network evaluation of the outer loop, the per-patch time map (B, N), the
    difficulty map ``exp(logvar)`` (B, 1, H, W) and the current sample, on the CPU."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Tensor | None | bool]] = []

    def __call__(self, *, x: Tensor, t: Tensor, logvar: Tensor | None, certain: Tensor | None = None, inner: bool = False) -> None:
        self.frames.append(
            {
                "x": x.detach().float().cpu(),
                "t": t.detach().float().cpu().clone(),
                "difficulty": None if logvar is None else logvar.detach().float().exp().cpu(),
                "certain": None if certain is None else certain.detach().cpu(),
                "inner": inner,
            }
        )


@torch.no_grad()
def sample(
    model: nn.Module,
    noise: Tensor,
    *,
    sampler: str,
    steps: int,
    labels: Tensor | None = None,
    cfg_scale: float = 1.0,
    null_label: int | None = None,
    condition: Condition | None = None,
    guidance_interval: tuple[float, float] | None = None,
    guide_model: nn.Module | None = None,
    return_info: bool = False,
    progress: bool = False,
    generator: torch.Generator | None = None,
    record_trajectory: bool = False,
    **options: Any,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """Integrate from noise (``t = 0``) to data (``t = 1``) with one of the samplers of SPEC 5.

    Args:
        model: a network from ``create_model``/``load_model``; patch size and head come from it.
        noise: (B, C, H, W) starting point ``x0 ~ N(0, I)``; cast to the network's dtype and device.
        sampler: ``euler``, ``euler-pf``, ``dual-loop``, ``look-ahead``, ``random-dual-loop`` or
            ``random-look-ahead``.
        steps: outer steps S on the grid ``t_k = k / S``.
        labels: (B,) class labels (None: the null class).
        cfg_scale: classifier-free guidance weight w (1 = no guidance, one call per evaluation).
        null_label: the unconditional class; defaults to the network's null row.
        condition: a ``Condition`` (class labels or text states with their null), instead of
            ``labels``/``null_label``.
        guidance_interval: ``(lo, hi)``: guide only the outer steps with ``lo <= t_k <= hi``
            (float32 grid times); the other steps make one plain conditional call.
        guide_model: a weaker network of the same kind and shape (an earlier checkpoint, a smaller
            network): autoguidance, ``v = v_weak + w (v_main - v_weak)``, replaces CFG.
        return_info: also return ``info`` with ``nfe`` (main-network calls), ``guide_nfe``
            (guide-network calls), ``steps``, ``sampler``,
            ``options`` and, with ``record_trajectory``, ``trajectory`` (a list of frames).
        progress: show a progress bar over outer steps.
        generator: draws the random masks of the ``random-*`` ablations; a list of CPU generators
            (one per image) makes each image's masks independent of the batch it is in.
        record_trajectory: keep per-step time and difficulty maps (off by default, free when off).
        **options: sampler options (``p``, ``n_inner``, ``context_ratio``).

    Returns:
        The sample (B, C, H, W), or ``(sample, info)`` with ``return_info=True``.
    """
    spec, opts = resolve_options(sampler, options)
    cfg = model.config
    if not _is_positive_integer(steps):
        raise ConfigError(f"steps must be a positive integer, got {steps}")
    if not math.isfinite(float(cfg_scale)):
        raise ConfigError(f"cfg_scale must be a finite number, got {cfg_scale}; 1 turns guidance off")
    if sampler != "euler" and not cfg.has_difficulty_head:
        raise ConfigError(
            f"sampler {sampler!r} needs a Patch Forcing network (per-patch time, difficulty head); "
            "this network is a global-time baseline: use sampler='euler'"
        )
    expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
    if noise.ndim != 4 or tuple(noise.shape[1:]) != expected:
        raise ShapeError(f"noise has shape {tuple(noise.shape)}; this network samples (B, {', '.join(map(str, expected))})")
    if not noise.is_floating_point():
        raise ShapeError(f"noise has dtype {noise.dtype}; pass floating-point noise x0 ~ N(0, I), e.g. torch.randn(...)")
    weight = next(model.parameters(), None)
    if weight is not None:
        noise = noise.to(device=weight.device, dtype=weight.dtype)
    if condition is not None:
        if labels is not None or null_label is not None:
            raise ConfigError("pass either condition=... or labels=/null_label=, not both")
        condition = check_condition(model, noise, condition)
    else:
        condition = check_labels(model, noise, labels)
    guide = Guide(model, condition, cfg_scale, null_label, guidance_interval=guidance_interval, guide_model=guide_model)
    recorder = TrajectoryRecorder() if record_trajectory else None
    ctx = Context(cfg.patch_size, cfg.num_patches, opts, generator, recorder)
    ctx.mask_fn = make_mask_fn(spec, opts, cfg.patch_size, generator)
    grid = time_grid(int(steps))
    if progress:
        guide = _ProgressGuide(guide, expected_nfe(sampler, int(steps), **options), sampler)
    x = spec.fn(guide, noise, grid, ctx)
    if progress:
        guide.close()
    if not return_info:
        return x
    info: dict[str, Any] = {"nfe": guide.nfe, "guide_nfe": guide.guide_nfe, "steps": int(steps), "sampler": sampler,
                            "options": opts, "cfg_scale": cfg_scale, "guidance_interval": guide.interval}
    if recorder is not None:
        info["trajectory"] = recorder.frames
    return x, info


def _is_positive_integer(value: Any) -> bool:
    try:
        return math.isfinite(value) and int(value) == value and value >= 1
    except (TypeError, ValueError):
        return False


def noise_for_seeds(seeds, shape, *, device=None, dtype=torch.float32) -> Tensor:
    """One seed per image: image i is ``randn(shape)`` from a generator seeded with ``seeds[i]``,
    so a sample never depends on the batch size or the number of processes."""
    out = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(out).to(device=device, dtype=dtype)


class _ProgressGuide:
    """Wraps a Guide to advance a tqdm bar per network evaluation."""

    def __init__(self, guide: Guide, total: int, name: str):
        from tqdm.auto import tqdm

        self._guide = guide
        self._bar = tqdm(total=total, desc=name, unit="nfe")

    @property
    def nfe(self) -> int:
        return self._guide.nfe

    @property
    def guide_nfe(self) -> int:
        return self._guide.guide_nfe

    @property
    def interval(self) -> tuple[float, float] | None:
        return self._guide.interval

    def begin_step(self, t_k: float) -> None:
        self._guide.begin_step(t_k)

    def __call__(self, x: Tensor, t: Tensor) -> Guided:
        out = self._guide(x, t)
        self._bar.update(1)
        return out

    def close(self) -> None:
        self._bar.close()


__all__ = [
    "SAMPLERS",
    "Condition",
    "Guide",
    "Guided",
    "TrajectoryRecorder",
    "certain_count",
    "difficulty_mask",
    "expected_nfe",
    "noise_for_seeds",
    "random_mask",
    "sample",
    "steps_for_nfe",
    "time_grid",
]
