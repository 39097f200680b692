"""Exported pipeline folders without diffusers: recognise one, read its network, and find a
Hugging Face id in the local cache (nothing is fetched at run time).

An exported folder is read only as this project writes it: ``model_index.json`` must name
``PatchForcingPipeline`` and the two components ``patchforcing export`` writes (``COMPONENTS``);
nothing a folder names is imported, and the network is read from ``transformer/`` by this module
(its JSON through ``patchforcing.json_files``: regular files of at most 1 MB).

A folder written by ``patchforcing export`` (or ``PatchForcingPipeline.save_pretrained``)::

    model_index.json                           the pipeline: components and sampler settings
    transformer/config.json                    {"network_config": the network's config as JSON}
    transformer/diffusion_pytorch_model.safetensors   the weights, under "network."
    vae/ (latent networks)                     a diffusers AutoencoderKL
    README.md                                  the model card (export only)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from patchforcing.errors import CheckpointError
from patchforcing.json_files import read_json

PIPELINE_INDEX = "model_index.json"
TRANSFORMER = "transformer"
WEIGHTS = "diffusion_pytorch_model.safetensors"
CONFIG_KEY = "network_config"  # the key of our network config in transformer/config.json
PREFIX = "network."  # the wrapper module's weights sit under this prefix
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PIPELINE_CLASS = "PatchForcingPipeline"
COMPONENT_CLASS = "PatchForcingTransformerModel"
# The components an exported model_index.json may name, each with the specs save_pretrained writes.
COMPONENTS = {"transformer": (["patchforcing.hub.transformer", COMPONENT_CLASS],),
              "vae": ([None, None], ["diffusers", "AutoencoderKL"])}
_REEXPORT = "export the network again with `patchforcing export`"
# The JSON types of the pipeline settings save_pretrained writes (their values are checked by the pipeline).
_NUMBER, _MAYBE_NUMBER = ((int, float), "a number"), ((int, float, type(None)), "a number or null")
SETTING_TYPES = {"sampler": ((str,), "a sampler name"), "nfe": ((int,), "an integer"), "guidance_scale": _NUMBER,
                 "guidance_interval": ((list, type(None)), "a [lo, hi] list or null"), "sampler_options": ((dict,), "an object"),
                 "latent_scale": _MAYBE_NUMBER, "latent_shift": _MAYBE_NUMBER, "text_encoder": ((str, type(None)), "a name or null"),
                 "schedule": ((str,), "a schedule such as uniform")}


def is_pipeline_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with ``model_index.json`` (a file, or anything else in its place,
    which ``read_pipeline_index`` then refuses) and ``transformer/``."""
    path = Path(path)
    return (path / PIPELINE_INDEX).exists() and (path / TRANSFORMER).is_dir()


def read_pipeline_index(folder: str | os.PathLike) -> dict[str, Any]:
    """``model_index.json`` of an exported folder, checked to name only this project's pipeline and
    components: the pipeline settings, with ``"vae"`` True or False (whether ``vae/`` is a component).

    Raises:
        CheckpointError: the file is unreadable, not a JSON object, or names another pipeline class or
            component (a module, a function, a custom file): nothing it names is ever imported.
    """
    path = Path(folder) / PIPELINE_INDEX
    try:
        index = read_json(path, error=CheckpointError, fix=_REEXPORT)
    except OSError as err:
        raise CheckpointError(f"cannot read {str(path)!r} ({err.strerror}); {_REEXPORT}") from None
    if not isinstance(index, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(index).__name__}, not a JSON object; {_REEXPORT}")
    if index.get("_class_name") != PIPELINE_CLASS:
        raise CheckpointError(f"{str(path)!r} names the pipeline class {index.get('_class_name')!r:.80}, not {PIPELINE_CLASS!r}; "
                              f"an exported folder is read only as this project writes it: {_REEXPORT}")
    for key, value in index.items():
        if (key in COMPONENTS and value not in COMPONENTS[key]) or (key not in COMPONENTS and _is_component(value)):
            raise CheckpointError(
                f"{str(path)!r} names component {key!r} as {value!r:.80}; only the components `patchforcing export` writes "
                "are read (transformer: PatchForcingTransformerModel, vae: diffusers AutoencoderKL or none) and nothing a "
                f"folder names is imported: {_REEXPORT}")
    if "transformer" not in index:
        raise CheckpointError(f"{str(path)!r} names no transformer component; {_REEXPORT}")
    settings = {k: v for k, v in index.items() if not k.startswith("_") and k not in COMPONENTS}
    for key, value in settings.items():
        kinds, words = SETTING_TYPES.get(key, ((object,), ""))
        if not isinstance(value, kinds) or (isinstance(value, bool) and key in SETTING_TYPES):
            raise CheckpointError(f"{str(path)!r} holds {key} = {value!r:.60}, not {words}; {_REEXPORT}")
    return {**settings, "vae": index.get("vae", [None, None])[0] is not None}


