"""``prepare_latents``: encode an image data set with a VAE into a latent folder, resumably.

Layout (``meta.json`` lists every shard by its path in the folder)::

    out/meta.json                              format, VAE, scale factor, sizes, classes, shards
    out/run.lock                               the folder's lock (see below)
    out/gen-K/settings.json                    what generation K was prepared with
    out/gen-K/train.json, test.json            a split's entry, written when the split is finished
    out/gen-K/train/shard-00000.safetensors    (M, c, h, w) float32 tensors, labels (M,) int64

Every shard holds ``latents`` (the posterior mean) and ``latents_std`` (the posterior standard
deviation), both multiplied by the scale factor (the mean after subtracting ``shift_factor``);
training samples ``mean + std * eps`` (``train --latent-sampling``). That is REPA's scheme: REPA
stores the posterior's mean and std (unscaled) and draws ``(mean + std * eps) * scale`` at every
step, which is the same draw. LightningDiT stores something else: one posterior sample per image,
drawn once at encoding, and normalises it per channel with the data set's latent mean and std.
With ``hflip`` the mirrored images are encoded too (``latents_flip``, ``latents_flip_std``, and
``repa_features_flip`` with a REPA encoder), and training picks one of the two per sample and step.
Captioned data keep their captions beside every shard (``shard-XXXXX.captions.json``).

Safety and resumption (every file is written atomically, ``patchforcing.runs``; the generations in
``data/generations.py``):

* The folder is locked (``runtime.own_folder``) for the whole command; a training reading it
  holds a shared lock (``load_latent_dataset``), so a folder in use is never rewritten.
* A preparation writes a new generation folder ``gen-K`` and replaces ``meta.json`` only when
  every shard is written; only then are older generations deleted. A kill at any moment leaves
  the previous complete folder readable.
* Rerunning the same command after a kill resumes generation K: its finished splits and its
  finished full shards are checked (they must open and hold ``shard_size`` rows) and kept, the
  rest is encoded again. Batches are the same as in an uninterrupted run, so the files are too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from patchforcing.autoencoder import encode_posterior, load_vae
from patchforcing.data.base import BUILTIN_NAMES, SPLITS
from patchforcing.data.captions import is_captioned_folder
from patchforcing.data.datasets import load_dataset
from patchforcing.data.folders import folder_split_files, read_image, report_skipped
from patchforcing.data.generations import (
    check_out,
    finished_shards,
    finished_split,
    remove_old_generations,
    stage_folder,
)
from patchforcing.data.latents import LATENT_FORMAT, LATENT_VERSION, captions_file, is_latent_folder
from patchforcing.encoders import load_encoder
from patchforcing.errors import DataError, RunFolderError
from patchforcing.images import from_uint8
from patchforcing.runs import atomic_save_safetensors, atomic_write_text
from patchforcing.runtime import Processes, gather_to_main, own_folder, run_on_main


def _batches(data: str, split: str, resolution: int, batch_size: int, seed: int, part: tuple[int, int] = (0, 1)):
    """Describe a split and stream it as ``(images (B, C, R, R) in [-1, 1], labels (B,), captions)``
    (captions: a list of B strings for captioned data, else None).

    Folders of images are read file by file (never all in memory); built-in data sets are small.
    ``part = (rank, world_size)`` keeps the rank's contiguous block of the items (in order, so the
    ranks' shards concatenate to the single-process order).
    Returns ``(info, iterator)`` with info keys num_items, num_classes, class_names, channels.
    """
    path = Path(data).expanduser()
    captioned_folder = path.is_dir() and not is_latent_folder(path) and is_captioned_folder(path)  # read in memory below
    if data not in BUILTIN_NAMES and path.is_dir() and not is_latent_folder(path) and not captioned_folder:
        files, class_names = folder_split_files(path, split)  # a test split may be empty
        files = files[_block(len(files), part)]

        def stream():
            skipped = []
            for start in range(0, len(files), batch_size):
                chunk = [(read_image(p, resolution), label, p) for p, label in files[start : start + batch_size]]
                skipped += [p for img, _, p in chunk if img is None]
                ok = [(img, label) for img, label, _ in chunk if img is not None]
                if ok:
                    yield from_uint8(torch.stack([i for i, _ in ok])), torch.tensor([lab for _, lab in ok]), None
            report_skipped(path, skipped)

        return {"num_items": len(files), "num_classes": len(class_names), "class_names": class_names, "channels": 3}, stream()
    if is_latent_folder(path) and data not in BUILTIN_NAMES:
        raise DataError(
            f"{data} already holds latents; pass the image data (a folder of images or a built-in name) to prepare-latents"
        )
    ds = load_dataset(data, split=split, resolution=resolution, seed=seed)
    block = _block(len(ds), part)
    images, labels = ds.images[block], ds.labels[block]
    captions = getattr(ds, "captions", None)
    captions = captions[block] if captions else None
    info = {"num_items": len(images), "num_classes": ds.num_classes, "class_names": ds.class_names, "channels": ds.channels,
            "captioned": captions is not None}
    return info, ((images[i : i + batch_size], labels[i : i + batch_size], captions[i : i + batch_size] if captions else None)
                  for i in range(0, len(images), batch_size))


def _block(count: int, part: tuple[int, int]) -> slice:
    """Rank ``part[0]``'s contiguous share of ``count`` items split over ``part[1]`` ranks."""
    rank, world_size = part
    return slice(rank * count // world_size, (rank + 1) * count // world_size)


# --- encoding -------------------------------------------------------------------------------------
def _encode_rows(model, images: Tensor, labels: Tensor, scale: float, shift: float, encoder, hflip: bool) -> dict[str, Tensor]:
    """Every tensor a shard stores for these images, row by row."""
    rows = {"labels": labels.long()}
    rows["latents"], rows["latents_std"] = encode_posterior(model, images, scale, shift)
    if encoder is not None:
        rows["repa_features"] = encoder(images).cpu()  # (B, N', z) of the clean images
    if hflip:
        mirrored = torch.flip(images, dims=[-1])
        rows["latents_flip"], rows["latents_flip_std"] = encode_posterior(model, mirrored, scale, shift)
        if encoder is not None:
            rows["repa_features_flip"] = encoder(mirrored).cpu()
    return rows


def _encode_split(model, batches, info: dict, stage: Path, split: str, scale: float, shift: float, shard_size: int,
                  encoder=None, prefix: str = "", hflip: bool = False) -> dict:
    """Encode one split into ``stage/split/shard-{prefix}XXXXX.safetensors``; returns its meta entry.

    Full shards an interrupted run finished are kept; their batches are read but not encoded (a
    batch that straddles the last kept row is encoded whole, so every batch is as uninterrupted).
    """
    from tqdm import tqdm

    out = stage.parent
    (stage / split).mkdir(exist_ok=True)
    finished = finished_split(stage, split, prefix)
    if finished is not None:
        return finished
    shards = finished_shards(stage, split, prefix, shard_size)
    done_rows, pos, count = len(shards) * shard_size, 0, 0
    buf: dict[str, list[Tensor]] = {}
    buf_c: list[str] = []

    def flush(final: bool) -> None:
        nonlocal buf, buf_c
        while buf and (final or sum(len(x) for x in buf["labels"]) >= shard_size):
            rows = {k: torch.cat(v) for k, v in buf.items()}
            name = f"{stage.name}/{split}/shard-{prefix}{len(shards):05d}.safetensors"
            if buf_c:  # captions of the same rows, written before the shard is listed anywhere
                atomic_write_text(captions_file(out / name), json.dumps(buf_c[:shard_size], ensure_ascii=False))
                buf_c = buf_c[shard_size:]
            atomic_save_safetensors({k: v[:shard_size].contiguous() for k, v in rows.items()}, out / name)
            shards.append(name)
            buf = {k: [v[shard_size:]] for k, v in rows.items()} if len(rows["labels"]) > shard_size else {}

    with tqdm(total=info["num_items"], desc=f"encode {split}", unit="img", disable=None) as bar:
        for images, labels, captions in batches:
            n, skip = len(images), max(0, done_rows - pos)
            pos += n
            count += n
            bar.update(n)
            if skip >= n:  # rows of kept shards
                continue
            for key, value in _encode_rows(model, images, labels, scale, shift, encoder, hflip).items():
                buf.setdefault(key, []).append(value[skip:])
            buf_c.extend((captions or [])[skip:])
            flush(final=False)
    flush(final=True)
    entry = {"num_images": count, "shards": shards}
    atomic_write_text(stage / f"{split}{'-' + prefix.rstrip('-') if prefix else ''}.json", json.dumps(entry) + "\n")
    return entry


def prepare_latents(
    data: str,
    vae: str,
    out: str,
    *,
    resolution: int = 256,
    batch_size: int = 32,
    scale_factor: float | None = None,
    device: str = "cpu",
    shard_size: int = 4096,
    split: str = "all",
    seed: int = 0,
    repa_encoder: str | None = None,
    hflip: bool = False,
    procs: Processes | None = None,
) -> Path:
    """Encode a data set with a VAE into a latent folder that :func:`load_dataset` reads.

    Under ``torchrun`` (``procs`` from ``patchforcing.runtime.setup``) every process encodes a
    contiguous block of each split into its own shards (``shard-rRRR-KKKKK``) and rank 0 writes
    one ``meta.json`` that lists them in rank order: the same folder layout and image order as a
    single process, produced W times faster. Rerun the same command after a kill to resume.

    Args:
        data: a built-in name or a folder of images (see :func:`load_dataset`).
        vae: a local ``AutoencoderKL`` folder or a Hugging Face id already in the local cache.
        out: output folder (created; an existing latent folder is replaced once the new one is complete).
        resolution: image side the data is loaded at before encoding; must be divisible by
            the VAE's downsampling factor (8 for SD-VAE, giving 32x32 latents at 256).
        batch_size: images per VAE call.
        scale_factor: multiplies the posterior mean and std; default ``vae.config.scaling_factor``
            (0.18215 for SD-VAE).
        device: torch device for the VAE, e.g. "cpu" or "cuda".
        shard_size: latents per safetensors file.
        split: "all" (train and the held-out test split, the default), "train" or "test".
        seed: seed of the ``photos`` crop pool.
        repa_encoder: also store this REPA encoder's features of the images (``digits-cnn``,
            ``dinov2-b``, ``dinov2:FOLDER``; see ``patchforcing.encoders``) beside the latents.
        hflip: also encode every horizontally mirrored image (training picks one of the two).
        procs: this process among several (default: a single process on ``device``).

    Returns:
        The output folder.

    Raises:
        DataError: bad settings or data, or the folder is in use (a training reads it, or
            another preparation writes it).
    """
    if split not in (*SPLITS, "all"):
        raise DataError(f"unknown split {split!r}; use 'all', 'train' or 'test'")
    if batch_size < 1 or shard_size < 1:
        raise DataError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    model = load_vae(vae, device)
    cfg = model.config
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if resolution % factor:
        raise DataError(
            f"resolution {resolution} is not divisible by the VAE's downsampling factor {factor}; "
            f"pick e.g. {resolution // factor * factor or factor}"
        )
    scale = float(cfg.scaling_factor if scale_factor is None else scale_factor)
    shift = float(getattr(cfg, "shift_factor", None) or 0.0)
    encoder = None
    if repa_encoder is not None:
        encoder = load_encoder(repa_encoder, device, resolution)
    out_dir = Path(out).expanduser()
    procs = procs or Processes(device=torch.device(device))
    run_on_main(lambda: check_out(out_dir), procs)
    try:
        lock = own_folder(out_dir, procs)
    except RunFolderError:
        raise DataError(f"{out_dir} is in use: a training is reading it or another prepare-latents is writing it; "
                        "wait for it to end, or choose another --out") from None
    with lock:
        vae_name = str(Path(vae).expanduser().resolve()) if Path(vae).expanduser().exists() else vae
        settings = {"data": data, "vae": vae_name, "resolution": resolution, "batch_size": batch_size, "scale_factor": scale,
                    "shard_size": shard_size, "split": split, "seed": seed, "repa_encoder": repa_encoder, "hflip": hflip,
                    "world_size": procs.world_size}
        stage = run_on_main(lambda: stage_folder(out_dir, settings), procs)  # then every rank may write its shards
        meta_splits, info = {}, None
        prefix = f"r{procs.rank:03d}-" if procs.distributed else ""
        for name in SPLITS if split == "all" else (split,):
            info, batches = _batches(data, name, resolution, batch_size, seed, (procs.rank, procs.world_size))
            meta_splits[name] = _encode_split(model, batches, info, stage, name, scale, shift, shard_size, encoder, prefix, hflip)
        parts = gather_to_main(meta_splits, procs)
        meta = {"format": LATENT_FORMAT, "version": LATENT_VERSION, "vae": vae_name, "source": data,
                "scale_factor": scale, "shift_factor": shift, "channels": int(cfg.latent_channels),
                "resolution": resolution // factor, "image_resolution": resolution,
                "num_classes": info["num_classes"], "class_names": list(info["class_names"]),
                "repa_encoder": repa_encoder, "captions": bool(info.get("captioned", False)),
                "posterior": True, "hflip": hflip}
        return run_on_main(lambda: _write_meta(out_dir, stage, parts, split, data, meta), procs)


def _write_meta(out_dir: Path, stage: Path, parts: list[dict], split: str, data: str, meta: dict) -> Path:
    """Rank 0: merge the ranks' shard lists (rank order), write ``meta.json``, then drop older generations."""
    meta_splits = {name: {"num_images": sum(p[name]["num_images"] for p in parts),
                          "shards": [s for p in parts for s in p[name]["shards"]]} for name in parts[0]}
    if split != "test" and meta_splits["train"]["num_images"] == 0:
        raise DataError(f"no training image of {data} could be read; check the files")
    meta["num_images"] = {k: v["num_images"] for k, v in meta_splits.items()}
    meta["shards"] = {k: v["shards"] for k, v in meta_splits.items()}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    remove_old_generations(out_dir, keep=stage.name)
    return out_dir
