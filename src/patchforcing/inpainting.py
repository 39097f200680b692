"""Inpainting, outpainting and per-region editing with per-patch times (``docs/inpainting.md``).

    import torch, patchforcing as pf
    plan = pf.SamplingPlan.from_nfe("look-ahead", 16)
    out = pf.inpaint(net, image, mask, plan, seeds=[0, 1], labels=torch.tensor([3, 3]), mode="same")
    out = pf.edit(net, image, strength_map, plan, seeds=[0, 1], labels=torch.tensor([3, 3]))

``image`` is in the network's space: pixels in [-1, 1] (B, C, H, W), or latents encoded by the run's
VAE (pass ``value_range=None``; the pipeline and the commands encode and re-composite for you).
``mask`` is per pixel, 1 = generate and 0 = keep, exactly binary (threshold a soft mask yourself:
``mask >= 0.5``, the threshold the commands and the pipeline apply to mask pictures). A patch is
generated if any of its pixels is; the others are known. A strength map is per pixel in [0, 1];
a patch takes the largest strength of its pixels and starts at ``t = 1 - strength``.

Both functions build a ``Region`` (``sampling/region.py``) and call ``sample``: every sampler of the
registry works, the NFE is the plan's, and the kept patches of the output equal the input exactly.
A mask that generates every patch is ``sample`` bit for bit; one that keeps every patch (or a
strength of 0 everywhere) is refused: there is nothing to generate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patchforcing.errors import ConfigError, ShapeError
from patchforcing.images import from_uint8
from patchforcing.sampling import SamplingPlan, noise_for_seeds, sample
from patchforcing.sampling.region import AHEAD_RATIO, MODES, KnownMode, Region
from patchforcing.sampling.registry import OPTION_ALIASES, REGISTRY, network_takes_per_patch_time
from patchforcing.streams import mask_generators

PIXEL_RANGE = (-1.0, 1.0)  # the data range of every pixel network of this package
RANGE_TOLERANCE = 1e-5  # values this far outside the range pass (float rounding of a conversion)
MASK_THRESHOLD = 0.5  # mask pictures: a pixel is generated where its grey level / 255 >= this (diffusers' rule)
# The default mode of Patch Forcing networks, chosen by the rule of docs/inpainting.md (written before the
# measurement: beat `same` on digits and photos at 2 of 3 budgets in most seeds): `clean` passed, with the lower
# FID ratio to `same` than `ahead`. A global-time network has `same` only.
DEFAULT_MODE = "clean"
GLOBAL_TIME_MODE = "same"


@torch.no_grad()
def inpaint(model: nn.Module, image: Tensor, mask: Tensor, plan: SamplingPlan | None = None, *,
            noise: Tensor | None = None, seeds: Sequence[int] | None = None, mode: str | KnownMode | None = None,
            context_ratio: float | None = None, strength: float = 1.0, value_range: tuple[float, float] | None = PIXEL_RANGE,
            generator: Any = None, **sample_kwargs: Any) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """Generate the masked part of ``image`` around the rest, with any sampler.

    Args:
        model: the network (``load_model``); a global-time (SiT) network takes ``mode="same"`` only.
        image: (B, C, H, W) or (C, H, W) in the network's space; one image is shared by every noise sample.
        mask: (B or 1, 1, H, W) or (H, W), exactly 0 or 1 per pixel: 1 = generate, 0 = keep.
        plan: the ``SamplingPlan`` (or ``sampler=``, ``steps=``/``nfe=`` ... as loose keywords, as ``sample``).
        noise: (B, C, H, W) the noise x0 of every image; or ``seeds``: one seed per image
            (``noise_for_seeds``, and the random masks' streams: independent of the batch).
        mode: the time the known patches enter each evaluation at: ``same`` (the current time,
            RePaint-style replacement), ``ahead`` (``min(rho t, 1)``) or ``clean`` (``t = 1``); None:
            ``default_mode`` (``clean`` for Patch Forcing networks, as measured; ``same`` for global-time ones).
        context_ratio: rho of ``ahead`` (default: the plan's ``context_ratio``, else 1.4).
        strength: the generated patches start at ``t = 1 - strength`` from the noised input (1: from noise).
        value_range: the data range the image must lie in (pixels: [-1, 1]); None for latents.
        generator: the random masks' generator(s) (default with ``seeds``: one stream per image).
        **sample_kwargs: ``labels``, ``condition``, ``guide_model``, ``return_info``, ``progress``,
            ``record_trajectory``, ``on_step_end`` and the loose plan keywords of ``sample``.

    Returns:
        (B, C, H, W) (or ``(x, info)`` with ``return_info=True``): the known patches equal ``image`` exactly.
    """
    plan, loose = _plan(plan, sample_kwargs)
    noise, generator = _noise(model, noise, seeds, generator)
    image = check_image(model, image, noise.shape[0], value_range).to(noise)
    cfg = model.config
    generate = check_mask(mask, image).to(noise.device)  # (B, 1, H, W) bool
    known = ~patch_any(generate, cfg.patch_size)  # (B, N)
    _refuse_nothing_to_do(~known, "the mask keeps every patch (0 everywhere, black in a mask picture), so there is "
                          "nothing to generate; mark the region to generate with 1 (white)")
    amount = check_strength_value(strength)
    if amount == 0:
        raise ConfigError("strength 0 keeps the image as it is; pass a strength in (0, 1] (1 = generate from noise)")
    start = None if amount == 1.0 else torch.full(known.shape, 1.0 - amount, dtype=noise.dtype, device=noise.device)
    mode = KnownMode.parse(default_mode(cfg) if mode is None else mode)
    region = Region(image, known, cfg.patch_size, start, mode, _ratio(plan, context_ratio))
    return sample(model, noise, plan, region=region, generator=generator, **loose)


@torch.no_grad()
def edit(model: nn.Module, image: Tensor, strength: float | Tensor, plan: SamplingPlan | None = None, *,
         noise: Tensor | None = None, seeds: Sequence[int] | None = None,
         value_range: tuple[float, float] | None = PIXEL_RANGE, generator: Any = None,
         **sample_kwargs: Any) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """SDEdit per region: every patch starts from the input noised to its own time ``1 - strength``
    and all patches are integrated to ``t = 1`` together, with per-patch times.

    Args:
        strength: a number in [0, 1], or a map (B or 1, 1, H, W) or (H, W) per pixel; a patch takes
            the largest strength of its pixels. 0 keeps a patch exactly, 1 generates it from noise.
            A global-time (SiT) network takes one strength per image (every patch has one time).
        (the rest as ``inpaint``)

    Returns:
        (B, C, H, W) (or ``(x, info)``): patches of strength 0 equal ``image`` exactly.
    """
    plan, loose = _plan(plan, sample_kwargs)
    noise, generator = _noise(model, noise, seeds, generator)
    image = check_image(model, image, noise.shape[0], value_range).to(noise)
    cfg = model.config
    if isinstance(strength, Tensor):
        amount = patch_max(check_strength_map(strength, image).to(noise), cfg.patch_size)  # (B, N)
    else:
        amount = torch.full((image.shape[0], cfg.num_patches), check_strength_value(strength), dtype=noise.dtype,
                            device=noise.device)
    _refuse_nothing_to_do(amount > 0, "the strength is 0 everywhere, which keeps the image as it is; raise it where "
                          "the image should change (1 = generate from noise)")
    known = torch.zeros_like(amount, dtype=torch.bool)
    start = None if bool((amount == 1).all()) else 1 - amount  # strength 1 everywhere: plain sampling
    return sample(model, noise, plan, region=Region(image, known, cfg.patch_size, start), generator=generator, **loose)


def default_mode(model_config) -> str:
    """The mode of the known patches when none is named: ``clean`` for Patch Forcing networks (the
    measured default, docs/inpainting.md), ``same`` for global-time networks (their only mode)."""
    return DEFAULT_MODE if network_takes_per_patch_time(model_config) else GLOBAL_TIME_MODE


# --- checks ---------------------------------------------------------------------------------------
def check_image(model: nn.Module, image: Any, batch: int, value_range: tuple[float, float] | None = PIXEL_RANGE) -> Tensor:
    """The input as (B, C, H, W) floating point, checked against the network and ``value_range``."""
    cfg = model.config
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise ShapeError(f"the image must be a floating-point tensor (B, C, H, W), got {_what(image)}; "
                         "pixels: uint8 p -> p / 127.5 - 1")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ShapeError(f"the image has shape {tuple(image.shape)}; pass (B, C, H, W) or (C, H, W)")
    if image.shape[1] != cfg.in_channels:
        raise ShapeError(f"the image has {image.shape[1]} channel(s) but this network takes {cfg.in_channels}"
                         f"{_channel_hint(cfg.in_channels)}: convert it")
    if tuple(image.shape[-2:]) != (cfg.input_size, cfg.input_size):
        raise ShapeError(f"the image is {image.shape[-2]}x{image.shape[-1]} but this network takes "
                         f"{cfg.input_size}x{cfg.input_size}: resize or crop it")
    if image.shape[0] not in (1, batch):
        raise ShapeError(f"{image.shape[0]} images for {batch} noise samples: give one image, or one per sample")
    if not bool(torch.isfinite(image).all()):
        raise ShapeError("the image holds NaN or infinite values; pass finite values")
    if value_range is not None:
        lo, hi = float(image.min()), float(image.max())
        if lo < value_range[0] - RANGE_TOLERANCE or hi > value_range[1] + RANGE_TOLERANCE:
            raise ShapeError(f"the image's values lie in [{lo:.4g}, {hi:.4g}] but this network's data lie in "
                             f"[{value_range[0]:g}, {value_range[1]:g}]: rescale it (uint8 p -> p / 127.5 - 1); "
                             "latents: pass value_range=None")
    return image.expand(batch, -1, -1, -1)


def check_mask(mask: Any, image: Tensor) -> Tensor:
    """The mask as (B, 1, H, W) bool (True = generate), exactly 0/1 and of the image's size."""
    m = _per_pixel(mask, image, "mask")
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ShapeError(f"the mask must be binary (1 = generate, 0 = keep), but it holds other values; threshold "
                             f"it, e.g. mask >= {MASK_THRESHOLD} (the threshold of mask pictures)")
        m = m == 1
    return m


def check_strength_map(strength: Tensor, image: Tensor) -> Tensor:
    """A strength map as (B, 1, H, W) floating point in [0, 1], of the image's size."""
    s = _per_pixel(strength, image, "strength map")
    s = s.to(image.dtype) if not s.is_floating_point() else s
    if not bool(torch.isfinite(s).all()) or float(s.min()) < 0 or float(s.max()) > 1:
        raise ShapeError("the strength map must lie in [0, 1] (0 keeps a pixel's patch, 1 generates it from noise); "
                         "a picture is read as grey level / 255")
    return s


def check_strength_value(strength: Any) -> float:
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(strength, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"strength must be a number in [0, 1] (0 keeps the image, 1 generates from noise), got {strength!r}")
    return value


def _per_pixel(value: Any, image: Tensor, name: str) -> Tensor:
    """A per-pixel map as (B, 1, H, W) on the image's device: from (H, W), (1, H, W), (1 or B, 1, H, W)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise ShapeError(f"the {name} must be a tensor (B, 1, H, W) or (H, W), got {_what(value)}")
    m = value
    while m.ndim < 4:
        m = m[None]
    b, _, h, w = image.shape
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[0] not in (1, b):
        raise ShapeError(f"the {name} has shape {tuple(value.shape)}; pass (H, W), (1, H, W) or (1 or {b}, 1, H, W)")
    if tuple(m.shape[-2:]) != (h, w):
        raise ShapeError(f"the {name} is {m.shape[-2]}x{m.shape[-1]} but the image {h}x{w}: give a {name} of the image's size")
    return m.to(image.device).expand(b, 1, h, w)


def _refuse_nothing_to_do(generated: Tensor, message: str) -> None:
    empty = (~generated.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        which = "the image" if generated.shape[0] == 1 else f"image{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))}"
        raise ConfigError(f"{which}: {message}")


def _channel_hint(channels: int) -> str:
    return {1: " (greyscale)", 3: " (RGB)"}.get(channels, " (latents: encode the image with the run's VAE)")


def _what(value: Any) -> str:
    return f"{type(value).__name__}" + (f" of dtype {value.dtype}" if isinstance(value, Tensor) else "")


# --- patches ----------------------------------------------------------------------------------------
def patch_any(pixels: Tensor, patch_size: int) -> Tensor:
    """(B, 1, H, W) bool -> (B, N) bool: a patch is True if any of its pixels is."""
    return F.max_pool2d(pixels.float(), patch_size, patch_size).flatten(1) > 0


def patch_max(values: Tensor, patch_size: int) -> Tensor:
    """(B, 1, H, W) -> (B, N): the largest value of every patch."""
    return F.max_pool2d(values, patch_size, patch_size).flatten(1)


# --- pieces of the two calls --------------------------------------------------------------------------
def _plan(plan: SamplingPlan | None, kwargs: dict[str, Any]) -> tuple[SamplingPlan, dict[str, Any]]:
    """The plan (from loose keywords when none is given) and the keywords left for ``sample``."""
    loose_names = {"sampler", "steps", "nfe", "cfg_scale", "guidance_interval", "schedule", *OPTION_ALIASES,
                   *(f.name for spec in REGISTRY.values() for f in dataclasses.fields(spec.options_type))}
    loose = {k: kwargs.pop(k) for k in list(kwargs) if k in loose_names}
    return SamplingPlan.from_keywords(plan, **loose), kwargs


def _noise(model: nn.Module, noise: Tensor | None, seeds: Sequence[int] | None, generator: Any) -> tuple[Tensor, Any]:
    """The fixed noise of every image (given, or one seed per image) and the random masks' generator(s)."""
    cfg = model.config
    weight = next(model.parameters())
    if (noise is None) == (seeds is None):
        raise ConfigError("pass noise=... (B, C, H, W) or seeds=[...] (one per image), one of them")
    if noise is None:
        seeds = [int(s) for s in seeds]
        noise = noise_for_seeds(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size), device=weight.device,
                                dtype=weight.dtype)
        generator = mask_generators(seeds) if generator is None else generator
    elif not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim != 4:
        raise ShapeError(f"noise must be a floating-point tensor (B, C, H, W), got {_what(noise)}")
    return noise.to(device=weight.device, dtype=weight.dtype), generator


def _ratio(plan: SamplingPlan, context_ratio: float | None) -> float:
    """rho of ``ahead``: given, else the plan's ``context_ratio``, else look-ahead's default."""
    if context_ratio is None:
        return float(getattr(plan.options, "context_ratio", AHEAD_RATIO))
    value = float(context_ratio)
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"context_ratio must be a number >= 1, got {context_ratio!r}")
    return value


