"""Command-line flags for guidance beyond CFG, shared by ``patchforcing sample`` and ``evaluate``.

    --guidance-interval 0.25,0.75        guide only the outer steps with 0.25 <= t_k <= 0.75
    --guide-checkpoint runs/digits@step=500   autoguidance with step 500 of the same run
    --guide-checkpoint weak.safetensors       ... or with any checkpoint file or run folder

``--guide-checkpoint`` takes what ``--checkpoint`` takes (a file, or a run folder: its newest
checkpoint), plus ``RUN_FOLDER@step=N`` for the checkpoint of training step N of a run folder.
With it, ``--cfg-scale`` is the autoguidance weight.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchforcing.errors import CheckpointError, ConfigError

_AT_STEP = re.compile(r"^(?P<run>.+)@step=(?P<step>\d+)$")


def add_guidance_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                        help="guide only the outer steps whose grid time t_k lies in [LO, HI] (t=0 noise, t=1 data); "
                             "the other steps make one conditional call")
    parser.add_argument("--guide-checkpoint", default=None, metavar="PATH",
                        help="autoguidance: a weaker network of the same kind and shape replaces the unconditional "
                             "branch (a checkpoint file, a run folder, or RUN_FOLDER@step=N); --cfg-scale is its weight")


def parse_interval(text: str | None) -> tuple[float, float] | None:
    """``"0.25,0.75"`` -> ``(0.25, 0.75)``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--guidance-interval takes two numbers LO,HI (e.g. 0.25,0.75), got {text!r}") from None
    if not lo <= hi:
        raise ConfigError(f"--guidance-interval needs LO <= HI, got {text!r}")
    return lo, hi


def resolve_guide_path(spec: str) -> Path:
    """A checkpoint file, a run folder, or ``RUN_FOLDER@step=N`` -> the path ``load_model`` reads."""
    from patchforcing.runs import checkpoint_path, list_checkpoints

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


def load_guide_model(spec: str, model: nn.Module, device: torch.device | str) -> nn.Module:
    """The weak network of ``--guide-checkpoint``, on ``model``'s device and dtype."""
    from patchforcing import load_model

    weak = load_model(resolve_guide_path(spec), map_location=device)
    weight = next(model.parameters())
    return weak.to(device=weight.device, dtype=weight.dtype)


def guidance_from_args(args: argparse.Namespace, model: nn.Module, device: torch.device | str) -> dict[str, Any]:
    """``sample``'s keyword arguments ``guidance_interval`` and ``guide_model`` from the flags."""
    out: dict[str, Any] = {}
    interval = parse_interval(getattr(args, "guidance_interval", None))
    if interval is not None:
        out["guidance_interval"] = interval
    if getattr(args, "guide_checkpoint", None):
        out["guide_model"] = load_guide_model(args.guide_checkpoint, model, device)
    return out
