"""Reading and writing networks.

Formats ``load_model`` understands:
    (a) the reference's released files: ``torch.save({"config": {"target", "params"}, "state_dict"})``
        with target ``patch_flow.models.pf_transformer.PatchForcingDiT``, ``patch_flow.models.dit.DiT``
        or ``patch_flow.models.pf_transformer_repa.REPAPatchForcingDiT`` (with its REPA projector);
    (b) the reference's Lightning training checkpoints (the ``ema_model.`` weights are taken);
    (c) this project's ``.safetensors`` files (config as JSON in the metadata, no pickle);
    (d) this project's training checkpoints (``.pt``, the EMA weights) and run folders (newest one);
    (e) pipeline folders written by ``patchforcing export``, also by a Hugging Face id already in the
        local cache (``patchforcing.hub.folder``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchforcing import runs
from patchforcing.errors import CheckpointError, ConfigError
from patchforcing.hub.folder import is_pipeline_folder, read_pipeline_network, resolve_source
from patchforcing.json_files import parse_json
from patchforcing.models import Kind, ModelConfig, PatchForcingTransformer, T2IConfig, build_model, config_from_dict, unwrap_model
from patchforcing.models.t2i import REFERENCE_TARGET as T2I_TARGET

FORMAT = "patchforcing-model"
TRAIN_FORMAT = "patchforcing-train"
REPA_TARGET = "patch_flow.models.pf_transformer_repa.REPAPatchForcingDiT"
# The reference REPA class's own parameters and defaults (docs/method.md §7.1) -> our config fields.
_REPA_PARAMS = {"z_dim": ("repa_dim", 768), "encoder_depth": ("repa_depth", 8), "projector_dim": ("repa_projector_dim", 2048)}
REFERENCE_TARGETS = {
    "patch_flow.models.pf_transformer.PatchForcingDiT": Kind.PATCH_FORCING,
    "patch_flow.models.dit.DiT": Kind.SIT,
    REPA_TARGET: Kind.PATCH_FORCING,
}
_REFERENCE_PARAMS = ("in_channels", "input_size", "depth", "hidden_size", "patch_size", "num_heads", "num_classes")
_REFERENCE_OPTIONAL = ("mlp_ratio", "class_dropout_prob", "learn_sigma")
_IGNORED_PARAMS = ("compile", "return_sigma", "predict_uncertainty", "out_channels")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


# --- writing -----------------------------------------------------------------------------------
def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` as ``.safetensors`` with its config as JSON metadata (loads without pickle)."""
    model = unwrap_model(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "version": "1", "config": json.dumps(model.config.to_dict())}
    return runs.atomic_save_safetensors(state, path, metadata=meta)


