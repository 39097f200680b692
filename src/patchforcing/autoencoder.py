"""Optional latent space: a diffusers ``AutoencoderKL`` (extra ``[vae]``), imported lazily.

Loading it (:func:`load_vae`), encoding images to stored latents (:func:`encode_latents`, as
``prepare-latents`` writes them) and decoding a network's samples (:func:`latent_decoder`).

The released ImageNet checkpoints work on SD-VAE latents (4x32x32 for 256 px, scale 0.18215,
decoder ``stabilityai/sd-vae-ft-ema``). Nothing is downloaded at run time unless the weights
are already in the local Hugging Face cache or a local folder is given.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from patchforcing.errors import DataError
from patchforcing.hub.folder import is_pipeline_folder, pipeline_latents
from patchforcing.json_files import read_json
from patchforcing.runs import RunFolder

SD_VAE_SCALE = 0.18215
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_vae(vae: str, device: str | torch.device = "cpu"):
    """Load a diffusers ``AutoencoderKL`` from a local folder or the local Hugging Face cache.

    Never touches the network: a hub id that is not cached raises a DataError naming the
    download command. A pipeline folder with the VAE in ``vae/`` also works.
    """
    try:
        from diffusers import AutoencoderKL  # diffusers: optional extra [vae]
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
    for config in (path / "config.json", path / "vae" / "config.json"):
        if config.exists():  # checked before diffusers opens it: a regular JSON file of at most 1 MB
            read_json(config, error=DataError, fix="pass a folder written by AutoencoderKL.save_pretrained")
    errors = []
    for subfolder in (None, "vae"):
        try:
            model, info = AutoencoderKL.from_pretrained(source, subfolder=subfolder, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError) as err:
            errors.append(f"{err}".splitlines()[0] if str(err) else type(err).__name__)
            continue
        _check_complete(info.get("missing_keys") or [], Path(source, subfolder or ""))
        return model.to(device).eval().requires_grad_(False)
    if path.exists():
        raise DataError(
            f"could not load an AutoencoderKL from {path} ({errors[0]}); pass a folder written by "
            "AutoencoderKL.save_pretrained (config.json + weights) or a pipeline folder with a vae/ subfolder"
        )
    raise DataError(
        f"VAE weights for {vae!r} not found offline (no local folder of that name, not in the Hugging Face cache); "
        f"download them once with `hf download {vae}` on a machine with internet, or pass a local folder"
    )


def _check_complete(missing: list[str], folder: Path) -> None:
    """Refuse a VAE whose weights file lacks tensors of its config's network (diffusers would leave
    them uninitialised: random weights, or no data at all on the meta device)."""
    if missing:
        raise DataError(f"the VAE weights in {folder} lack {len(missing)} of its network's tensors (for example "
                        f"{sorted(missing)[0]!r}): the weights file is incomplete or of another network; pass a folder "
                        "written by AutoencoderKL.save_pretrained")


def encode_posterior(model, images: Tensor, scale: float, shift: float = 0.0) -> tuple[Tensor, Tensor]:
    """``((mean - shift) * scale, std * scale)`` of the VAE posterior of images (B, C, R, R) in
    [-1, 1]: two (B, c, R/f, R/f) float32 tensors on the CPU."""
    param = next(model.parameters())
    if images.shape[1] == 1 and model.config.in_channels == 3:
        images = images.expand(-1, 3, -1, -1)  # grayscale data through an RGB autoencoder
    if images.shape[1] != model.config.in_channels:
        raise DataError(f"the data has {images.shape[1]} channels but the VAE expects {model.config.in_channels}")
    with torch.inference_mode():
        dist = model.encode(images.to(param.device, param.dtype)).latent_dist
    return ((dist.mean.float() - shift) * scale).cpu(), (dist.std.float() * scale).cpu()


def encode_latents(model, images: Tensor, scale: float, shift: float = 0.0) -> Tensor:
    """``(posterior mean - shift) * scale`` of images (B, C, R, R) in [-1, 1] -> (B, c, R/f, R/f) float32 on CPU."""
    return encode_posterior(model, images, scale, shift)[0]


def vae_scale_factor(vae, override: float | None = None) -> float:
    if override is not None:
        return float(override)
    return float(getattr(vae.config, "scaling_factor", None) or SD_VAE_SCALE)


def vae_shift_factor(vae) -> float:
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


@torch.no_grad()
def decode_latents(vae, latents: Tensor, scale_factor: float, shift_factor: float = 0.0, batch_size: int = 16) -> Tensor:
    """(B, c, h, w) stored latents ``(z - shift) * scale`` -> (B, 3, H, W) images in [-1, 1]."""
    dtype = next(vae.parameters()).dtype
    out = []
    for chunk in latents.split(batch_size):
        out.append(vae.decode(chunk.to(dtype) / scale_factor + shift_factor).sample.float().clamp(-1, 1))
    return torch.cat(out)


# --- which autoencoder decodes a network's samples ---------------------------------------------
LATENT_KEYS = ("vae", "scale_factor", "shift_factor")


def recorded_latents(checkpoint: str | os.PathLike) -> dict | None:
    """The VAE and latent scale/shift a run was trained with, from its ``config.json``.

    ``train`` on a latent folder copies ``vae``, ``scale_factor`` and ``shift_factor`` of the
    folder's ``meta.json`` into the run's ``config.json`` (``data_info``). ``checkpoint`` may be
    the run folder, a checkpoint in its ``checkpoints/`` or a network file in it.

    Returns:
        ``{"vae", "scale_factor", "shift_factor"}``, or None when no run folder records them
        (a released checkpoint, or a run on pixels).
    """
    path = Path(checkpoint)
    if path.is_dir() and is_pipeline_folder(path):  # an exported folder: its vae/ and saved scale
        return pipeline_latents(path)
    for folder in RunFolder.around(path):
        config = folder.config
        if config.is_file():
            try:
                info = read_json(config).get("data_info") or {}
            except (OSError, ValueError, AttributeError):  # ValueError: not JSON, not a regular file, over 1 MB
                return None
            if info.get("vae"):
                return {k: info.get(k) for k in LATENT_KEYS}
            return None
    return None


@dataclass(frozen=True)
class LatentDecoder:
    """Decodes ``(B, c, h, w)`` stored latents to ``(B, 3, H, W)`` images in [-1, 1]."""

    vae: Any
    vae_name: str
    scale_factor: float
    shift_factor: float
    batch_size: int = 16

    def __call__(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents, self.scale_factor, self.shift_factor, self.batch_size)

    def describe(self) -> dict[str, Any]:
        return {"vae": self.vae_name, "scale_factor": self.scale_factor, "shift_factor": self.shift_factor}


def latent_decoder(checkpoint: str | os.PathLike, *, vae: str | None = None, scale_factor: float | None = None,
                   device: str | torch.device = "cpu") -> LatentDecoder | None:
    """The decoder for a network's samples: ``vae`` (else the run's recorded VAE) with the run's
    recorded scale and shift (else ``scale_factor``, else the VAE's config).

    Args:
        checkpoint: what ``load_model`` was given (a run folder records its latent folder's VAE).
        vae: a local ``AutoencoderKL`` folder or a cached hub id; overrides the recorded one.
        scale_factor: overrides the recorded (or the VAE's) latent scale.
        device: where the VAE runs.

    Returns:
        None when neither ``vae`` is given nor a VAE is recorded (the samples are pixels).
    """
    recorded = recorded_latents(checkpoint) or {}
    name = vae or recorded.get("vae")
    if not name:
        return None
    model = load_vae(name, device)
    scale = scale_factor if scale_factor is not None else recorded.get("scale_factor")
    shift = recorded.get("shift_factor")
    return LatentDecoder(model, str(name), vae_scale_factor(model, scale),
                         float(shift) if shift is not None else vae_shift_factor(model))
