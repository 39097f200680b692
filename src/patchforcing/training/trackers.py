"""Experiment trackers beside ``metrics.jsonl``: TensorBoard and Weights & Biases (``train --log``).

``metrics.jsonl`` stays the source of truth: a tracker receives exactly the lines written there
(every scalar under its ``metrics.jsonl`` key: ``loss``, ``flow_loss``, ``uncertainty_loss``,
``grad_norm``, ``repa_loss``, ``lr``, ``images_per_sec``, ``images_seen``, ``time_s``, ``val_loss``,
and the 8 ``val_segments`` as ``val_segments/0`` .. ``val_segments/7``, each at the line's step)
and the sample grids the trainer writes (``samples``). Only rank 0 logs.

    patchforcing train --out runs/digits --log tensorboard      # pip install 'patchforcing[tensorboard]'
    tensorboard --logdir runs/digits/tensorboard
    patchforcing train --out runs/digits --log wandb            # pip install 'patchforcing[wandb]'; WANDB_PROJECT, WANDB_MODE

Resume: TensorBoard drops the events a killed run wrote after the step it resumes from
(``purge_step``); W&B continues the same run, whose id is kept in ``OUT/wandb-run-id``.
The packages are imported only when asked for; without them the run stops before its first
step with the ``pip install`` line that fixes it.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from patchforcing.errors import ConfigError
from patchforcing.runs import atomic_write_text

TRACKERS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"  # OUT/tensorboard: the event files
WANDB_ID_FILE = "wandb-run-id"  # OUT/wandb-run-id: the W&B run a resumed training continues
WANDB_PROJECT = "patchforcing"  # the project when WANDB_PROJECT is not set


class Tracker(Protocol):
    def log(self, entry: dict[str, Any]) -> None: ...  # one metrics.jsonl line
    def image(self, step: int, path: Path) -> None: ...  # one sample grid (PNG)
    def close(self) -> None: ...


def parse_trackers(text: str) -> tuple[str, ...]:
    """``"none"`` -> (), ``"tensorboard,wandb"`` -> both; anything else raises ``ConfigError``."""
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise ConfigError(f"--log {text!r}: unknown tracker {', '.join(bad)}; choose none, tensorboard, wandb or tensorboard,wandb")
    return names


def scalars(entry: dict[str, Any]) -> dict[str, float]:
    """The scalars of a ``metrics.jsonl`` line under their keys (lists as ``key/i``), without ``step``."""
    out: dict[str, float] = {}
    for key, value in entry.items():
        if key == "step":
            continue
        if isinstance(value, (list, tuple)):
            out.update({f"{key}/{i}": float(v) for i, v in enumerate(value) if _number(v)})
        elif _number(value):
            out[key] = float(value)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def open_trackers(log: str, run_dir: Path, config: dict[str, Any], first_step: int) -> list[Tracker]:
    """The trackers ``log`` names for the run in ``run_dir`` that starts (or resumes) at ``first_step``.

    Raises:
        ConfigError: a tracker's package is missing (the message names the extra to install).
    """
    opened: list[Tracker] = []
    for name in parse_trackers(log):
        opened.append(TensorBoardTracker(run_dir, first_step) if name == "tensorboard" else WandbTracker(run_dir, config, first_step))
    return opened


def require_packages(log: str) -> None:
    """Raise ``ConfigError`` (with the ``pip install`` line) when a tracker ``log`` names is not installed."""
    for name in parse_trackers(log):
        _require(name, name)


def _require(module: str, extra: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError(f"--log {extra} needs the {extra} package: pip install 'patchforcing[{extra}]' "
                          "(or train without --log; metrics.jsonl is written either way)") from None


class TensorBoardTracker:
    """Event files in ``OUT/tensorboard``; a resumed run first drops the events at or after its first step."""

    def __init__(self, run_dir: Path, first_step: int):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=first_step if first_step > 1 else None)

    def log(self, entry: dict[str, Any]) -> None:
        for key, value in scalars(entry).items():
            self.writer.add_scalar(key, value, entry["step"])

    def image(self, step: int, path: Path) -> None:
        self.writer.add_image("samples", _read_rgb(path), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run named after the run folder, with the training config; ``OUT/wandb-run-id`` keeps its id,
    so rerunning the command (resume) continues the same W&B run. Its local files go to ``OUT/wandb``."""

    def __init__(self, run_dir: Path, config: dict[str, Any], first_step: int):
        self.wandb = _require("wandb", "wandb")
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(4)
            atomic_write_text(id_file, run_id + "\n")
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), id=run_id, resume="allow",
                                   name=run_dir.resolve().name, dir=str(run_dir), config=config)

    def log(self, entry: dict[str, Any]) -> None:
        self.run.log(scalars(entry), step=int(entry["step"]))

    def image(self, step: int, path: Path) -> None:
        self.run.log({"samples": self.wandb.Image(_read_rgb(path))}, step=int(step))

    def close(self) -> None:
        self.run.finish()


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of a sample grid."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


__all__ = ["TENSORBOARD_DIR", "TRACKERS", "WANDB_ID_FILE", "TensorBoardTracker", "Tracker", "WandbTracker", "open_trackers",
           "parse_trackers", "require_packages", "scalars"]
