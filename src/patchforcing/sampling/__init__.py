"""Inference: ``sample(model, noise, plan)`` (or ``sampler=..., steps=...``), the sampler registry, the plan and
the time grids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from patchforcing.conditioning import Condition
from patchforcing.errors import ConfigError, ShapeError
from patchforcing.sampling.guidance import GuidanceInterval, Guide, Guided, check_condition, check_labels
from patchforcing.sampling.masks import certain_count, difficulty_mask, random_mask
from patchforcing.sampling.plan import Guidance, SamplingPlan
from patchforcing.sampling.region import MODES, KnownMode, Region, RegionGuide
from patchforcing.sampling.registry import (
    PAPER_SAMPLERS,
    REGISTRY,
    SAMPLERS,
    MaskKind,
    SamplerOptions,
    SamplerSpec,
    expected_nfe,
    get_sampler,
    make_mask_fn,
    steps_for_nfe,
)
from patchforcing.sampling.samplers import SamplerRun
from patchforcing.sampling.schedules import SCHEDULE_HELP, parse_schedule, time_grid


class TrajectoryRecorder:
    """Collects, per network evaluation of the outer loop, the per-patch time map (B, N), the
    difficulty map ``exp(logvar)`` (B, 1, H, W) and the current sample, on the CPU.

    ``inner`` marks dual-loop's inner steps; ``context`` a frame that stands for two calls, the
    sample at ``t_k`` and the context run ahead (its ``t`` holds the context times)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Tensor | None | bool]] = []

    def __call__(self, *, x: Tensor, t: Tensor, logvar: Tensor | None, certain: Tensor | None = None, inner: bool = False,
                 context: bool = False) -> None:
        self.frames.append(
            {
                "x": x.detach().float().cpu(),
                "t": t.detach().float().cpu().clone(),
                "difficulty": None if logvar is None else logvar.detach().float().exp().cpu(),
                "certain": None if certain is None else certain.detach().cpu(),
                "inner": inner,
                "context": context,
            }
        )


