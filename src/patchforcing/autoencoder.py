"""Optional latent space: a diffusers ``AutoencoderKL`` (extra ``[vae]``), imported lazily.

The released ImageNet checkpoints work on SD-VAE latents (4x32x32 for 256 px, scale 0.18215,
decoder ``stabilityai/sd-vae-ft-ema``). Nothing is downloaded at run time unless the weights
are already in the local Hugging Face cache or a local folder is given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from patchforcing.hub.folder import is_pipeline_folder, pipeline_latents
from patchforcing.runs import RunFolder

SD_VAE_SCALE = 0.18215


def load_vae(path_or_id: str, device: str | torch.device = "cpu"):
    """Load an ``AutoencoderKL`` from a local folder or an already cached hub id (never the network)."""
    from patchforcing.data.latents import load_vae as _load

    return _load(path_or_id, device=str(device))


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
                info = json.loads(config.read_text()).get("data_info") or {}
            except (OSError, ValueError, AttributeError):
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
