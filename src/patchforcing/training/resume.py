"""Run folders: ``config.json`` and deciding whether (and from where) a run resumes.

Running the same command again continues from the newest checkpoint in the run folder. Settings
that decide what is being trained -- the network (its resolved ``ModelConfig``) and the data --
must match the checkpoint; the others (steps, learning rate, intervals, devices ...) may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from patchforcing.errors import ConfigError, PatchForcingError
from patchforcing.json_files import read_json
from patchforcing.models import config_from_dict
from patchforcing.runs import RunFolder, atomic_write
from patchforcing.training import state
from patchforcing.training.config import TrainConfig, config_json

MUST_MATCH = ("data", "resolution")  # plus every field of the resolved model config


def check_resumable(run_dir: Path, cfg: TrainConfig, model_config: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """The newest checkpoint of ``run_dir`` (loaded onto ``device``), or None for a fresh run.

    Raises:
        CheckpointError: the newest checkpoint is unreadable (the message names it and the fix).
        ConfigError: the checkpoint was trained with another network or data.
    """
    found = state.list_checkpoints(run_dir)
    if not found:
        return None
    ckpt = state.load_checkpoint(found[-1], map_location=device)
    old_train, old_model = ckpt.get("train_config") or {}, _with_defaults(ckpt["model_config"])
    diffs = [f"{k}: {old_train.get(k)!r} in the run folder, {getattr(cfg, k)!r} now" for k in MUST_MATCH if k in old_train and old_train[k] != getattr(cfg, k)]
    diffs += [f"model {k}: {old_model.get(k)!r} in the run folder, {v!r} now" for k, v in model_config.items() if old_model.get(k) != v]
    if diffs:
        raise ConfigError(
            f"{run_dir} holds a run of another network or data set ({'; '.join(diffs)}); "
            "choose a new --out, or rerun with the run's own settings (see its config.json) to resume it"
        )
    return ckpt


def _with_defaults(model_config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model config with fields added since it was written set to their defaults,
    so a run folder from an older version of the package still resumes."""
    try:
        return {**config_from_dict(model_config).to_dict(), **model_config}
    except (PatchForcingError, TypeError, ValueError):  # compared field by field below instead
        return model_config


def changed_settings(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """Settings that differ from the run folder's ``config.json`` (allowed on resume; reported)."""
    path = RunFolder(run_dir).config
    try:
        old = read_json(path)  # a regular file of at most 1 MB
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    return [f"{k} {old[k]!r} -> {v!r}" for k, v in cfg.to_dict().items() if k in old and old[k] != v]


def write_config(run_dir: Path, cfg: TrainConfig, model_config: dict[str, Any], data_info: dict[str, Any]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = config_json(cfg, model_config, data_info)
    return atomic_write(RunFolder(run_dir).config, lambda tmp: Path(tmp).write_text(text))
