"""The pipeline's ``image=``, ``mask_image=`` and ``strength=`` (diffusers' names, as its inpaint and
img2img pipelines take them): inpainting and per-region editing through ``pf.inpaint`` and ``pf.edit``
(``docs/inpainting.md``).

Inputs follow diffusers: a PIL image (or a list), or an array / tensor with values in [0, 1]
(``(H, W, C)``, ``(B, H, W, C)`` arrays; ``(C, H, W)``, ``(B, C, H, W)`` tensors). The mask is white
(>= 0.5) where to generate, as diffusers binarises it; ``strength`` is one number in [0, 1], or with
no mask a per-pixel map (a grey picture, an array or a tensor in [0, 1]) for per-region editing.
For a latent network the picture is encoded by the pipeline's VAE, the mask and the map are taken
to the latent grid (a latent pixel is generated if any of its pixels is), and after the decode the
kept pixels are put back from the input with the picture's own mask (a hard edge; see ``docs/inpainting.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor

from patchforcing.autoencoder import encode_latents, vae_scale_factor, vae_shift_factor
from patchforcing.errors import ConfigError, ShapeError
from patchforcing.inpainting import (
    MASK_THRESHOLD,
    PIXEL_RANGE,
    check_strength_value,
    default_mode,
    edit,
    inpaint,
    picture_to_image,
    recomposite,
    to_latent_grid,
)


@dataclass
class ImageRequest:
    """One call's input picture and what to do with it, checked and in the network's space."""

    pixels: Tensor  # (B, C, R, R) the picture in [-1, 1]
    x_in: Tensor  # (B, C, H, W) the input in the network's space
    mask: Tensor | None  # (B, 1, H, W) 1 = generate (inpainting), or None
    strength: float | Tensor  # a number, or (B, 1, H, W) (editing without a mask)
    keep: Tensor | None  # (B, 1, R, R) bool: pixels put back after a latent network's decode
    mode: str
    latent: bool

    def run(self, network, noise: Tensor, plan, **sample_kwargs: Any) -> tuple[Tensor, dict[str, Any]]:
        """``pf.inpaint`` or ``pf.edit`` on the pipeline's noise (``sample_kwargs`` as ``pf.sample`` takes them)."""
        common = dict(sample_kwargs, noise=noise, value_range=None if self.latent else PIXEL_RANGE)
        if self.mask is not None:
            return inpaint(network, self.x_in, self.mask, plan, mode=self.mode, strength=float(self.strength), **common)
        return edit(network, self.x_in, self.strength, plan, **common)

    def finish(self, images: Tensor) -> Tensor:
        """Decoded images (B, C, R, R): a latent network's kept pixels put back from the input."""
        return images if self.keep is None else recomposite(images, self.pixels, self.keep)


def image_request(pipe, image: Any, mask_image: Any, strength: Any, mode: str | None, batch: int) -> ImageRequest | None:
    """The checked request of ``pipe(image=..., mask_image=..., strength=...)`` for ``batch`` images (None without an image)."""
    if image is None:
        if mask_image is not None or strength is not None:
            raise ConfigError("mask_image= and strength= act on an input picture: pass image= too")
        if mode is not None:
            raise ConfigError("inpaint_mode= is for inpainting: pass image= and mask_image= too")
        return None
    if mask_image is None and strength is None:
        raise ConfigError("with image=, pass mask_image= (inpainting: white = generate) or strength= (editing: 1 = "
                          "regenerate from noise)")
    cfg = pipe.network.config
    latent = pipe.vae is not None
    channels = pipe.vae.config.in_channels if latent else cfg.in_channels
    pixels = _batch(_pictures(image, channels), batch, "image")  # (B, C, R, R) in [-1, 1]
    size = pixels.shape[-1]
    if not latent and tuple(pixels.shape[-2:]) != (cfg.input_size, cfg.input_size):
        raise ShapeError(f"image is {pixels.shape[-2]}x{size} but this network takes {cfg.input_size}x{cfg.input_size}: resize it")
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    if latent:
        scale = vae_scale_factor(pipe.vae, pipe.config.latent_scale)
        shift = vae_shift_factor(pipe.vae) if pipe.config.latent_shift is None else float(pipe.config.latent_shift)
        x_in = encode_latents(pipe.vae, pixels, scale, shift)
    else:
        x_in = pixels
    to_grid = (lambda m: to_latent_grid(m, cfg.input_size)) if latent else (lambda m: m)
    if mask_image is not None:
        if mode is not None and not isinstance(mode, str):
            raise ConfigError(f"inpaint_mode must be one of same, ahead, clean, got {mode!r}")
        mask_px = _batch(_maps(mask_image, "mask_image"), batch, "mask_image", pixels) >= MASK_THRESHOLD
        amount = 1.0 if strength is None else check_strength_value(strength)
        return ImageRequest(pixels, x_in.to(device, dtype), to_grid(mask_px.float()).to(device, dtype), amount,
                            ~mask_px if latent else None, mode or default_mode(cfg), latent)
    if mode is not None:
        raise ConfigError("inpaint_mode= is for inpainting: pass mask_image= too (or drop inpaint_mode for editing)")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        return ImageRequest(pixels, x_in.to(device, dtype), None, check_strength_value(strength), None, default_mode(cfg), latent)
    amount_px = _batch(_maps(strength, "strength"), batch, "strength", pixels)
    if float(amount_px.min()) < 0 or float(amount_px.max()) > 1:
        raise ShapeError("a strength map must lie in [0, 1] (0 keeps a pixel's patch, 1 regenerates it from noise)")
    return ImageRequest(pixels, x_in.to(device, dtype), None, to_grid(amount_px).to(device, dtype), (amount_px == 0) if latent else None,
                        default_mode(cfg), latent)


