"""``patchforcing inpaint`` and ``patchforcing edit``: complete or edit a picture with any sampler.

    patchforcing inpaint --checkpoint runs/digits --image in.png --mask mask.png --mode ahead --nfe 16 --out out.png
    patchforcing edit    --checkpoint runs/digits --image in.png --strength-map map.png --out out.png
    patchforcing edit    --checkpoint runs/digits --image in.png --strength 0.5 --num-samples 8 --out grid.png

The mask picture: white (grey level >= 128 of 255) = generate, black = keep; a patch is generated if
any of its pixels is. The strength picture: grey level / 255 per pixel (black keeps, white
regenerates from noise); a patch takes its largest strength. The picture must have the network's
size and channels (grey or colour); for a latent network, the size its VAE encodes to the
network's latents (the run's recorded VAE, or ``--vae``), and the output is re-composited with the
mask after the decode. Sample i uses noise seed ``--seed + i``. ``--out`` gets the result at the
picture's size (a grid with ``--num-samples`` > 1); nothing is written when anything fails.
See docs/inpainting.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from patchforcing.autoencoder import encode_latents, latent_decoder
from patchforcing.checkpoints import load_model
from patchforcing.commands.plan_flags import add_plan_flags, plan_from_args
from patchforcing.errors import ConfigError, DataError, ShapeError
from patchforcing.evaluation.evaluate import check_decoder
from patchforcing.guides import load_guide_model
from patchforcing.images import save_grid, to_uint8_nhwc
from patchforcing.inpainting import (
    MASK_THRESHOLD,
    default_mode,
    edit,
    inpaint,
    picture_to_image,
    picture_to_mask,
    picture_to_strength,
    recomposite,
    to_latent_grid,
)
from patchforcing.runs import atomic_write, ensure_writable_file
from patchforcing.runtime import check_seed, resolve_device
from patchforcing.sampling import MODES
from patchforcing.text.prompts import prompt_condition

MAX_SAMPLES = 256


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inpaint", help="generate the masked part of a picture around the rest (inpainting, outpainting)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--mask", required=True, help=f"mask picture of the image's size: white (>= {MASK_THRESHOLD:g} of the grey "
                   "range) = generate, black = keep")
    p.add_argument("--mode", default=None, choices=MODES,
                   help="the time the kept patches enter every evaluation at: same (the current time; replacement), ahead "
                        "(min(rho t, 1), rho = --context-ratio), clean (t = 1); default clean for Patch Forcing networks "
                        "(measured in docs/inpainting.md), same for SiT networks (their only mode)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="the generated region starts from the picture noised to t = 1 - strength (default 1: from noise)")
    p.set_defaults(func=run_inpaint)

    e = sub.add_parser("edit", help="SDEdit per region: every patch restarts from the picture at its own time 1 - strength",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(e)
    one = e.add_mutually_exclusive_group(required=True)
    one.add_argument("--strength-map", help="strength picture of the image's size: grey level / 255 (black keeps, white regenerates)")
    one.add_argument("--strength", type=float, help="one strength in [0, 1] for the whole picture")
    e.set_defaults(func=run_edit)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or a training run folder")
    p.add_argument("--image", required=True, help="the picture (PNG, JPEG ...) of the network's size and channels")
    add_plan_flags(p, budget="steps", default_sampler="look-ahead", default_steps=16)
    p.add_argument("--label", type=int, default=None, help="class of the result (default: the null class, unconditional)")
    p.add_argument("--prompt", default=None, help="text-to-image networks: the prompt")
    p.add_argument("--num-samples", type=int, default=1, help=f"results, sample i with seed --seed + i (at most {MAX_SAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="sample i uses noise seed + i")
    p.add_argument("--vae", default=None, help="latent networks: the AutoencoderKL (folder or cached id; default: the run's recorded VAE)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--out", required=True, help="output picture (.png)")


def run_inpaint(args: argparse.Namespace) -> int:
    return _run(args, lambda: _read_picture(args.mask, "--mask", picture_to_mask))


def run_edit(args: argparse.Namespace) -> int:
    if args.strength_map is None:
        return _run(args, None)
    return _run(args, lambda: _read_picture(args.strength_map, "--strength-map", picture_to_strength))


def _run(args: argparse.Namespace, read_map) -> int:
    out = _check_flags(args)
    plan = plan_from_args(args)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=device)
    cfg = model.config
    guide_model = load_guide_model(plan, model, device)
    plan.check(model, guide_model)
    decoder = latent_decoder(args.checkpoint, vae=args.vae, device=device)
    check_decoder(model, decoder)
    latent = decoder is not None or cfg.in_channels not in (1, 3)
    if latent and decoder is None:
        raise ConfigError(f"this network works on {cfg.in_channels}-channel latents and no VAE is recorded with it: pass "
                          "--vae FOLDER_OR_ID (the AutoencoderKL its latents were encoded with)")
    channels = decoder.vae.config.in_channels if latent else cfg.in_channels
    pixels = _read_picture(args.image, "--image", lambda pic: picture_to_image(pic, channels))  # (1, C, R, R)
    given = read_map() if read_map is not None else None  # (1, 1, R, R) or None
    if given is not None and tuple(given.shape[-2:]) != tuple(pixels.shape[-2:]):
        flag = "--mask" if args.func is run_inpaint else "--strength-map"
        raise ShapeError(f"{flag} is {given.shape[-2]}x{given.shape[-1]} but --image {pixels.shape[-2]}x{pixels.shape[-1]}: "
                         "give a picture of the image's size")
    if not latent and tuple(pixels.shape[-2:]) != (cfg.input_size, cfg.input_size):
        raise ShapeError(f"--image is {pixels.shape[-2]}x{pixels.shape[-1]} but this network takes "
                         f"{cfg.input_size}x{cfg.input_size} pictures: resize or crop it")
    n = args.num_samples
    seeds = list(range(args.seed, args.seed + n))
    condition = _condition(args, model, n, device)
    weight = next(model.parameters())
    if latent:
        x_in = encode_latents(decoder.vae, pixels.to(device), decoder.scale_factor, decoder.shift_factor)
        region_map = None if given is None else to_latent_grid(given, cfg.input_size)
    else:
        x_in, region_map = pixels, given
    x_in = x_in.to(device=weight.device, dtype=weight.dtype)
    common = dict(seeds=seeds, guide_model=guide_model, progress=True, value_range=None if latent else (-1.0, 1.0),
                  return_info=True, **condition)
    if args.func is run_inpaint:
        x, info = inpaint(model, x_in, region_map.to(weight.device), plan, mode=args.mode, strength=args.strength, **common)
        keep = given < 0.5 if given is not None else None
    else:
        strength = args.strength if region_map is None else region_map.to(device=weight.device, dtype=weight.dtype)
        x, info = edit(model, x_in, strength, plan, **common)
        keep = (given == 0) if given is not None else None
    images = decoder(x) if latent else x.float()
    if latent and keep is not None:
        images = recomposite(images, pixels, keep)
    _write(out, images.cpu())
    what = f"mode {args.mode or default_mode(cfg)}" if args.func is run_inpaint else "per-patch strength"
    print(f"wrote {n} result{'s' if n > 1 else ''} ({plan.describe()}, {what}, {info['nfe']} NFE) to {out}")
    return 0


def _check_flags(args: argparse.Namespace) -> Path:
    """The flags and the output path, before any file is read or the network loaded."""
    from PIL import Image

    if not 1 <= args.num_samples <= MAX_SAMPLES:
        raise ConfigError(f"--num-samples must be from 1 to {MAX_SAMPLES}, got {args.num_samples}")
    check_seed(args.seed, count=args.num_samples)
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise ConfigError(f"--strength must lie in [0, 1] (0 keeps the picture, 1 generates from noise), got {args.strength:g}")
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give a file name, e.g. {out / 'out.png'}")
    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        raise ConfigError(f"--out {str(out)!r}: give an image file name ending in .png")
    return out


def _read_picture(path: str, flag: str, convert) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{flag} {path!r}: no such file; check the path")
    try:
        with Image.open(file) as picture:
            picture.load()
            return convert(picture)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{flag} {path!r} is not a picture PIL can read ({type(err).__name__}); pass a PNG or JPEG") from None


def _condition(args: argparse.Namespace, model, n: int, device) -> dict:
    """``labels=`` (the class, or the null class) or ``condition=`` (text networks) for n samples."""
    cfg = model.config
    if cfg.is_text:
        if args.label is not None:
            raise ConfigError("--label is for class-conditional networks; this text-to-image network takes --prompt")
        condition, _ = prompt_condition(model, [args.prompt] if args.prompt else [], n, device)
        return {"condition": condition}
    if args.prompt is not None:
        raise ConfigError("--prompt is for text-to-image networks; this one is class-conditional: use --label")
    if args.label is None:
        if cfg.num_classes > 0 and cfg.null_label is None:
            raise ConfigError("this network has no null class (trained without label dropout): pass --label N")
        return {"labels": None}
    if not 0 <= args.label < max(cfg.num_classes, 1):
        raise ConfigError(f"--label must lie in [0, {cfg.num_classes}), got {args.label}")
    return {"labels": torch.full((n,), args.label, dtype=torch.long, device=device)}


def _write(out: Path, images: torch.Tensor) -> None:
    """One result: the picture at its own size (kept pixels as the input's uint8); several: a grid."""
    from PIL import Image

    ensure_writable_file(out)
    if images.shape[0] > 1:
        save_grid(images, out, ncols=min(images.shape[0], 8))
        return
    array = to_uint8_nhwc(images)[0]
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic_write(out, lambda tmp: picture.save(tmp, format=Image.registered_extensions()[out.suffix.lower()]))
