"""``patchforcing sample``: sample a checkpoint with any sampler and save a PNG grid.

    patchforcing sample --checkpoint PF-XL-2.pt --sampler look-ahead --steps 32 \\
        --labels 207,360,387,974 --vae stabilityai/sd-vae-ft-ema --out grid.png --show-difficulty
    patchforcing sample --checkpoint runs/digits-t2i --prompt "a bold seven, upright" --prompt "the digit 2, thin" --out t2i.png
    patchforcing sample --checkpoint PF-XL-2.pt --sampler dual-loop --nfe 32 --n-inner 2 --cfg-scale 2 \\
        --guidance-interval sigma:0.34,1.02 --out grid.png    # DiT-XL/2's published interval, half-open in sigma
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from patchforcing.autoencoder import latent_decoder
from patchforcing.checkpoints import load_model
from patchforcing.commands.plan_flags import add_plan_flags, plan_from_args
from patchforcing.errors import ConfigError
from patchforcing.evaluation.conditions import ClassLabels, EncodedPrompts
from patchforcing.evaluation.evaluate import check_decoder
from patchforcing.evaluation.generate import generate_images
from patchforcing.guides import load_guide_model
from patchforcing.runs import atomic_write, ensure_writable_file
from patchforcing.runtime import check_seed, resolve_device
from patchforcing.text.prompts import prompt_condition, read_prompts
from patchforcing.viz import difficulty_panels, grid, labelled_panel_grid, panel_names, to_uint8

MAX_GRID_SAMPLES = 1024  # one PNG grid: 128 rows of 8; 1,024 samples of 256 px are 67 Mpx, about 200 MB in memory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample a checkpoint and save a PNG grid", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or a training run folder")
    add_plan_flags(p, budget="steps", default_sampler="euler-pf", default_steps=32)
    p.add_argument("--labels", default=None, help="comma-separated class labels, one per sample")
    p.add_argument("--prompt", action="append", default=None, help="text-to-image networks: a prompt (repeat for several)")
    p.add_argument("--prompts-file", default=None, help="text-to-image networks: a file with one prompt per line")
    p.add_argument("--text-encoder", default=None, help="text encoder name, repo id or folder (default: the one the network records)")
    p.add_argument("--num-samples", type=int, default=None, help=f"number of samples (default: one per label, else 16; at most {MAX_GRID_SAMPLES:,}: one grid)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--batch-size", type=int, default=64, help="samples per sampler call (sample i uses seed + i in any batch)")
    p.add_argument("--vae", default=None,
                   help="decode latents with this diffusers AutoencoderKL (folder or cached id; default: the run's recorded VAE)")
    p.add_argument("--vae-scale", type=float, default=None,
                   help="latent scale factor (default: the run's latent folder, else the VAE's config)")
    p.add_argument("--show-difficulty", action="store_true", help="add the difficulty and time maps beside each sample")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--out", required=True, help="output PNG path")
    p.set_defaults(func=run)


def parse_labels(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        labels = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ConfigError(f"--labels must be comma-separated integers, got {text!r}") from None
    huge = [label for label in labels if abs(label) >= 2**31]
    if huge:
        raise ConfigError(f"--labels value {huge[0]} is not a class; labels are class indices 0, 1, ... of the network")
    return labels


def run(args: argparse.Namespace) -> int:
    out, image_format = _check_flags(args)  # before any work: a bad flag or output never costs a sampling run
    plan = plan_from_args(args)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=device)
    cfg = model.config
    guide_model = load_guide_model(plan, model, device)  # the plan is checked against both once, in generate_images
    decoder = latent_decoder(args.checkpoint, vae=args.vae, scale_factor=args.vae_scale, device=device)
    check_decoder(model, decoder)
    if decoder is None and args.vae_scale is not None:
        raise ConfigError("--vae-scale scales latents for a VAE, but this network's samples are decoded by none: "
                          "drop --vae-scale, or pass --vae")
    if args.text_encoder is not None and not cfg.is_text:
        raise ConfigError("--text-encoder is for text-to-image networks; this one is class-conditional: drop it")

    condition, n_text = prompt_condition(model, read_prompts(args.prompt, args.prompts_file), args.num_samples, device, args.text_encoder)
    labels = parse_labels(args.labels)
    if condition is not None and labels is not None:
        raise ConfigError("--labels is for class-conditional networks; this text-to-image network takes --prompt")
    n = n_text if condition is not None else (args.num_samples if args.num_samples is not None else (len(labels) if labels else 16))
    if labels is not None and len(labels) not in (1, n):
        raise ConfigError(f"{len(labels)} labels for {n} samples: give one label per sample or a single label")
    check_grid_size(n)
    if labels is None and cfg.num_classes > 0:
        labels = np.random.default_rng(args.seed).integers(0, cfg.num_classes, size=n).tolist()
    conditions = (EncodedPrompts(condition) if condition is not None else
                  ClassLabels(torch.tensor(labels * (n if len(labels) == 1 else 1)) if labels is not None else
                              torch.full((n,), -1)))
    frames: list[dict] = []
    keep_frame = (lambda _, info: frames.append(_middle_frame(info["trajectory"]))) if args.show_difficulty else None
    _, x, _, _ = generate_images(model, plan, num_samples=n, seed=args.seed, conditions=conditions,
                                 guide_model=guide_model, batch_size=args.batch_size, progress=True,
                                 record_trajectory=args.show_difficulty, on_batch=keep_frame)
    images = _to_images(x.to(device), decoder, cfg)
    scale = max(1, 64 // images.shape[-1])
    if args.show_difficulty:
        frame = {k: None if frames[0][k] is None else torch.cat([f[k] for f in frames]) for k in ("difficulty", "t")}
        tiles = difficulty_panels(images, frame["difficulty"], frame["t"])
        step_t = float(frames[0]["t"].mean())
        picture = labelled_panel_grid(tiles, panel_names(frame["difficulty"], frame["t"]), min(n, 4), scale,
                                      note=f"maps of the outer step nearest t = 0.5 (mean patch time {step_t:.2f}); left: the final sample")
    else:
        picture = grid(to_uint8(images), ncols=min(n, 8), scale=scale)
    atomic_write(out, lambda tmp: picture.save(tmp, format=image_format))
    print(f"wrote {n} samples ({plan.describe()}) to {out}")
    return 0


def check_grid_size(n: int) -> None:
    """``sample`` holds every sample in memory and draws them into one picture: at most
    ``MAX_GRID_SAMPLES`` (a ``ConfigError`` naming the count and the fix above it)."""
    if n > MAX_GRID_SAMPLES:
        raise ConfigError(f"{n:,} samples are more than one grid picture holds (at most {MAX_GRID_SAMPLES:,}, all kept in "
                          "memory): lower --num-samples (or the labels or prompts), and draw more in further runs with "
                          "--seed (sample i uses seed + i)")


def _check_flags(args: argparse.Namespace) -> tuple[Path, str]:
    """Check the flags and the output path before the network is loaded; returns (out, image format)."""
    from PIL import Image

    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {args.num_samples}; leave it out for one "
                          "sample per label (16 without --labels)")
    if args.num_samples is not None:
        check_grid_size(args.num_samples)
    check_seed(args.seed)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        raise ConfigError(f"--out {str(out)!r}: give an image file name ending in .png (or .jpg, .webp)")
    return ensure_writable_file(out), image_format


def _to_images(x: torch.Tensor, decoder, cfg) -> torch.Tensor:
    if decoder is not None:
        return decoder(x)
    if cfg.in_channels not in (1, 3):
        print(f"note: {cfg.in_channels}-channel latents are shown without decoding (pass --vae to decode)")
    return x


def _middle_frame(frames: list[dict]) -> dict:
    """The outer-step frame nearest t = 0.5 that carries a difficulty map."""
    outer = [f for f in frames if not f["inner"] and f["difficulty"] is not None] or frames
    return min(outer, key=lambda f: abs(float(f["t"].mean()) - 0.5))