def _pictures(image: Any, channels: int) -> Tensor:
    """diffusers' image inputs -> (B, C, R, R) float32 in [-1, 1]."""
    if isinstance(image, PIL.Image.Image):
        return picture_to_image(image, channels)
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image):
        pictures = [picture_to_image(i, channels) for i in image]
        if len({tuple(p.shape) for p in pictures}) > 1:
            raise ShapeError("the images of a list must all have one size")
        return torch.cat(pictures)
    x = _unit_tensor(image, "image")
    if x.ndim == 3:
        x = x[None] if isinstance(image, Tensor) else x.permute(2, 0, 1)[None]  # tensor (C, H, W); array (H, W, C)
    elif x.ndim == 4 and not isinstance(image, Tensor):
        x = x.permute(0, 3, 1, 2)  # arrays are (B, H, W, C)
    if x.ndim != 4:
        raise ShapeError(f"image has shape {tuple(x.shape)}; pass (B, C, H, W) tensors or (B, H, W, C) arrays in [0, 1]")
    if x.shape[1] != channels:
        raise ShapeError(f"image has {x.shape[1]} channel(s) but this pipeline takes {channels}: convert it")
    return x * 2 - 1


def _maps(value: Any, name: str) -> Tensor:
    """A mask or strength input -> (B, 1, R, R) float32 in its own scale (pictures: grey level / 255)."""
    if isinstance(value, PIL.Image.Image):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, PIL.Image.Image) for v in value):
        arrays = [np.asarray(v.convert("L"), dtype=np.float32) / 255.0 for v in value]
        if len({a.shape for a in arrays}) > 1:
            raise ShapeError(f"the pictures of {name} must all have one size")
        return torch.from_numpy(np.stack(arrays))[:, None]
    m = _unit_tensor(value, name)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None] if isinstance(value, Tensor) else m.permute(2, 0, 1)[None]  # tensor (B, H, W); array (H, W, 1)
    elif m.ndim == 4 and not isinstance(value, Tensor):
        m = m.permute(0, 3, 1, 2)
    if m.ndim != 4 or m.shape[1] != 1:
        raise ShapeError(f"{name} has shape {tuple(value.shape)}; pass one channel: (B, 1, H, W), (H, W) or a grey picture")
    return m


def _unit_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise ShapeError(f"{name} must be a PIL image, a list of them, an array or a tensor, got {type(value).__name__}")
    x = value.detach().float().cpu()
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise ShapeError(f"{name} values lie in [{float(x.min()):.3g}, {float(x.max()):.3g}]; arrays and tensors take values "
                         "in [0, 1] (diffusers' convention; the pipeline's output_type 'pt' and 'np'): rescale it")
    return x


def _batch(x: Tensor, batch: int, name: str, like: Tensor | None = None) -> Tensor:
    """One input per image of the call (a single one is shared); maps must have the picture's size."""
    if x.shape[0] not in (1, batch):
        raise ShapeError(f"{x.shape[0]} {name} inputs for {batch} images: give one, or one per image")
    if like is not None and tuple(x.shape[-2:]) != tuple(like.shape[-2:]):
        raise ShapeError(f"{name} is {x.shape[-2]}x{x.shape[-1]} but image {like.shape[-2]}x{like.shape[-1]}: give "
                         f"a {name} of the image's size")
    return x.expand(batch, *x.shape[1:])
