"""The seeded batch loop: one seed per image, shared across processes and commands.

Image ``i`` of a run always uses noise seed ``seed + i``, its own random-mask stream and the
condition ``conditions`` gives index ``i``, so the images (and the metrics) do not depend on the batch
size or on how many processes share the work: under ``torchrun`` rank ``r`` of ``W`` generates
images ``r, r + W, r + 2W, ...``. ``patchforcing sample``, ``evaluate`` and the reports all draw
their images here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError
from patchforcing.evaluation.conditions import ClassLabels, ConditionSource
from patchforcing.sampling import SamplingPlan, noise_for_seeds, run_plan
from patchforcing.streams import mask_generators


@torch.no_grad()
def generate_images(
    model: nn.Module,
    plan: SamplingPlan,
    *,
    num_samples: int,
    seed: int = 0,
    conditions: ConditionSource | None = None,
    guide_model: nn.Module | None = None,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    indices: Tensor | None = None,
    progress: bool = False,
    record_trajectory: bool = False,
    on_batch: Callable[[Tensor, dict[str, Any]], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Generate this rank's share of ``num_samples`` images with ``plan`` (checked once here).

    Args:
        plan: how to sample (``SamplingPlan``, ``SamplingPlan.from_nfe``).
        conditions: what image i is conditioned on (``evaluation.conditions``); default: balanced
            class labels (all unconditional for networks without classes).
        guide_model: the weak network of autoguidance, when the plan names one.
        indices: generate exactly these image indices (instead of ``rank, rank + W, ...``).
        progress: a progress bar over each batch's network evaluations.
        record_trajectory: record every batch's trajectory (``sample(record_trajectory=True)``);
            ``on_batch`` receives it in ``info["trajectory"]``.
        on_batch: called after every batch as ``on_batch(indices, info)`` (``sample``'s info).
    Returns:
        ``(indices (M,), images (M, C, H, W) float32 on the CPU, targets (M,), info)`` where
        ``targets`` are the images' classes (or prompted classes; -1: none), ``info["nfe"]`` the NFE
        per image, ``info["guide_nfe"]`` the guide network's and ``info["steps"]`` the outer steps.
    """
    if not isinstance(plan, SamplingPlan):
        raise ConfigError(f"generate_images takes a SamplingPlan, got {type(plan).__name__}: "
                          "SamplingPlan(sampler, steps) or SamplingPlan.from_nfe(sampler, nfe)")
    plan.check(model, guide_model)
    cfg = model.config
    if num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if conditions is None:
        conditions = ClassLabels.balanced(num_samples, cfg.num_classes, seed)
    weight = next(model.parameters())
    mine = torch.arange(rank, num_samples, world_size) if indices is None else indices
    out, nfe, guide_nfe = [], None, None
    for chunk in mine.split(batch_size):
        seeds = (chunk + seed).tolist()
        noise = noise_for_seeds(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size), device=weight.device,
                                dtype=weight.dtype)
        x, info = run_plan(model, noise, plan, guide_model=guide_model, return_info=True, progress=progress,
                           generator=mask_generators(seeds), record_trajectory=record_trajectory,
                           **conditions.condition(chunk, weight.device))
        out.append(x.float().cpu())
        nfe, guide_nfe = info["nfe"], info["guide_nfe"]
        if on_batch is not None:
            on_batch(chunk, info)
    images = torch.cat(out) if out else torch.empty(0, cfg.in_channels, cfg.input_size, cfg.input_size)
    return mine, images, conditions.targets[mine], {"nfe": nfe, "guide_nfe": guide_nfe, "steps": plan.steps,
                                                     "sampler": plan.sampler}
