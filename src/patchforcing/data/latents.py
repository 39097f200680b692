"""Latent data sets: encode images once with a VAE, then train on the stored latents.

Layout written by :func:`prepare_latents` (every file written to a temporary name and moved
into place, ``meta.json`` last, so a folder with ``meta.json`` is complete)::

    out/meta.json                        format, VAE, scale factor, sizes, classes, shards
    out/train/shard-00000.safetensors    latents (M, c, h, w) float32, labels (M,) int64
    out/test/shard-00000.safetensors     the held-out split of the source data

Captioned data (``digits-captions``, folders with captions) keep their captions: beside every
shard a ``shard-XXXXX.captions.json`` lists the shard's captions in row order, ``meta.json`` says
``"captions": true`` and the split loads as a ``CaptionedDataset``.

With ``repa_encoder`` every shard also holds ``repa_features`` (M, N', z) float32: the REPA
encoder's features of the same images, in the same order (``meta.json`` names the encoder), so
REPA training on latents never decodes.

Stored latents are ``(posterior mean - shift_factor) * scale_factor``; ``shift_factor`` is 0
for SD-VAE-style autoencoders (no shift in their config). Decode with
``vae.decode(latents / scale_factor + shift_factor)``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from patchforcing.data.datasets import (
    BUILTIN_NAMES,
    SPLITS,
    ImageDataset,
    check_split,
    load_dataset,
    folder_split_files,
    read_image,
    report_skipped,
)
from patchforcing.data.mapped import MappedLatents
from patchforcing.errors import DataError
from patchforcing.runs import atomic_save_safetensors, atomic_write_text, remove_stale_temporaries
from patchforcing.runtime import Processes, gather_to_main, run_on_main

LATENT_FORMAT, LATENT_VERSION = "patchforcing-latents", 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_latent_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a ``meta.json`` (written by :func:`prepare_latents`)."""
    return (Path(path) / "meta.json").is_file()


def read_meta(root: str | Path) -> dict:
    """Read and check ``meta.json`` of a latent folder."""
    path = Path(root) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
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
    return meta


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
        ``scale_factor``, ``shift_factor`` and ``image_resolution`` from ``meta.json``.
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
    latents, labels = [], []
    for name in shards:  # the labels (8 bytes per image) are always read; the latents only when not lazy
        try:
            with safe_open(str(root / name), framework="pt") as f:
                labels.append(f.get_tensor("labels"))
                if not lazy:
                    latents.append(f.get_tensor("latents"))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise DataError(f"cannot read latent shard {root / name} ({err}); re-run prepare-latents") from err
    images = MappedLatents([root / name for name in shards]) if lazy else torch.cat(latents)
    if meta.get("captions"):  # text-to-image data: the captions of every shard, in row order
        from patchforcing.data.captions import CaptionedDataset

        captions = [c for name in shards for c in _read_captions(root / name)]
        return CaptionedDataset(
            images, torch.cat(labels), meta["num_classes"], str(root), list(meta["class_names"]),
            vae=meta["vae"], scale_factor=meta["scale_factor"], shift_factor=meta["shift_factor"],
            image_resolution=meta["image_resolution"], captions=captions,
        )
    repa = {}
    if meta.get("repa_encoder"):
        repa = {"repa_encoder": meta["repa_encoder"], "repa_features": MappedLatents([root / n for n in shards], "repa_features")}
    return ImageDataset(
        images, torch.cat(labels), meta["num_classes"], str(root), list(meta["class_names"]),
        vae=meta["vae"], scale_factor=meta["scale_factor"], shift_factor=meta["shift_factor"],
        image_resolution=meta["image_resolution"], **repa,
    )


def _captions_file(shard: Path) -> Path:
    return shard.with_name(shard.name.replace(".safetensors", ".captions.json"))


