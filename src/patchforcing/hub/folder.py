"""Exported pipeline folders without diffusers: recognise one, read its network, and find a
Hugging Face id in the local cache (nothing is fetched at run time).

A folder written by ``patchforcing export`` (or ``PatchForcingPipeline.save_pretrained``)::

    model_index.json                           the pipeline: components and sampler settings
    transformer/config.json                    {"network_config": the network's config as JSON}
    transformer/diffusion_pytorch_model.safetensors   the weights, under "network."
    vae/ (latent networks)                     a diffusers AutoencoderKL
    README.md                                  the model card (export only)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from patchforcing.errors import CheckpointError

PIPELINE_INDEX = "model_index.json"
TRANSFORMER = "transformer"
WEIGHTS = "diffusion_pytorch_model.safetensors"
CONFIG_KEY = "network_config"  # the key of our network config in transformer/config.json
PREFIX = "network."  # the wrapper module's weights sit under this prefix
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_pipeline_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with ``model_index.json`` and ``transformer/``."""
    path = Path(path)
    return (path / PIPELINE_INDEX).is_file() and (path / TRANSFORMER).is_dir()


def read_pipeline_network(folder: str | os.PathLike) -> tuple[dict[str, Any], dict]:
    """The network config (as a dict) and its weights (prefix removed) of an exported folder.

    Raises:
        CheckpointError: ``transformer/`` lacks its config or weights, or they are unreadable.
    """
    sub = Path(folder) / TRANSFORMER
    try:
        config = json.loads((sub / "config.json").read_text())[CONFIG_KEY]
        state = load_file(str(sub / WEIGHTS))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{str(folder)!r} looks like an exported pipeline but its {TRANSFORMER}/ folder could not be read "
            f"({type(err).__name__}: {str(err)[:160]}); export it again with `patchforcing export`"
        ) from None
    return config, {k.removeprefix(PREFIX): v for k, v in state.items()}


_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")


def pipeline_latents(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``{"vae", "scale_factor", "shift_factor"}`` of an exported folder with a ``vae/``, else None
    (the form of ``patchforcing.autoencoder.recorded_latents``)."""
    folder = Path(folder)
    if not is_pipeline_folder(folder) or not (folder / "vae" / "config.json").is_file():
        return None
    try:
        index = json.loads((folder / PIPELINE_INDEX).read_text())
    except (OSError, ValueError):
        return None
    return {"vae": str(folder / "vae"), "scale_factor": index.get("latent_scale"), "shift_factor": index.get("latent_shift")}


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with nothing else; a local path that exists, or a missing checkpoint file
    (``runs/model.pt``), is never taken for an id."""
    return bool(_HUB_ID.match(source)) and not Path(source).exists() and Path(source).suffix not in _FILE_SUFFIXES


def resolve_source(source: str | os.PathLike) -> Path:
    """A local path as it is; a Hugging Face id (``owner/name``) that is not a local path: its
    snapshot folder in the local cache.

    Raises:
        CheckpointError: an id that is not in the cache (names ``huggingface-cli download``).
    """
    if not isinstance(source, str) or not looks_like_hub_id(source):
        return Path(source)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return Path(source)  # without huggingface_hub an id cannot be cached: the caller reports the missing path
    try:
        return Path(snapshot_download(source, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise CheckpointError(
            f"no checkpoint at {source!r} and no Hugging Face model {source!r} in the local cache: check the path, or "
            f"download the model once with `huggingface-cli download {source}` (nothing is fetched at run time)"
        ) from None
