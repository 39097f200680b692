"""Generations of a latent folder: where a preparation writes, and what a rerun keeps.

A preparation writes a new generation folder ``gen-K`` (its ``settings.json`` first) and lists it in
``meta.json`` only when every shard is written; then older generations are deleted. Rerunning the
same command resumes the unlisted generation prepared with the same settings: its finished splits
(``train.json``, ``test.json``) and its leading full shards that open are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from patchforcing.data.base import SPLITS
from patchforcing.data.latents import CAPTIONS_LIMIT, captions_file, is_latent_folder, read_meta
from patchforcing.errors import DataError
from patchforcing.json_files import read_json
from patchforcing.runs import LOCK_FILE, atomic_write_text, is_temporary

GENERATION = re.compile(r"^gen-(\d+)$")


def generations(out: Path) -> dict[int, Path]:
    found = {}
    for entry in out.iterdir() if out.is_dir() else ():
        match = GENERATION.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found[int(match.group(1))] = entry
    return found


def live_generation(out: Path) -> str | None:
    """The top folder the current ``meta.json`` lists its shards in (``gen-K``, or ``train``/``test``
    for folders written by older versions), None without a ``meta.json``."""
    if not is_latent_folder(out):
        return None
    shards = [s for names in read_meta(out)["shards"].values() for s in names]
    return shards[0].split("/")[0] if shards else None


def is_our_partial_folder(out: Path) -> bool:
    """A folder a killed preparation left before its first ``meta.json``: only the lock, generation
    folders with their settings, and temporaries."""
    for entry in out.iterdir():
        ok = entry.name == LOCK_FILE or is_temporary(entry) or (
            GENERATION.match(entry.name) is not None and (entry / "settings.json").is_file())
        if not ok:
            return False
    return True


def check_out(out: Path) -> None:
    """Refuse a file, or a non-empty folder that is neither a latent folder nor a partial one of ours."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()):
        if is_latent_folder(out):
            read_meta(out)  # refuse to overwrite a foreign meta.json
        elif not is_our_partial_folder(out):
            raise DataError(f"--out {out} exists, is not empty and is not a latent folder; choose a new --out folder")


def stage_folder(out: Path, settings: dict) -> Path:
    """The generation folder to write: an unlisted one prepared with the same ``settings`` (resumed),
    else a new one."""
    live = live_generation(out)
    gens = generations(out)
    for k in sorted(gens, reverse=True):
        folder = gens[k]
        if folder.name == live:
            continue
        try:
            same = read_json(folder / "settings.json") == settings
        except (OSError, ValueError):
            same = False
        if same:
            return folder
    folder = out / f"gen-{max(gens, default=0) + 1}"
    folder.mkdir()
    atomic_write_text(folder / "settings.json", json.dumps(settings, indent=2) + "\n")
    return folder


def finished_split(stage: Path, split: str, prefix: str) -> dict | None:
    """The entry of a split this rank finished in an earlier, interrupted run (its shards checked)."""
    path = stage / f"{split}{'-' + prefix.rstrip('-') if prefix else ''}.json"
    try:
        entry = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict):
        return None
    if all(shard_rows(stage.parent / name) is not None for name in entry.get("shards", [])):
        return entry
    return None


def finished_shards(stage: Path, split: str, prefix: str, shard_size: int) -> list[str]:
    """The leading full shards of this rank's split that an interrupted run wrote and that open."""
    kept = []
    while True:
        name = f"{stage.name}/{split}/shard-{prefix}{len(kept):05d}.safetensors"
        if shard_rows(stage.parent / name) != shard_size:
            return kept
        kept.append(name)


def shard_rows(path: Path) -> int | None:
    """Rows of a shard whose tensors all open with one row count (header only), else None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            counts = {f.get_slice(k).get_shape()[0] for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception:  # noqa: BLE001 - a missing or damaged file is simply not finished
        return None
    if len(counts) != 1:
        return None
    if path.with_name(path.name.replace(".safetensors", ".captions.json")).exists():
        try:
            if len(read_json(captions_file(path), limit=CAPTIONS_LIMIT)) not in counts:
                return None
        except (OSError, ValueError, TypeError):
            return None
    return counts.pop()


def remove_old_generations(out: Path, keep: str) -> None:
    """After the new ``meta.json`` landed: delete the other generations and an older version's
    ``train/`` and ``test/`` shards (only the files this package writes there)."""
    for folder in generations(out).values():
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)
    for split in SPLITS:
        folder = out / split
        if folder.is_dir() and not folder.is_symlink():
            for f in folder.glob("shard-*"):
                if f.name.endswith((".safetensors", ".captions.json")):
                    f.unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
