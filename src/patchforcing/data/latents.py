"""Latent data sets: encode images once with a VAE (``patchforcing.data.prepare``), then train
on the stored latents. This module reads them.

A latent folder (every file written to a temporary name and moved into place, ``meta.json``
last, so a folder with ``meta.json`` is complete)::

    out/meta.json                              format, VAE, scale factor, sizes, classes, shards
    out/gen-1/train/shard-00000.safetensors    latents (M, c, h, w) float32, labels (M,) int64
    out/gen-1/test/shard-00000.safetensors     the held-out split of the source data

``meta.json`` lists every shard by its path in the folder (folders with ``train/`` and ``test/`` at
the top, without ``gen-K/``, load too). Shards written with ``"posterior": true``
also hold ``latents_std``, the posterior standard deviation (scaled like the mean); with
``"hflip": true`` also ``latents_flip`` and ``latents_flip_std`` of the mirrored images (see
:class:`LatentViews`).

Captioned data (``digits-captions``, folders with captions) keep their captions: beside every
shard a ``shard-XXXXX.captions.json`` lists the shard's captions in row order, ``meta.json`` says
``"captions": true`` and the split loads as a ``CaptionedDataset``.

With ``repa_encoder`` every shard also holds ``repa_features`` (M, N', z) float32: the REPA
encoder's features of the same images, in the same order (``meta.json`` names the encoder), so
REPA training on latents never decodes.

Stored latents are ``(posterior mean - shift_factor) * scale_factor``; ``shift_factor`` is 0
for SD-VAE-style autoencoders (no shift in their config). Decode with
``vae.decode(latents / scale_factor + shift_factor)``.

A process that opens a latent folder holds a shared lock on its ``run.lock`` while the data set
object lives, so ``prepare-latents`` refuses to rewrite a folder a training reads.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from patchforcing.data.base import ImageDataset, check_split
from patchforcing.data.captions import CaptionedDataset
from patchforcing.data.mapped import MappedLatents
from patchforcing.errors import DataError
from patchforcing.json_files import read_json
from patchforcing.runs import LOCK_FILE

LATENT_FORMAT, LATENT_VERSION = "patchforcing-latents", 1
CAPTIONS_LIMIT = 64 << 20  # bytes of a shard's captions file (4096 captions of 16 kB each)


def is_latent_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a ``meta.json`` (written by :func:`prepare_latents`)."""
    return (Path(path) / "meta.json").is_file()


def read_meta(root: str | Path) -> dict:
    """Read and check ``meta.json`` of a latent folder."""
    path = Path(root) / "meta.json"
    try:
        meta = read_json(path, error=DataError, fix="re-run `patchforcing prepare-latents` to rewrite the folder")
    except OSError as err:
        raise DataError(f"cannot read {path} ({err}); re-run `patchforcing prepare-latents` to rewrite the folder") from err
    if not isinstance(meta, dict) or meta.get("format") != LATENT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(
            f"{path} is not a patchforcing latent folder (format {found!r}); remove the meta.json to use the "
            "folder as images, or write latents with `patchforcing prepare-latents`"
        )
    if meta.get("version") != LATENT_VERSION:
        raise DataError(
            f"{path} has latent format version {meta.get('version')}, this package reads version {LATENT_VERSION}; "
            "re-run prepare-latents"
        )
    for key, kinds in _META_FIELDS.items():
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, kinds) or (
                key == "shards" and not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in value.values())):
            what = "lacks" if key not in meta else f"has a wrong {key!r} ({type(value).__name__}) instead of"
            raise DataError(f"{path} {what} the field {key!r}; the file is damaged or hand-edited: re-run "
                            "`patchforcing prepare-latents` with the same --out to rewrite the folder")
    return meta


_META_FIELDS = {  # the fields every reader relies on, and their JSON types
    "vae": str, "scale_factor": (int, float), "shift_factor": (int, float), "channels": int, "resolution": int,
    "image_resolution": int, "num_classes": int, "class_names": list, "num_images": dict, "shards": dict,
}


@dataclass
class LatentViews:
    """The other stored versions of each row of a latent folder, beside the posterior mean.

    Attributes (each ``(M, ...)`` rows like the mean, or None when the folder lacks them):
        std: posterior standard deviation (scaled like the mean).
        flip, flip_std: posterior mean and std of the horizontally mirrored image.
        flip_features: REPA features of the mirrored image.
    """

    std: Tensor | None = None
    flip: Tensor | None = None
    flip_std: Tensor | None = None
    flip_features: Tensor | None = None