def network_digest(model: nn.Module) -> str:
    """SHA-256 of a network: its config (JSON) and every tensor of its ``state_dict`` (name, dtype,
    shape and bytes, in sorted name order). Equal digests mean the same weights, whatever the file.
    """
    model = unwrap_model(model)
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"\n{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --- reading -----------------------------------------------------------------------------------
def load_model(source: str | os.PathLike, map_location: str | torch.device = "cpu") -> PatchForcingTransformer:
    """Load a network from any format listed in this module's docstring; returns it in eval mode.

    Raises:
        CheckpointError: missing file, a file of another kind, or weights that do not fit the config.
    """
    if isinstance(source, str) and "://" in source:
        raise CheckpointError(
            f"{source!r} is a URL; checkpoints are not fetched from the network: download the file first "
            "(for example `curl -LO URL` or `hf download REPO FILE`) and pass its local path"
        )
    path = resolve_source(source)  # a Hugging Face id already in the local cache -> its folder
    if is_pipeline_folder(path):  # (e)
        config_dict, state = read_pipeline_network(path)
        return _build(_config_from_dict(config_dict, path), state, path).to(map_location).eval()
    if path.is_dir():
        path = runs.newest_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {str(path)!r}: check the path (a file, or a run folder with checkpoints/)")
    if not path.is_file():  # a device (/dev/zero), a FIFO: never read
        raise CheckpointError(f"{str(path)!r} is not a regular file; pass a checkpoint file, a run folder or an exported folder")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        config, state = _read_safetensors(path)
    else:
        config, state = _interpret(_torch_load(path), path)
    return _build(config, state, path).to(map_location).eval()


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON ``{``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not what we read
        if refused_code(err) is not None:
            raise CheckpointError(f"{str(path)!r} is refused: {load_error_text(err)}; export the network with "
                                  "patchforcing.save_model (.safetensors) or pass a checkpoint of plain tensors") from None
        raise CheckpointError(
            f"could not read {str(path)!r} as a PyTorch checkpoint ({load_error_text(err)}); {runs.fallback_hint(path)}"
        ) from None


def refused_code(err: Exception) -> str | None:
    """The Python object (``module.name``) a pickle wanted to import when ``torch.load(weights_only=True)``
    refused it, or None when ``err`` is another failure."""
    text = str(err)
    match = re.search(r"GLOBAL ([\w.]+)", text) if "Weights only load failed" in text else None
    return match.group(1) if match else None  # no GLOBAL: a truncated or foreign file, not a refusal


def load_error_text(err: Exception) -> str:
    """``Type: cause`` in one line. A pickle that imports code is named as refused, because
    loading it would run code (this project never loads a checkpoint with full pickle, so torch's
    advice to do so is dropped)."""
    refused = refused_code(err)
    if refused is not None:
        return (f"loading it would run code (its pickle imports {refused}, which is not a tensor, number or "
                "container), and checkpoints are only read without running code")
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {' '.join(lines[0].split())[:200]}" if lines else type(err).__name__


def _read_safetensors(path: Path) -> tuple[ModelConfig, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"could not read {str(path)!r} as safetensors ({load_error_text(err)}); {runs.fallback_hint(path)}") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file without a patchforcing config in its metadata; "
            "save networks with patchforcing.save_model"
        )
    config = parse_json(meta["config"], f"{str(path)!r}: the config in its metadata", error=CheckpointError,
                        fix=runs.fallback_hint(path))
    return _config_from_dict(config, path), state


def _interpret(obj: Any, path: Path) -> tuple[ModelConfig, dict]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") in (TRAIN_FORMAT, FORMAT):  # (d) our training checkpoint, or an exported network
        config_key, state_key = ("model_config", "ema") if obj["format"] == TRAIN_FORMAT else ("config", "state_dict")
        missing = [k for k in (config_key, state_key) if not isinstance(obj.get(k), dict)]
        if missing:
            raise CheckpointError(f"{str(path)!r} is a {obj['format']} file without {missing}; {runs.fallback_hint(path)}")
        return _config_from_dict(obj[config_key], path), obj[state_key]
    if "config" in obj and "state_dict" in obj:  # (a) released file
        return _reference_config(obj["config"], path), _strip(obj["state_dict"], "")
    hp = obj.get("hyper_parameters")
    if isinstance(hp, dict) and isinstance(hp.get("model"), dict) and "state_dict" in obj:  # (b) Lightning
        config = _reference_config(hp["model"], path)
        state = _strip(obj["state_dict"], "ema_model.")
        if not state:
            raise CheckpointError(f"{str(path)!r} is a training checkpoint without 'ema_model.' weights")
        return config, state
    keys = sorted(obj)[:8]
    raise CheckpointError(
        f"{str(path)!r} is not a checkpoint this project knows (top-level keys {keys}); expected a released "
        "file {'config', 'state_dict'}, a training checkpoint {'state_dict', 'hyper_parameters'}, "
        "or a file written by patchforcing"
    )


