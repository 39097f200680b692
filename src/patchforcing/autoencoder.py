"""Optional latent space: a diffusers ``AutoencoderKL`` (extra ``[vae]``), imported lazily.

The released ImageNet checkpoints work on SD-VAE latents (4x32x32 for 256 px, scale 0.18215,
decoder ``stabilityai/sd-vae-ft-ema``). Nothing is downloaded at run time unless the weights
are already in the local Hugging Face cache or a local folder is given.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from patchforcing.errors import ConfigError

SD_VAE_SCALE = 0.18215


def load_vae(path_or_id: str, device: str | torch.device = "cpu"):
    """Load an ``AutoencoderKL`` from a local folder or a hub id that is already cached."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ConfigError("decoding latents needs diffusers: pip install 'patchforcing[vae]'") from None
    local = Path(path_or_id).exists()
    try:
        vae = AutoencoderKL.from_pretrained(path_or_id, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - diffusers raises several kinds here
        where = "the folder" if local else "the local Hugging Face cache"
        raise ConfigError(
            f"could not load the autoencoder {path_or_id!r} from {where} ({type(err).__name__}); "
            "pass a local folder with config.json and weights (AutoencoderKL.save_pretrained), or download "
            f"it once on a machine with internet: huggingface-cli download {path_or_id}"
        ) from None
    return vae.to(device).eval()


def vae_scale_factor(vae, override: float | None = None) -> float:
    if override is not None:
        return float(override)
    return float(getattr(vae.config, "scaling_factor", SD_VAE_SCALE) or SD_VAE_SCALE)


@torch.no_grad()
def decode_latents(vae, latents: Tensor, scale_factor: float, batch_size: int = 16) -> Tensor:
    """(B, c, h, w) scaled latents -> (B, 3, H, W) images in [-1, 1]."""
    dtype = next(vae.parameters()).dtype
    out = []
    for chunk in latents.split(batch_size):
        out.append(vae.decode(chunk.to(dtype) / scale_factor).sample.float().clamp(-1, 1))
    return torch.cat(out)