def _views(meta: dict, paths: list[Path]) -> LatentViews | None:
    if not (meta.get("posterior") or meta.get("hflip")):
        return None
    keys = ["latents_std"] if meta.get("posterior") else []
    if meta.get("hflip"):
        keys += ["latents_flip"] + (["latents_flip_std"] if meta.get("posterior") else [])
        keys += ["repa_features_flip"] if meta.get("repa_encoder") else []
    rows = {k: MappedLatents(paths, k) for k in keys}
    return LatentViews(rows.get("latents_std"), rows.get("latents_flip"), rows.get("latents_flip_std"),
                       rows.get("repa_features_flip"))


def hold_shared_lock(root: Path):
    """A shared ``flock`` on ``root/run.lock`` (released when the returned file is closed or collected):
    ``prepare-latents`` takes the exclusive one, so it cannot rewrite a folder that is being read.

    Returns None where no lock can be taken (a read-only folder without a lock file: nothing here
    can rewrite it either). The lock file is never followed when it is a symbolic link.

    Raises:
        DataError: a preparation is writing the folder now.
    """
    path = root / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DataError(f"{root} is being written by prepare-latents now; wait for it to finish, then rerun") from None
        return None
    return os.fdopen(fd, "rb")


def load_latent_dataset(root: str | Path, *, split: str = "train", resolution: int | None = None,
                        lazy: bool = True) -> ImageDataset:
    """Open one split of a latent folder; no VAE is needed.

    Args:
        root: folder written by :func:`prepare_latents`.
        split: "train" or "test".
        resolution: None, or the latent size or encoded image size (a check only).
        lazy: keep the latents on disk and read the rows each batch needs (a
            :class:`~patchforcing.data.mapped.MappedLatents`; memory does not grow with the
            folder); False reads every shard into one tensor. Both give the same rows.

    Returns:
        :class:`ImageDataset` with ``images`` (M, c, h, w) scaled latents, plus ``vae``,
        ``scale_factor``, ``shift_factor`` and ``image_resolution`` from ``meta.json``, and
        ``latent_views`` (a :class:`LatentViews`, or None for a folder of posterior means only).
        The data set holds a shared lock on the folder while it lives.
    """
    from safetensors import safe_open

    root = Path(root)
    meta = read_meta(root)
    check_split(split)
    if resolution not in (None, meta["resolution"], meta["image_resolution"]):
        raise DataError(
            f"{root} holds {meta['resolution']}x{meta['resolution']} latents of {meta['image_resolution']}px images, "
            f"not resolution {resolution}; re-run prepare-latents with --resolution or pass resolution=None"
        )
    shards = meta["shards"].get(split, [])
    if not shards:
        raise DataError(
            f"{root} has no '{split}' latents; re-run prepare-latents with --split all (or the source had too few images)"
        )
    lock = hold_shared_lock(root)
    latents, labels = [], []
    for name in shards:  # the labels (8 bytes per image) are always read; the latents only when not lazy
        try:
            with safe_open(str(root / name), framework="pt") as f:
                labels.append(f.get_tensor("labels"))
                if not lazy:
                    latents.append(f.get_tensor("latents"))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise DataError(f"cannot read latent shard {root / name} ({err}); re-run prepare-latents") from err
    paths = [root / name for name in shards]
    images = MappedLatents(paths) if lazy else torch.cat(latents)
    if meta.get("captions"):  # text-to-image data: the captions of every shard, in row order
        captions = [c for name in shards for c in _read_captions(root / name)]
        ds = CaptionedDataset(
            images, torch.cat(labels), meta["num_classes"], str(root), list(meta["class_names"]),
            vae=meta["vae"], scale_factor=meta["scale_factor"], shift_factor=meta["shift_factor"],
            image_resolution=meta["image_resolution"], captions=captions,
        )
        return _attach(ds, _views(meta, paths), lock)
    repa = {}
    if meta.get("repa_encoder"):
        repa = {"repa_encoder": meta["repa_encoder"], "repa_features": MappedLatents([root / n for n in shards], "repa_features")}
    ds = ImageDataset(
        images, torch.cat(labels), meta["num_classes"], str(root), list(meta["class_names"]),
        vae=meta["vae"], scale_factor=meta["scale_factor"], shift_factor=meta["shift_factor"],
        image_resolution=meta["image_resolution"], **repa,
    )
    return _attach(ds, _views(meta, paths), lock)


def _attach(ds: ImageDataset, views: LatentViews | None, lock) -> ImageDataset:
    ds.latent_views = views  # read by training (``--latent-sampling``); None for mean-only folders
    ds.folder_lock = lock  # the shared lock lives as long as the data set
    return ds


def captions_file(shard: Path) -> Path:
    return shard.with_name(shard.name.replace(".safetensors", ".captions.json"))


def _read_captions(shard: Path) -> list[str]:
    try:
        return list(read_json(captions_file(shard), limit=CAPTIONS_LIMIT, error=DataError, fix="re-run prepare-latents"))
    except (OSError, TypeError) as err:
        raise DataError(f"cannot read the captions of latent shard {shard} ({err}); re-run prepare-latents") from err
