"""Resumable sampling for large evaluations (FID-50k): images written in parts as they are made.

The ``num_samples`` images are cut into parts of ``part_size`` consecutive indices; part ``k``
(images ``[k P, (k + 1) P)``) belongs to rank ``k mod W`` and is written, once complete, to
``FOLDER/part-KKKKKK.npz`` (``indices``, ``pixels`` (P, H, W, C) uint8, ``labels``, ``nfe``)
through an atomic rename. Image ``i`` always uses seed ``seed + i``, so a part does not depend on
which rank made it: a killed run, restarted with the same command (even with another number of
processes), skips the parts on disk and makes only the missing ones. ``FOLDER/plan.json``
records what is being sampled; parts of a different plan are refused, never mixed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError, DataError
from patchforcing.evaluation.generate import generate_images, to_uint8_nhwc
from patchforcing.runtime import Processes, barrier, run_on_main

PART_SIZE = 1000  # images per part: at 256 px about 200 MB of uint8, a few minutes of one GPU


def part_path(folder: Path, k: int) -> Path:
    return folder / f"part-{k:06d}.npz"


def generate_parts(model: nn.Module, folder: str | os.PathLike, *, plan: dict[str, Any], procs: Processes,
                   expected_nfe: int, decoder: Callable[[Tensor], Tensor] | None = None,
                   part_size: int = PART_SIZE, **generate: Any) -> dict[str, Any]:
    """Make this rank's missing parts, then wait for every rank.

    Args:
        model: the network; ``generate`` holds ``generate_images``'s keyword arguments
            (``sampler``, ``steps``, ``num_samples``, ``seed``, ...; not ``rank``/``world_size``).
        folder: where the parts go (created).
        plan: what identifies this evaluation (written to ``plan.json`` and checked on resume).
        procs: this process among those of ``patchforcing.runtime.setup``.
        expected_nfe: the NFE per image the sampler must spend (checked on every part).
        decoder: latents -> images in [-1, 1], applied before the images are rounded to uint8.
        part_size: images per part.

    Returns:
        ``made`` (parts made by this rank in this run), ``seconds`` (its sampling time) and
        ``guide_nfe`` (of its last part, 0 without autoguidance).
    """
    folder = Path(folder)
    if part_size < 1:
        raise ConfigError(f"part_size must be at least 1, got {part_size}")
    plan = {**plan, "part_size": part_size}
    run_on_main(lambda: _claim(folder, plan), procs)
    num_samples = generate["num_samples"]
    start, made, guide_nfe = time.perf_counter(), 0, 0
    for k in range(procs.rank, -(-num_samples // part_size), procs.world_size):
        path = part_path(folder, k)
        if path.exists():
            continue  # made by an earlier run of the same plan
        indices = torch.arange(k * part_size, min((k + 1) * part_size, num_samples))
        _, images, labels, info = generate_images(model, indices=indices, **generate)
        if info["nfe"] != expected_nfe:
            raise RuntimeError(f"{generate['sampler']} used {info['nfe']} NFE where {expected_nfe} were expected")
        if decoder is not None:
            images = decoder(images)  # (P, 3, H, W) in [-1, 1]
        arrays = {"indices": indices.numpy(), "pixels": to_uint8_nhwc(images), "labels": labels.numpy()}
        _write_npz(path, arrays)
        made, guide_nfe = made + 1, info.get("guide_nfe") or 0
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
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"cannot read {part_path(folder, k)} ({err}); delete it and rerun the same command "
                            "to make it again") from err
    if not np.array_equal(np.concatenate(seen), np.arange(num_samples)):
        raise RuntimeError(f"the parts in {folder} do not cover images 0..{num_samples - 1} exactly once")
    return np.concatenate(pixels), torch.from_numpy(np.concatenate(labels))


def _claim(folder: Path, plan: dict[str, Any]) -> None:
    """Write ``plan.json``, or check that the folder's parts belong to this same plan."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.json"
    text = json.dumps(plan, indent=2, sort_keys=True, default=str)
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(text):
            diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in json.loads(text).items() if old.get(k) != v]
            raise ConfigError(f"{folder} holds parts of another evaluation ({'; '.join(diff)}); use a new --out, "
                              f"or delete {folder} to start over")
        return
    from patchforcing.runs import atomic_write_text

    atomic_write_text(path, text + "\n")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from patchforcing.runs import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    atomic_write(path, write)
