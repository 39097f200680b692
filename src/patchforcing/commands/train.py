"""The ``train`` subcommand: every ``TrainConfig`` field is a flag (``--field-name value``).

    patchforcing train --out runs/digits
    patchforcing train --preset digits-sit --out runs/digits-sit --steps 2000
    patchforcing train --config my.toml --lr 3e-4 --dry-run
    torchrun --nproc_per_node 4 -m patchforcing train --preset imagenet-b2 --data latents/in256
"""

from __future__ import annotations

import argparse
import sys

from patchforcing.commands.plan_flags import HelpFormatter
from patchforcing.data import load_dataset
from patchforcing.errors import CheckpointError, DataError
from patchforcing.training import train
from patchforcing.training.config import (
    FIELD_TYPES,
    FIELDS,
    PRESETS,
    coerce,
    config_json,
    data_info,
    network_config,
    resolve_config,
    text_network_config,
)
from patchforcing.training.text import TextConditioner

# The --help headings of the TrainConfig fields, in order (every field in exactly one; ``preset`` is its own flag).
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "run": ("out", "seed"),
    "data": ("data", "resolution", "latent_sampling"),
    "model": ("model", "depth", "hidden_size", "num_heads", "patch_size", "class_dropout_prob", "text_encoder", "text_length",
              "text_dropout"),
    "objective": ("timesteps", "timestep_options", "ltg_loc", "uncertainty_weight"),
    "REPA": ("repa_encoder", "repa_weight", "repa_depth", "repa_projector_dim"),
    "optimizer": ("steps", "batch_size", "lr", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "ema_decay"),
    "runtime": ("device", "precision", "compile", "num_workers", "dist_timeout", "grad_accum"),
    "logging": ("log_every", "ckpt_every", "keep_checkpoints", "val_every", "val_size", "sample_every", "sample_count",
                "sample_steps", "sample_cfg_scale", "log"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``patchforcing`` console script."""
    p = subparsers.add_parser(
        "train",
        help="train a network (rerun the same command to resume)",
        description="Train a Patch Forcing network or its SiT baseline. Values come from --preset (default digits), "
        "then --config FILE (TOML or YAML), then these flags; [default: X] is the digits preset's value. Rerunning the "
        "same command resumes from the newest checkpoint in --out. The digits preset trains in about 4 minutes on a "
        "2-core CPU. Many processes: torchrun --nproc_per_node N -m patchforcing train ...",
        allow_abbrev=False,  # a typo like --step must be an error, not --steps
        formatter_class=HelpFormatter,
    )
    p.add_argument("--preset", default=argparse.SUPPRESS, metavar="NAME",
                   help=f"training preset: {', '.join(PRESETS)} [default: digits]")
    p.add_argument("--config", metavar="FILE", help="TOML or YAML file of option = value pairs (flags override it)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit; creates nothing")
    defaults = resolve_config("digits")  # shown in --help: the values of the default preset
    for heading, names in FLAG_GROUPS.items():
        group = p.add_argument_group(heading)
        for name in names:
            help_text = f"{FIELDS[name].metadata['help']} [default: {_shown(getattr(defaults, name))}]"
            flag = "--" + name.replace("_", "-")
            if FIELD_TYPES[name] is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(flag, type=_converter(name), default=argparse.SUPPRESS, metavar=name.split("_")[-1].upper(),
                                   help=help_text)
    p.set_defaults(func=run)


def _shown(value) -> str:
    """A default as ``--help`` prints it: ``none`` for None or an empty string, ``true``/``false`` for booleans."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _converter(name: str):
    def convert(text: str):
        try:
            return coerce(name, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name
    return convert


def run(args: argparse.Namespace) -> int:
    """Resolve the config and train (or print it with --dry-run)."""
    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    config = resolve_config(config_file=args.config, **overrides)
    if args.dry_run:
        print(describe(config), end="")
        return 0

    train(config)
    return 0


def describe(config) -> str:
    """config.json's text for ``config``; the network is resolved against the data set when it loads (a text
    network also against its text encoder, whose width is the network's text input)."""
    try:
        data = load_dataset(config.data, split="train", resolution=config.resolution)
        if config.is_text:
            network = text_network_config(config, data, TextConditioner.for_run(config, data).network_fields())
        else:
            network = network_config(config, data)
    except (DataError, CheckpointError) as err:
        print(f"note: the data set or the text encoder does not load here, so the network is not resolved ({err})", file=sys.stderr)
        return config_json(config, None, None)
    return config_json(config, network.to_dict(), data_info(data))


__all__ = ["describe", "register", "run"]
