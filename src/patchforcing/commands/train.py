"""The ``train`` subcommand: every ``TrainConfig`` field is a flag (``--field-name value``).

    patchforcing train --out runs/digits
    patchforcing train --preset digits-sit --out runs/digits-sit --steps 2000
    patchforcing train --config my.toml --lr 3e-4 --dry-run
    torchrun --nproc_per_node 4 -m patchforcing train --preset imagenet-b2 --data latents/in256
"""

from __future__ import annotations

import argparse
import sys

from patchforcing.data import load_dataset
from patchforcing.errors import DataError
from patchforcing.training import train
from patchforcing.training.config import FIELD_TYPES, FIELDS, PRESETS, coerce, config_json, data_info, network_config, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``patchforcing`` console script."""
    p = subparsers.add_parser(
        "train",
        help="train a network (rerun the same command to resume)",
        description="Train a Patch Forcing network or its SiT baseline. Values come from --preset (default digits; "
        "its values are shown below), then --config FILE (TOML or YAML), then these flags. Rerunning the same command resumes "
        "from the newest checkpoint in --out. Many processes: torchrun --nproc_per_node N -m patchforcing train ...",
        allow_abbrev=False,  # a typo like --step must be an error, not --steps
    )
    p.add_argument("--preset", default=argparse.SUPPRESS, metavar="NAME", help=f"training preset: {', '.join(PRESETS)} (default: digits)")
    p.add_argument("--config", metavar="FILE", help="TOML or YAML file of option = value pairs (flags override it)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit; creates nothing")
    defaults = resolve_config("digits")  # shown in --help: the values of the default preset
    for name, f in FIELDS.items():
        if name == "preset":
            continue
        flag, help_text = "--" + name.replace("_", "-"), f"{f.metadata['help']} (digits: {getattr(defaults, name)})"
        if FIELD_TYPES[name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            p.add_argument(flag, type=_converter(name), default=argparse.SUPPRESS, metavar=name.split("_")[-1].upper(), help=help_text)
    p.set_defaults(func=run)


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
    """config.json's text for ``config``; the network is resolved against the data set when it loads."""
    try:
        data = load_dataset(config.data, split="train", resolution=config.resolution)
    except DataError as err:
        print(f"note: the data set does not load here, so the network is not resolved ({err})", file=sys.stderr)
        return config_json(config, None, None)
    return config_json(config, network_config(config, data).to_dict(), data_info(data))


__all__ = ["describe", "register", "run"]
