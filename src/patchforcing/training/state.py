"""Training checkpoints: write atomically, keep the newest few, read back for an exact resume.

A checkpoint is ``DIR/checkpoints/step-XXXXXXXX.pt`` (8-digit step), a ``torch.save`` dict that
loads with ``torch.load(weights_only=True)`` (tensors, dicts, lists, numbers, strings only)::

    {"format": "patchforcing-train", "version": 1, "step": int, "images_seen": int,
     "model_config": {...}, "model": state_dict, "ema": state_dict, "optimizer": state_dict,
     "scheduler": state_dict, "rng": {"torch_cpu": uint8 tensor, "cuda": [uint8 tensors]},
     "train_config": {...}, "world_size": int}

``patchforcing.load_model(DIR)`` reads the newest one and returns its EMA network.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchforcing.checkpoints import TRAIN_FORMAT, load_error_text
from patchforcing.errors import CheckpointError
from patchforcing.runs import atomic_save, checkpoint_path, list_checkpoints, previous_checkpoint

VERSION = 1
REQUIRED = ("step", "model_config", "model", "ema", "optimizer", "scheduler", "rng")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states as tensors. Training itself draws from per-step generators
    (``batches.py``); these are saved so that any other use of the global RNG resumes too."""
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, contents: dict[str, Any], keep: int) -> Path:
    """Write step ``step`` atomically, then delete all but the newest ``keep`` checkpoints."""
    path = checkpoint_path(run_dir, step)
    atomic_save({"format": TRAIN_FORMAT, "version": VERSION, "step": step, **contents}, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a training checkpoint; any problem is a CheckpointError that names the file and the fix."""
    previous = previous_checkpoint(path)
    fix = (
        f"delete it to resume from the previous checkpoint {previous.name}"
        if previous else "delete it (or the whole run folder) to start the run over"
    )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated, corrupt or foreign file
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or unreadable ({load_error_text(err)}); {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a patchforcing training checkpoint; {fix}")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {ckpt.get('version')}, this trainer reads version {VERSION}; {fix}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks {missing}; {fix}")
    return ckpt


def state_is_finite(module: nn.Module) -> bool:
    """True when every floating-point parameter and buffer of ``module`` is finite."""
    tensors = [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
    if not tensors:
        return True
    norms = torch._foreach_norm([t.detach().float() for t in tensors])
    return math.isfinite(float(torch.stack(norms).sum()))


def weights_digest(*modules: nn.Module) -> str:
    """A SHA-256 over the state of ``modules`` (to compare processes' weights bit for bit)."""
    import hashlib

    h = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
