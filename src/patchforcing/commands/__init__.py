"""The `patchforcing` console script: one subcommand per library entry point.

The command-line layer lives in this package (``commands/``); library packages never import it.
Each command module exposes ``register(subparsers)``; this file only collects them, so changing
one command never touches another. The sampling flags of every command come from one place,
``commands/plan_flags.py``, generated from the sampler registry.

    patchforcing sample   --checkpoint PATH --sampler look-ahead --steps 32 --out grid.png
    patchforcing inpaint  --checkpoint PATH --image in.png --mask mask.png --mode ahead --out out.png
    patchforcing edit     --checkpoint PATH --image in.png --strength-map map.png --out out.png
    patchforcing train    --out runs/digits --data digits --model PF-XS/2
    patchforcing prepare-latents --data PATH --vae PATH_OR_ID --out DIR
    patchforcing evaluate --checkpoint PATH --sampler euler-pf --nfe 32 --num-samples 1000 --out DIR
    patchforcing bench    --out DIR
    patchforcing demo     --out demo
    patchforcing export   --checkpoint runs/digits --out exported/digits
    patchforcing app      --checkpoint runs/digits
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from patchforcing import runtime
from patchforcing.errors import PatchForcingError, describe_memory_error, describe_os_error

# Each module defines register(subparsers) -> None.
_COMMAND_MODULES = (
    "patchforcing.commands.sample",
    "patchforcing.commands.inpaint",  # inpaint, edit
    "patchforcing.commands.train",
    "patchforcing.commands.prepare",
    "patchforcing.commands.evaluate",
    "patchforcing.commands.report",
    "patchforcing.commands.hub",  # export, app
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchforcing",
        description="Patch Forcing: train, sample and evaluate difficulty-aware diffusion transformers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except PatchForcingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk, a read-only folder, a path below a file: one line, not a traceback
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as err:  # out of memory: one line naming the flags that lower it
        message = describe_memory_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def console_main() -> None:
    """The ``patchforcing`` script and ``python -m patchforcing``: run ``main`` and exit with its code.

    After a command that ran under ``torchrun`` (a gloo or NCCL process group was started and torn
    down), the process leaves with ``os._exit`` once its output is flushed: PyTorch's C++ teardown at
    interpreter exit aborts now and then after a gloo group ("terminate called without an active
    exception", SIGABRT), which would fail a job whose results are already written. A command that
    raised never gets here (its traceback and exit code are Python's)."""
    code = main()
    if runtime.started_process_group():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
