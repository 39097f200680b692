"""The ``prepare-latents`` subcommand: a thin wrapper of :func:`patchforcing.data.prepare_latents`.

    patchforcing prepare-latents --data photos --vae stabilityai/sd-vae-ft-mse --out latents/photos-256
    patchforcing prepare-latents --data ~/imagenet/train --vae ./sd-vae --out latents/in256 --device cuda
    torchrun --nproc_per_node 8 -m patchforcing prepare-latents --data ~/imagenet/train --vae ./sd-vae \
        --out latents/in256 --device cuda      # each GPU encodes 1/8 of the images; one folder
"""

from __future__ import annotations

import argparse

from patchforcing import runtime
from patchforcing.data.latents import read_meta
from patchforcing.data.prepare import prepare_latents
from patchforcing.runtime import DEFAULT_TIMEOUT_S


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare-latents`` to the ``patchforcing`` console script."""
    p = subparsers.add_parser(
        "prepare-latents",
        help="encode a data set with a VAE into a latent folder",
        description="Encode the train and held-out splits of an image data set with a diffusers AutoencoderKL. "
        "`--data DIR` of the written folder then trains in latent space; no VAE is needed to load it.",
    )
    p.add_argument("--data", required=True, help="built-in name (digits, photos, photos-labeled) or a folder of images")
    p.add_argument("--vae", required=True, help="local AutoencoderKL folder, or a Hugging Face id already in the local cache")
    p.add_argument("--out", required=True,
                   help="output folder; an existing latent folder is replaced once the new one is complete, "
                        "and the same command resumes after a kill")
    p.add_argument("--resolution", type=int, default=256, help="image side before encoding (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="images per VAE call (default 32)")
    p.add_argument("--scale-factor", type=float, default=None, help="latent scale (default: the VAE config's scaling_factor)")
    p.add_argument("--device", default="cpu", help="torch device for the VAE (default cpu; cuda under torchrun: one GPU per process)")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds a process waits for the slowest one under torchrun before the job fails")
    p.add_argument("--shard-size", type=int, default=4096, help="latents per safetensors shard (default 4096)")
    p.add_argument("--split", choices=("all", "train", "test"), default="all", help="which splits to encode (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the photos crop pool (default 0)")
    p.add_argument("--repa-encoder", default=None,
                   help="also store this REPA encoder's features of the images beside the latents "
                        "(digits-cnn, dinov2-b, dinov2:FOLDER) for `train --repa-encoder` on latents")
    p.add_argument("--hflip", action="store_true",
                   help="also encode every horizontally mirrored image; training picks one of the two per sample and step")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; errors are raised as DataError and printed by the dispatcher."""
    procs = runtime.setup(args.device, args.dist_timeout, command="prepare-latents")
    ok = False
    try:
        out = prepare_latents(
            args.data, args.vae, args.out, resolution=args.resolution, batch_size=args.batch_size,
            scale_factor=args.scale_factor, device=str(procs.device), shard_size=args.shard_size, split=args.split,
            seed=args.seed, repa_encoder=args.repa_encoder, hflip=args.hflip, procs=procs,
        )
        ok = True
    finally:
        runtime.teardown(procs, barrier=ok)
    if not procs.is_main:
        return 0

    meta = read_meta(out)
    counts = ", ".join(f"{n} {k}" for k, n in meta["num_images"].items())
    c, r = meta["channels"], meta["resolution"]
    print(f"wrote {counts} latents ({c}x{r}x{r}, scale {meta['scale_factor']:g}) to {out}")
    return 0
