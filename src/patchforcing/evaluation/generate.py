"""Generating samples for evaluation: one seed per image, shared across processes.

Image ``i`` of an evaluation always uses noise seed ``seed + i`` and label ``labels[i]``, so the
images (and the metrics) do not depend on the batch size or on how many processes share the work:
under ``torchrun`` rank ``r`` of ``W`` generates images ``r, r + W, r + 2W, ...``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError
from patchforcing.evaluation.conditions import ClassLabels, ConditionSource
from patchforcing.sampling import SamplingPlan, noise_for_seeds, sample
from patchforcing.sampling.plan import GUIDE_IN_MEMORY, as_plan
from patchforcing.streams import mask_generators


def balanced_labels(num_samples: int, num_classes: int, seed: int = 0) -> Tensor:
    """Class labels for ``num_samples`` images: every class equally often (up to one), shuffled."""
    return ClassLabels.balanced(num_samples, num_classes, seed).targets


def sampler_steps(sampler: str, nfe: int, **options: Any) -> tuple[int, int]:
    """Outer steps for an NFE budget, and the NFE those steps actually use."""
    plan = SamplingPlan.from_nfe(sampler, nfe, **options)
    return plan.steps, plan.nfe


@torch.no_grad()
def generate_images(
    model: nn.Module,
    plan: SamplingPlan | None = None,
    *,
    num_samples: int,
    seed: int = 0,
    conditions: ConditionSource | None = None,
    labels: Tensor | None = None,
    guide_model: nn.Module | None = None,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    indices: Tensor | None = None,
    **loose: Any,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Generate this rank's share of ``num_samples`` images.

    Args:
        plan: how to sample (``SamplingPlan``); or, as before, ``sampler=``, ``steps=``,
            ``cfg_scale=``, ``guidance_interval=`` and options as loose keywords.
        conditions: what image i is conditioned on (``evaluation.conditions``); default: balanced
            class labels (``labels`` (num_samples,) fixes them instead; -1 = unconditional).
        guide_model: the weak network of autoguidance, when the plan names one.
        indices: generate exactly these image indices (instead of ``rank, rank + W, ...``).
    Returns:
        ``(indices (M,), images (M, C, H, W) float32 on the CPU, targets (M,), info)`` where
        ``targets`` are the images' classes (or prompted classes; -1: none), ``info["nfe"]`` the NFE
        per image and ``info["steps"]`` the outer steps.
    """
    plan = as_plan(plan, guide=None if guide_model is None else GUIDE_IN_MEMORY, **loose)
    cfg = model.config
    if num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
    if conditions is None:
        conditions = ClassLabels(labels) if labels is not None else ClassLabels.balanced(num_samples, cfg.num_classes, seed)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mine = torch.arange(rank, num_samples, world_size) if indices is None else indices
    out, nfe, guide_nfe = [], None, None
    for chunk in mine.split(batch_size):
        seeds = (chunk + seed).tolist()
        noise = noise_for_seeds(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size), device=device, dtype=dtype)
        gen = mask_generators(seeds)  # one mask stream per image
        x, info = sample(model, noise, plan, guide_model=guide_model, return_info=True, generator=gen,
                         **conditions.condition(chunk, device))
        out.append(x.float().cpu())
        nfe, guide_nfe = info["nfe"], info["guide_nfe"]
    images = torch.cat(out) if out else torch.empty(0, cfg.in_channels, cfg.input_size, cfg.input_size)
    return mine, images, conditions.targets[mine], {"nfe": nfe, "guide_nfe": guide_nfe, "steps": plan.steps,
                                                     "sampler": plan.sampler}