def _read_captions(shard: Path) -> list[str]:
    try:
        return list(json.loads(_captions_file(shard).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the captions of latent shard {shard} ({err}); re-run prepare-latents") from err


def load_vae(vae: str, device: str = "cpu"):
    """Load a diffusers ``AutoencoderKL`` from a local folder or the local Hugging Face cache.

    Never touches the network: a hub id that is not cached raises a DataError naming the
    download command. A pipeline folder with the VAE in ``vae/`` also works.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise DataError("encoding latents needs diffusers; install it with `pip install patchforcing[vae]`") from err
    path = Path(vae).expanduser()
    if path.is_file():
        raise DataError(f"--vae {vae} is a file; pass the folder that holds config.json and the weights")
    if not path.exists() and not _HUB_ID.match(vae):
        raise DataError(
            f"no VAE folder at {path.resolve()}; pass a folder written by AutoencoderKL.save_pretrained "
            "or a Hugging Face id such as stabilityai/sd-vae-ft-mse"
        )
    source = str(path) if path.exists() else vae
    errors = []
    for subfolder in (None, "vae"):
        try:
            model = AutoencoderKL.from_pretrained(source, subfolder=subfolder, local_files_only=True)
            return model.to(device).eval().requires_grad_(False)
        except (OSError, ValueError) as err:
            errors.append(f"{err}".splitlines()[0] if str(err) else type(err).__name__)
    if path.exists():
        raise DataError(
            f"could not load an AutoencoderKL from {path} ({errors[0]}); pass a folder written by "
            "AutoencoderKL.save_pretrained (config.json + weights) or a pipeline folder with a vae/ subfolder"
        )
    raise DataError(
        f"VAE weights for {vae!r} not found offline (no local folder of that name, not in the Hugging Face cache); "
        f"download them once with `huggingface-cli download {vae}` on a machine with internet, or pass a local folder"
    )


def _batches(data: str, split: str, resolution: int, batch_size: int, seed: int, part: tuple[int, int] = (0, 1)):
    """Describe a split and stream it as ``(images (B, C, R, R) in [-1, 1], labels (B,), captions)``
    (captions: a list of B strings for captioned data, else None).

    Folders of images are read file by file (never all in memory); built-in data sets are small.
    ``part = (rank, world_size)`` keeps the rank's contiguous block of the items (in order, so the
    ranks' shards concatenate to the single-process order).
    Returns ``(info, iterator)`` with info keys num_items, num_classes, class_names, channels.
    """
    path = Path(data).expanduser()
    from patchforcing.data.captions import is_captioned_folder

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
                    yield torch.stack([i for i, _ in ok]).float() / 127.5 - 1, torch.tensor([lab for _, lab in ok]), None
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


def _prepare_out(out: Path) -> None:
    """Create ``out``; an existing latent folder is overwritten, any other non-empty folder refused."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not is_latent_folder(out):
            raise DataError(f"--out {out} exists, is not empty and is not a latent folder; choose a new --out folder")
        read_meta(out)  # refuse to overwrite a foreign meta.json
        remove_stale_temporaries(out)  # left by a killed earlier preparation of this folder
        (out / "meta.json").unlink()  # the folder is incomplete until the new meta.json lands
    out.mkdir(parents=True, exist_ok=True)


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
    procs: Processes | None = None,
) -> Path:
    """Encode a data set with a VAE into a latent folder that :func:`load_dataset` reads.

    Under ``torchrun`` (``procs`` from ``patchforcing.runtime.setup``) every process encodes a
    contiguous block of each split into its own shards (``shard-rRRR-KKKKK``) and rank 0 writes
    one ``meta.json`` that lists them in rank order: the same folder layout and image order as a
    single process, produced W times faster.

    Args:
        data: a built-in name or a folder of images (see :func:`load_dataset`).
        vae: a local ``AutoencoderKL`` folder or a Hugging Face id already in the local cache.
        out: output folder (created; an existing latent folder is overwritten).
        resolution: image side the data is loaded at before encoding; must be divisible by
            the VAE's downsampling factor (8 for SD-VAE, giving 32x32 latents at 256).
        batch_size: images per VAE call.
        scale_factor: multiplies the posterior mean; default ``vae.config.scaling_factor``
            (0.18215 for SD-VAE).
        device: torch device for the VAE, e.g. "cpu" or "cuda".
        shard_size: latents per safetensors file.
        split: "all" (train and the held-out test split, the default), "train" or "test".
        seed: seed of the ``photos`` crop pool.
        repa_encoder: also store this REPA encoder's features of the images (``digits-cnn``,
            ``dinov2-b``, ``dinov2:FOLDER``; see ``patchforcing.encoders``) beside the latents.
        procs: this process among several (default: a single process on ``device``).

    Returns:
        The output folder.
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
        from patchforcing.encoders import load_encoder

        encoder = load_encoder(repa_encoder, device, resolution)
    out_dir = Path(out).expanduser()
    procs = procs or Processes(device=torch.device(device))
    run_on_main(lambda: _prepare_out(out_dir), procs)  # then every rank may write its shards

    meta_splits, info = {}, None
    prefix = f"r{procs.rank:03d}-" if procs.distributed else ""
    for name in SPLITS if split == "all" else (split,):
        info, batches = _batches(data, name, resolution, batch_size, seed, (procs.rank, procs.world_size))
        meta_splits[name] = _encode_split(model, batches, info, out_dir, name, scale, shift, shard_size, encoder, prefix)
    parts = gather_to_main(meta_splits, procs)
    return run_on_main(lambda: _write_meta(out_dir, parts, split, data, vae, scale, shift, cfg, resolution // factor,
                                           resolution, info, repa_encoder), procs)


def _write_meta(out_dir: Path, parts: list[dict], split: str, data: str, vae: str, scale: float, shift: float, cfg,
                latent_size: int, resolution: int, info: dict, repa_encoder: str | None) -> Path:
    """Rank 0: merge the ranks' shard lists (rank order), remove stale shards, write ``meta.json`` last."""
    meta_splits = {name: {"num_images": sum(p[name]["num_images"] for p in parts),
                          "shards": [s for p in parts for s in p[name]["shards"]]} for name in parts[0]}
    for name, entry in meta_splits.items():
        for stale in (out_dir / name).glob("shard-*.safetensors"):  # left over from an earlier, larger run
            if f"{name}/{stale.name}" not in entry["shards"]:
                stale.unlink()
                _captions_file(stale).unlink(missing_ok=True)
    if split != "test" and meta_splits["train"]["num_images"] == 0:
        raise DataError(f"no training image of {data} could be read; check the files")
    vae_name = str(Path(vae).expanduser().resolve()) if Path(vae).expanduser().exists() else vae
    meta = {
        "format": LATENT_FORMAT, "version": LATENT_VERSION, "vae": vae_name, "source": data,
        "scale_factor": scale, "shift_factor": shift, "channels": int(cfg.latent_channels),
        "resolution": latent_size, "image_resolution": resolution,
        "num_classes": info["num_classes"], "class_names": list(info["class_names"]),
        "num_images": {k: v["num_images"] for k, v in meta_splits.items()},
        "shards": {k: v["shards"] for k, v in meta_splits.items()},
        "repa_encoder": repa_encoder,
        "captions": bool(info.get("captioned", False)),
    }
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    return out_dir


def encode_latents(model, images: Tensor, scale: float, shift: float = 0.0) -> Tensor:
    """``(posterior mean - shift) * scale`` of images (B, C, R, R) in [-1, 1] -> (B, c, R/f, R/f) float32 on CPU."""
    param = next(model.parameters())
    if images.shape[1] == 1 and model.config.in_channels == 3:
        images = images.expand(-1, 3, -1, -1)  # grayscale data through an RGB autoencoder
    if images.shape[1] != model.config.in_channels:
        raise DataError(f"the data has {images.shape[1]} channels but the VAE expects {model.config.in_channels}")
    with torch.inference_mode():
        mean = model.encode(images.to(param.device, param.dtype)).latent_dist.mean
    return ((mean.float() - shift) * scale).cpu()


def _encode_split(
    model, batches, info: dict, out: Path, split: str, scale: float, shift: float, shard_size: int, encoder=None,
    prefix: str = "",
) -> dict:
    """Encode one split into ``out/split/shard-{prefix}XXXXX.safetensors``; returns its meta entry."""
    from tqdm import tqdm

    folder = out / split
    folder.mkdir(exist_ok=True)
    shards, buf_x, buf_y, buf_f, buf_c, count = [], [], [], [], [], 0

    def flush(final: bool) -> None:
        nonlocal buf_x, buf_y, buf_f, buf_c
        while buf_x and (final or sum(len(x) for x in buf_x) >= shard_size):
            x, y = torch.cat(buf_x), torch.cat(buf_y)
            name = f"{split}/shard-{prefix}{len(shards):05d}.safetensors"
            tensors = {"latents": x[:shard_size].contiguous(), "labels": y[:shard_size].long().contiguous()}
            feats = torch.cat(buf_f) if buf_f else None
            if feats is not None:  # REPA targets of the same images, same order
                tensors["repa_features"] = feats[:shard_size].contiguous()
            if buf_c:  # captions of the same rows, written before the shard is listed anywhere
                text = json.dumps(buf_c[:shard_size], ensure_ascii=False)
                atomic_write_text(_captions_file(out / name), text)
                buf_c = buf_c[shard_size:]
            atomic_save_safetensors(tensors, out / name)
            shards.append(name)
            buf_x, buf_y = ([x[shard_size:]], [y[shard_size:]]) if len(x) > shard_size else ([], [])
            buf_f = [feats[shard_size:]] if feats is not None and len(feats) > shard_size else []

    with tqdm(total=info["num_items"], desc=f"encode {split}", unit="img", disable=None) as bar:
        for images, labels, captions in batches:
            buf_x.append(encode_latents(model, images, scale, shift))
            buf_y.append(labels)
            buf_c.extend(captions or [])
            if encoder is not None:
                buf_f.append(encoder(images).cpu())  # (B, N', z) of the clean images
            count += len(images)
            bar.update(len(images))
            flush(final=False)
    flush(final=True)
    return {"num_images": count, "shards": shards}