@torch.no_grad()
def sample(
    model: nn.Module,
    noise: Tensor,
    plan: SamplingPlan | None = None,
    *,
    condition: Condition | None = None,
    labels: Tensor | None = None,
    null_label: int | None = None,
    guide_model: nn.Module | None = None,
    return_info: bool = False,
    progress: bool = False,
    generator: torch.Generator | None = None,
    record_trajectory: bool = False,
    region: Region | None = None,
    on_step_end: Callable[[int, float, Tensor], Tensor | None] | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    schedule: str | None = None,
    cfg_scale: float | None = None,
    guidance_interval: GuidanceInterval | tuple[float, float] | str | None = None,
    **options: Any,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """Integrate from noise (``t = 0``) to data (``t = 1``) with one of the samplers of ``docs/method.md``.

    Either ``sample(model, noise, plan, condition=...)`` with a ``SamplingPlan``, or
    ``sample(model, noise, sampler=..., steps=..., labels=..., cfg_scale=..., **options)``, which
    builds the plan from those keywords (``SamplingPlan.from_keywords``), once.

    Args:
        model: a network from ``create_model``/``load_model``; patch size and head come from it.
        noise: (B, C, H, W) starting point ``x0 ~ N(0, I)``; cast to the network's dtype and device.
        plan: sampler, steps, options and guidance (``SamplingPlan``); checked against ``model``.
        condition: a ``Condition`` (class labels or text states with their null), instead of
            ``labels``/``null_label``.
        labels: (B,) class labels (None: the null class).
        null_label: the unconditional class; defaults to the network's null row.
        guide_model: the weak network of autoguidance (``v = v_weak + w (v_main - v_weak)``
            replaces CFG): same kind and shape, on the same device and dtype; required when the plan
            names one (``patchforcing.guides.load_guide_model`` loads it).
        return_info: also return ``info`` with ``nfe`` (main-network calls), ``guide_nfe``
            (guide-network calls), ``steps``, ``sampler``, ``schedule``, ``options``, ``plan`` and, with
            ``record_trajectory``, ``trajectory`` (a list of frames).
        progress: show a progress bar over network evaluations.
        generator: draws the random masks of the ``random-*`` ablations; a list of CPU generators
            (one per image) makes each image's masks independent of the batch it is in.
        record_trajectory: keep per-step time and difficulty maps (off by default, free when off).
        region: a ``Region`` of an input image to keep (known patches) or to start from (per-patch
            start times), ``sampling/region.py``; ``pf.inpaint`` and ``pf.edit`` build it. None: plain sampling.
        on_step_end: called once after every outer step ``k`` as ``on_step_end(k, t_k, x)``, with
            ``t_k`` the grid time the step started from (a float) and ``x`` (B, C, H, W) the sample
            after it (at ``t_{k+1}``); a returned tensor of the same shape replaces ``x`` (None keeps it).
        sampler: without ``plan``: a name of ``SAMPLERS`` (``euler``, ``euler-pf``, ``dual-loop``,
            ``look-ahead``, ``random-dual-loop``, ``random-look-ahead``, ``look-ahead-heun``,
            ``corrected-look-ahead``) or of ``STUDY_SAMPLERS``.
        steps: without ``plan``: outer steps S on the time grid of ``schedule``.
        schedule: without ``plan``: the time grid (``sampling/schedules.py``): ``uniform`` (default,
            ``t_k = k / S``, the paper's), ``shift:ALPHA`` or ``edm:RHO``.
        cfg_scale: without ``plan``: the guidance weight w (1 = no guidance).
        guidance_interval: without ``plan``: ``(lo, hi)`` guides only the outer steps with
            ``lo <= t_k <= hi``; ``"sigma:LO,HI"`` or ``GuidanceInterval.from_sigma(LO, HI)`` the
            published half-open ``sigma in (LO, HI]``, i.e. ``t in [1/(1+HI), 1/(1+LO))``. The
            published ones in t: DiT-XL/2 (0.34, 1.02] -> [0.495, 0.746); EDM2-S (0.28, 2.90] ->
            [0.256, 0.781); EDM2-XXL (0.19, 1.61] -> [0.383, 0.840); SD-XL (0.28, 5.42] ->
            [0.156, 0.781). EDM2's sigmas assume latents scaled to standard deviation 0.5.
        **options: without ``plan``: the sampler's options (``p_frac`` -- ``p`` is accepted --,
            ``n_inner``, ``context_ratio``).

    Returns:
        The sample (B, C, H, W), or ``(sample, info)`` with ``return_info=True``.
    """
    plan = SamplingPlan.from_keywords(plan, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                                      guidance_interval=guidance_interval, schedule=schedule, **options)
    plan.check(model, guide_model)
    return run_plan(model, noise, plan, condition=condition, labels=labels, null_label=null_label,
                    guide_model=guide_model, return_info=return_info, progress=progress, generator=generator,
                    record_trajectory=record_trajectory, region=region, on_step_end=on_step_end)


@torch.no_grad()
def run_plan(
    model: nn.Module,
    noise: Tensor,
    plan: SamplingPlan,
    *,
    condition: Condition | None = None,
    labels: Tensor | None = None,
    null_label: int | None = None,
    guide_model: nn.Module | None = None,
    return_info: bool = False,
    progress: bool = False,
    generator: torch.Generator | None = None,
    record_trajectory: bool = False,
    region: Region | None = None,
    on_step_end: Callable[[int, float, Tensor], Tensor | None] | None = None,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """``sample`` with a plan already checked against ``model`` (``plan.check(model, guide_model)``):
    what every batch of a run of many batches calls (``evaluation.generate.generate_images``). The
    arguments are ``sample``'s."""
    spec, opts, cfg = plan.spec, plan.options, model.config
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
    guide = Guide(model, condition, plan.guidance, null_label, guide_model=guide_model)
    recorder = TrajectoryRecorder() if record_trajectory else None
    run = SamplerRun(cfg.patch_size, cfg.num_patches, opts, generator, recorder, on_step_end=on_step_end)
    x = noise
    if region is not None:
        region.check(model, noise)
    if region is not None and region.active:  # the one place a known region enters (docs/inpainting.md)
        guide, x = RegionGuide(guide, region, noise, cfg), region.start_state(noise)
    run.mask_fn = make_mask_fn(spec.mask, opts, cfg.patch_size, generator,
                               among=region.free if region is not None and region.active else None)
    grid = plan.grid  # (S + 1,) float32
    if progress:
        guide = _ProgressGuide(guide, plan.nfe, plan.sampler)
    x = spec.fn(guide, x, grid, run)
    if region is not None and region.active:
        x = region.composite(x)
    if progress:
        guide.close()
    plan.check_samples(x, model, noise, condition, guide_model)  # a scale that overflowed: an error, not a black image
    if not return_info:
        return x
    info: dict[str, Any] = {"nfe": guide.nfe, "guide_nfe": guide.guide_nfe, "steps": plan.steps, "sampler": plan.sampler,
                            "schedule": plan.schedule, "options": opts.to_dict(), "cfg_scale": plan.guidance.scale, "guidance_interval": guide.interval,
                            "plan": plan}
    if recorder is not None:
        info["trajectory"] = recorder.frames
    return x, info


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
    "PAPER_SAMPLERS",
    "REGISTRY",
    "SAMPLERS",
    "SCHEDULE_HELP",
    "Condition",
    "Guidance",
    "GuidanceInterval",
    "Guide",
    "Guided",
    "KnownMode",
    "MODES",
    "MaskKind",
    "SamplerOptions",
    "SamplerSpec",
    "Region",
    "SamplingPlan",
    "TrajectoryRecorder",
    "certain_count",
    "difficulty_mask",
    "expected_nfe",
    "get_sampler",
    "noise_for_seeds",
    "parse_schedule",
    "random_mask",
    "run_plan",
    "sample",
    "steps_for_nfe",
    "time_grid",
]
