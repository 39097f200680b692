"""The weak network of autoguidance, from what a plan names (``Guidance.guide``).

One reader for every entry point (the commands, the library, the pipeline's users)::

    plan = SamplingPlan.from_nfe("look-ahead", 32, guidance=Guidance(2.0, guide="runs/digits@step=500"))
    weak = load_guide_model(plan, net)      # on net's device and dtype; None without autoguidance
    x = pf.sample(net, noise, plan, guide_model=weak, labels=labels)

A guide is named by a checkpoint file, a training run folder (its newest checkpoint) or
``RUN_FOLDER@step=N`` (the checkpoint of step N).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from patchforcing.checkpoints import load_model
from patchforcing.errors import CheckpointError
from patchforcing.runs import checkpoint_path, list_checkpoints
from patchforcing.sampling.plan import SamplingPlan

_AT_STEP = re.compile(r"^(?P<run>.+)@step=(?P<step>\d+)$")


def resolve_guide(spec: str) -> Path:
    """A checkpoint file, a run folder, or ``RUN_FOLDER@step=N`` -> the path ``load_model`` reads.

    Raises:
        CheckpointError: ``@step=N`` names a step the run folder has no checkpoint of (the message
            lists the steps it has).
    """
    match = _AT_STEP.match(spec)
    if match is None:
        return Path(spec)
    run, step = Path(match["run"]), int(match["step"])
    path = checkpoint_path(run, step)
    if not path.is_file():
        steps = [int(p.stem.split("-")[1]) for p in list_checkpoints(run)]
        have = f"its checkpoints are at steps {steps}" if steps else "it has no checkpoints"
        raise CheckpointError(f"--guide-checkpoint {spec!r}: {run} has no checkpoint of step {step} ({have}); "
                              "pick one of those steps, or pass a checkpoint file")
    return path


def load_guide_model(plan: SamplingPlan, model: nn.Module, device: torch.device | str | None = None) -> nn.Module | None:
    """The weak network ``plan`` names, on ``model``'s device and dtype (None when it names none)."""
    if plan.guidance.guide is None:
        return None
    weight = next(model.parameters())
    weak = load_model(resolve_guide(plan.guidance.guide), map_location=device or weight.device)
    return weak.to(device=weight.device, dtype=weight.dtype)