def _is_component(value: Any) -> bool:
    """Whether a model_index.json value has the form of a component spec ``[library, class]``."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(v is None or isinstance(v, str) for v in value)


def read_pipeline_network(folder: str | os.PathLike) -> tuple[dict[str, Any], dict]:
    """The network config (as a dict) and its weights (prefix removed) of an exported folder, after
    ``read_pipeline_index`` has checked its ``model_index.json``.

    Raises:
        CheckpointError: the index names anything else, ``transformer/`` lacks its config or
            safetensors weights (a pickled ``.bin`` is never read), or they are unreadable.
    """
    read_pipeline_index(folder)
    sub = Path(folder) / TRANSFORMER
    config = _read_component_config(sub / "config.json")
    weights = sub / WEIGHTS
    if weights.exists() and not weights.is_file():  # a folder, a device, a FIFO in its place
        raise CheckpointError(f"{str(weights)!r} is not a regular file; {_REEXPORT}")
    if not weights.is_file():
        pickled = sorted(p.name for p in sub.glob("*.bin"))
        found = f"only {pickled}, pickles this project never reads (loading them could run code)" if pickled else "nothing"
        raise CheckpointError(f"{str(sub)!r} holds no {WEIGHTS} ({found}); {_REEXPORT} (it writes safetensors)")
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - SafetensorError of a truncated or foreign file, OSError
        cause = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(f"cannot read {str(weights)!r} ({type(err).__name__}: {cause}); the file is truncated or "
                              f"of another kind: {_REEXPORT}, or download it again") from None
    return config, {k.removeprefix(PREFIX): v for k, v in state.items()}


def _read_component_config(path: Path) -> dict[str, Any]:
    """``network_config`` of ``transformer/config.json`` (a regular JSON file of at most 1 MB)."""
    try:
        saved = read_json(path, error=CheckpointError, fix=_REEXPORT)
    except OSError as err:
        raise CheckpointError(f"cannot read {str(path)!r} ({err.strerror}); {_REEXPORT}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get(CONFIG_KEY), dict):
        raise CheckpointError(f"{str(path)!r} holds no {CONFIG_KEY!r} object; {_REEXPORT}")
    if saved.get("_class_name", COMPONENT_CLASS) != COMPONENT_CLASS:
        raise CheckpointError(f"{str(path)!r} names the class {saved['_class_name']!r:.80}, not {COMPONENT_CLASS!r}; {_REEXPORT}")
    return saved[CONFIG_KEY]


_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")


def pipeline_latents(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``{"vae", "scale_factor", "shift_factor"}`` of an exported folder with a ``vae/``, else None
    (the form of ``patchforcing.autoencoder.recorded_latents``)."""
    folder = Path(folder)
    if not is_pipeline_folder(folder):
        return None
    index = read_pipeline_index(folder)  # refuses an index that names anything else
    if not index["vae"]:
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
        CheckpointError: an id that is not in the cache (names ``hf download``).
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
            f"download the model once with `hf download {source}` (nothing is fetched at run time)"
        ) from None
