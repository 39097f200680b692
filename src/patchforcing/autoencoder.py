"""Optional latent space: a diffusers ``AutoencoderKL`` (extra ``[vae]``), imported lazily.

The released ImageNet checkpoints work on SD-VAE latents (4x32x32 for 256 px, scale 0.18215,
decoder ``stabilityai/sd-vae-ft-ema``). Nothing is downloaded at run time unless the weights
are already in the local Hugging Face cache or a local folder is given.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