def _strip(state: dict, prefix: str) -> dict:
    """Keep keys under ``prefix`` (all when empty), without it and without wrapper prefixes."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        for wrapper in ("module.", "_orig_mod."):
            key = key.replace(wrapper, "")
        out[key] = value
    return out


def _reference_config(cfg: Any, path: Path) -> ModelConfig:
    if not isinstance(cfg, dict) or "target" not in cfg:
        raise CheckpointError(f"{str(path)!r}: model config has no 'target' (found {cfg!r:.200})")
    target, params = cfg["target"], dict(cfg.get("params") or {})
    if target == T2I_TARGET:  # the text-to-image network (docs/method.md §8), its own parameter names
        try:
            return T2IConfig.from_reference(params)
        except (ConfigError, TypeError, ValueError) as err:
            raise CheckpointError(f"{str(path)!r}: invalid text-to-image config ({err})") from None
    if target not in REFERENCE_TARGETS:
        raise CheckpointError(f"{str(path)!r}: unknown model target {target!r}; supported: {sorted([*REFERENCE_TARGETS, T2I_TARGET])}")
    kind = REFERENCE_TARGETS[target]
    repa = {}
    if target == REPA_TARGET:  # REPAPatchForcingDiT: hidden_size defaults to 1152; its own three params
        params.setdefault("hidden_size", 1152)
        repa = {ours: params.pop(theirs, default) for theirs, (ours, default) in _REPA_PARAMS.items()}
    if kind is Kind.PATCH_FORCING and params.get("predict_uncertainty", True) is False:
        raise CheckpointError(f"{str(path)!r}: a PatchForcingDiT without the uncertainty head is not supported")
    missing = [k for k in _REFERENCE_PARAMS if k not in params]
    if missing:
        raise CheckpointError(f"{str(path)!r}: model params lack {missing}")
    unknown = sorted(set(params) - set(_REFERENCE_PARAMS) - set(_REFERENCE_OPTIONAL) - set(_IGNORED_PARAMS))
    if unknown:
        raise CheckpointError(f"{str(path)!r}: model params {unknown} are not understood by this project")
    fields = {k: params[k] for k in _REFERENCE_PARAMS + _REFERENCE_OPTIONAL if k in params}
    return _config_from_dict({"kind": kind.value, **fields, **repa}, path)


def _config_from_dict(d: dict, path: Path) -> ModelConfig | T2IConfig:
    if not isinstance(d, dict):
        raise CheckpointError(f"{str(path)!r}: the model config is a {type(d).__name__}, not a JSON object; "
                              f"{runs.fallback_hint(path)}")
    try:
        return config_from_dict(d)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r}: invalid model config ({err}); {runs.fallback_hint(path)}") from None


def _build(config: ModelConfig | T2IConfig, state: dict, path: Path) -> nn.Module:
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{str(path)!r}: weights {not_tensors[:5]} are not tensors; {runs.fallback_hint(path)}")
    blocks = _blocks_in(state)
    with torch.device("meta"):  # shapes only: a config claiming a huge network costs no memory here
        expected = build_model(_with_depth(config, min(config.depth, max(blocks, 1)))).state_dict()
    depth = [] if blocks == config.depth else [f"the config's depth is {config.depth} but the weights hold {blocks} blocks"]
    _check_fit(expected, state, path, depth)
    model = build_model(config)
    dtype = next(iter(state.values())).dtype if state else torch.float32
    model = model.to(dtype if dtype.is_floating_point else torch.float32)  # keep float64 weights exact
    model.load_state_dict(state)
    return model


def _blocks_in(state: dict[str, torch.Tensor]) -> int:
    """The transformer blocks the weights hold: one more than the largest ``K`` of ``blocks.K.`` names (0: none)."""
    found = [int(m.group(1)) for m in map(_BLOCK.match, state) if m]
    return max(found) + 1 if found else 0


def _with_depth(config: ModelConfig | T2IConfig, depth: int) -> ModelConfig | T2IConfig:
    """``config`` with ``depth`` blocks (its REPA depth kept inside them): a config that claims more
    blocks than the file holds is built on the meta device with the file's count, so checking it
    costs what the file's network costs."""
    if depth == config.depth:
        return config
    changes = {"depth": depth}
    if getattr(config, "repa_depth", 0) > depth:
        changes["repa_depth"] = depth
    return dataclasses.replace(config, **changes)


def _check_fit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path, depth: list[str] = ()) -> None:
    """Refuse weights whose names or shapes differ from those the config builds (``expected``);
    ``depth`` holds a note when the config's depth differs from the blocks the weights hold."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if depth or missing or unexpected or wrong:
        parts = list(depth)
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:3]}")
        raise CheckpointError(f"{str(path)!r}: the weights do not fit the config ({'; '.join(parts)})")
