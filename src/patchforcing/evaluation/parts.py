"""Resumable sampling for large evaluations (FID-50k): images written in parts as they are made.

The ``num_samples`` images are cut into parts of ``part_size`` consecutive indices; part ``k``
(images ``[k P, (k + 1) P)``) belongs to rank ``k mod W`` and is written, once complete, to
``FOLDER/part-KKKKKK.npz`` (``indices``, ``pixels`` (P, H, W, C) uint8, ``labels``, ``nfe``)
through an atomic rename. Image ``i`` always uses seed ``seed + i``, so a part does not depend on
which rank made it: a killed run, restarted with the same command (even with another number of
processes), skips the parts on disk and makes only the missing ones. ``FOLDER/plan.json``
records what is being sampled and what samples it (``parts_identity``: a digest of the network's
weights and config, of the guide network's, and the decoder); parts of a different plan are
refused, never mixed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from patchforcing.checkpoints import network_digest
from patchforcing.errors import CheckpointError, ConfigError, DataError
from patchforcing.json_files import read_json
from patchforcing.runs import atomic_write, atomic_write_text
from patchforcing.runtime import Processes, barrier, run_on_main

PART_SIZE = 1000  # images per part: at 256 px about 200 MB of uint8, a few minutes of one GPU


def part_path(folder: Path, k: int) -> Path:
    return folder / f"part-{k:06d}.npz"


def parts_identity(model: nn.Module, guide_model: nn.Module | None, decoder: Callable | None) -> dict[str, Any]:
    """What makes the images, for ``plan.json``: ``network`` and ``guide_network`` (SHA-256 of the
    config and weights, ``checkpoints.network_digest``; None without a guide) and ``decoder`` (the
    VAE's name and latent scaling; None for pixel networks)."""
    describe = getattr(decoder, "describe", None)
    return {"network": network_digest(model),
            "guide_network": None if guide_model is None else network_digest(guide_model),
            "decoder": describe() if callable(describe) else getattr(decoder, "vae_name", None)}


def require_finite(images: Tensor) -> None:
    """Refuse samples holding NaN or inf: rounded to uint8 they would look like images and get a
    finite FID.

    Raises:
        CheckpointError: how many images are not finite, and what to do.
    """
    bad = int((~torch.isfinite(images.reshape(images.shape[0], -1))).any(dim=1).sum()) if images.numel() else 0
    if bad:
        raise CheckpointError(f"{bad} of {images.shape[0]} samples hold NaN or inf values, so no metric would mean "
                              "anything: the network's weights are probably not finite (a diverged training); "
                              "evaluate an earlier checkpoint")


def generate_parts(folder: str | os.PathLike, identity: dict[str, Any], procs: Processes,
                   make: Callable[[Tensor], tuple[np.ndarray, Tensor, int]], num_samples: int,
                   part_size: int = PART_SIZE) -> dict[str, Any]:
    """Make this rank's missing parts, then wait for every rank.

    Args:
        folder: where the parts go (created).
        identity: what identifies this evaluation (written to ``plan.json`` and checked on resume).
        procs: this process among those of ``patchforcing.runtime.setup``.
        make: ``indices (P,) -> (pixels (P, H, W, C) uint8, targets (P,), guide NFE)``, the images as
            they are saved (``evaluate``'s generate -> check -> decode -> round).
        num_samples: images in total.
        part_size: images per part.

    Returns:
        ``made`` (parts made by this rank in this run), ``seconds`` (its sampling time) and
        ``guide_nfe`` (of its last part, 0 without autoguidance).
    """
    folder = Path(folder)
    if part_size < 1:
        raise ConfigError(f"part_size must be at least 1, got {part_size}")
    identity = {**identity, "part_size": part_size}
    run_on_main(lambda: _claim(folder, identity), procs)
    start, made, guide_nfe = time.perf_counter(), 0, 0
    for k in range(procs.rank, -(-num_samples // part_size), procs.world_size):
        path = part_path(folder, k)
        if path.exists():
            continue  # made by an earlier run of the same evaluation
        indices = torch.arange(k * part_size, min((k + 1) * part_size, num_samples))
        pixels, targets, guide_nfe = make(indices)
        _write_npz(path, {"indices": indices.numpy(), "pixels": pixels, "labels": targets.numpy()})
        made += 1
    barrier(procs)
    return {"made": made, "seconds": time.perf_counter() - start, "guide_nfe": guide_nfe}


def load_parts(folder: str | os.PathLike, num_samples: int, part_size: int = PART_SIZE) -> tuple[np.ndarray, Tensor]:
    """All parts in index order: ``(pixels (M, H, W, C) uint8, labels (M,))``."""
    folder = Path(folder)
    pixels, labels, seen = [], [], []
    for k in range(-(-num_samples // part_size)):
        try:
            with np.load(part_path(folder, k)) as f:
                seen.append(f["indices"])
                pixels.append(f["pixels"])
                labels.append(f["labels"])
        except Exception as err:  # noqa: BLE001 - empty (EOFError), truncated (BadZipFile), keys missing, ...
            cause = " ".join(str(err).split())[:200] or "empty or truncated"
            raise DataError(f"cannot read {part_path(folder, k)} ({type(err).__name__}: {cause}); delete it and "
                            "rerun the same command to make it again") from None
    if not np.array_equal(np.concatenate(seen), np.arange(num_samples)):
        raise DataError(f"the parts in {folder} do not cover images 0..{num_samples - 1} exactly once; delete "
                        f"{folder} and rerun the same command to make them again")
    return np.concatenate(pixels), torch.from_numpy(np.concatenate(labels))


def _claim(folder: Path, identity: dict[str, Any]) -> None:
    """Write ``plan.json`` (the evaluation's identity), or check that the folder's parts belong to it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.json"
    text = json.dumps(identity, indent=2, sort_keys=True, default=str)
    if path.exists() or path.is_symlink():
        try:
            old = read_json(path, fix="not a plan this project wrote")  # a regular file of at most 1 MB
        except (OSError, ValueError) as err:
            old = err
        if not isinstance(old, dict):
            raise DataError(f"{path} is unreadable or not a JSON object ({_short(old)}), so the parts beside it cannot "
                            f"be checked: delete {folder} to start over, or use a new --out")
        new = json.loads(text)
        if old != new:
            diff = _differences(old, new)
            raise ConfigError(f"{folder} holds parts of another evaluation, never mixed with these "
                              f"({'; '.join(diff)}); delete {folder} to start over, or use a new --out")
        return
    atomic_write_text(path, text + "\n")


def _differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``KEY: OLD there, NEW now`` for every value that differs, inside nested objects too (their keys
    joined by dots, e.g. ``plan.options.n_inner``), so a message shows the field that changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for k in sorted(set(old) | set(new), key=str)
                for line in _differences(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{key}.{k}" if key else str(k))]
    return [] if old == new else [f"{key}: {_short(old)} there, {_short(new)} now"]


_ABSENT = object()  # a key one of the two plans lacks


def _short(value: Any) -> str:
    """A value for one error line: ``absent``, digests cut to 12 hex digits, anything else to 80 characters."""
    if value is _ABSENT:
        return "absent"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}..."
    return repr(value)[:80] if not isinstance(value, Exception) else f"{type(value).__name__}: {value}"[:300]


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    atomic_write(path, write)