# --- latent networks: the pixel mask on the latent grid, and the re-composite after the decode ------------
def to_latent_grid(values: Tensor, size: int) -> Tensor:
    """A per-pixel map (B, 1, R, R) of the picture -> (B, 1, size, size) on the latent grid: every latent
    pixel takes the largest value of the ``R / size`` square of pixels it encodes (a latent pixel is
    generated if any of its pixels is; a strength takes the largest)."""
    r = values.shape[-1]
    if r % size or values.shape[-2] != r:
        raise ShapeError(f"the picture is {values.shape[-2]}x{r} but the network's latents are {size}x{size}: give a square "
                         f"picture whose side is a multiple of {size} (the VAE's factor times {size})")
    return F.max_pool2d(values.float(), r // size, r // size).to(values.dtype)


def recomposite(decoded: Tensor, pixels: Tensor, keep: Tensor) -> Tensor:
    """The decoded picture (B, C, R, R) with the input's pixels put back where ``keep`` (B, 1, R, R) is True.

    A latent network's output keeps its known latents exactly, but the VAE's decoder mixes
    neighbouring latents, so the decoded kept region differs slightly from the input. The picture's
    own mask decides, pixel by pixel, with a hard edge (no feathering): kept pixels are the input's
    exactly; a seam can show where the generated region meets them (docs/inpainting.md).
    """
    return torch.where(keep.to(decoded.device), pixels.to(decoded), decoded)


# --- pictures (the commands, the pipeline and the app) ----------------------------------------------
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def picture_to_image(picture, channels: int) -> Tensor:
    """A PIL image -> (1, C, H, W) float32 in [-1, 1]; its channels must be the network's (grey: 1, colour: 3)."""
    grey = picture.mode in GREY_MODES
    if channels not in (1, 3):
        raise ShapeError(f"this network takes {channels}-channel latents; a picture is encoded by the run's VAE "
                         "(pass --vae FOLDER_OR_ID, or load the pipeline with its vae)")
    if grey != (channels == 1):
        have = "greyscale (1 channel)" if grey else f"colour ({picture.mode})"
        raise ShapeError(f"the image is {have} but this network takes {_channel_hint(channels).strip(' ()')} images "
                         f"with {channels} channel(s): convert it (PIL: image.convert({'L' if channels == 1 else 'RGB'!r}))")
    array = np.asarray(picture.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    array = array[..., None] if array.ndim == 2 else array
    return from_uint8(torch.from_numpy(array.copy()).permute(2, 0, 1)[None])


def picture_to_mask(picture) -> Tensor:
    """A mask picture -> (1, 1, H, W) float 0/1: generate where the grey level is at least ``MASK_THRESHOLD`` of white."""
    grey = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((grey >= MASK_THRESHOLD).astype(np.float32))[None, None]


def picture_to_strength(picture) -> Tensor:
    """A strength picture -> (1, 1, H, W) float in [0, 1]: the grey level / 255 (black keeps, white regenerates)."""
    grey = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(grey)[None, None]


__all__ = ["DEFAULT_MODE", "GLOBAL_TIME_MODE", "MASK_THRESHOLD", "MODES", "PIXEL_RANGE", "check_image", "check_mask", "check_strength_map",
           "default_mode", "edit", "inpaint", "patch_any", "patch_max", "picture_to_image", "picture_to_mask", "picture_to_strength",
           "recomposite", "to_latent_grid"]
