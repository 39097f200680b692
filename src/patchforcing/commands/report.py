"""The ``bench``, ``demo`` and ``study`` subcommands (thin wrappers of ``run_bench``, ``run_demo``, ``run_study``).

    patchforcing demo  --out demo                         # train, sample with every sampler, demo/index.html
    patchforcing bench --out bench                        # the equal-NFE comparison, bench/results.md
    patchforcing bench --out /tmp/b --tiny --seeds 1      # a seconds-long smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys

from patchforcing.commands.plan_flags import HelpFormatter, add_plan_flags, pop_sampling_settings
from patchforcing.errors import ConfigError
from patchforcing.report.bench import BenchSettings, run_bench
from patchforcing.report.common import parse_ints
from patchforcing.report.demo import DemoSettings, run_demo
from patchforcing.report.study import StudySettings, run_study

# Flags left unset keep the settings' defaults (or the --tiny ones), so every default lives in one place.
UNSET = argparse.SUPPRESS


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _ints(text: str) -> tuple[int, ...]:
    try:
        return parse_ints(text, "nfe")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(n for n in text.replace(" ", "").split(",") if n)


def _report_parser(subparsers: argparse._SubParsersAction, name: str, folder: str, func, **texts: str):
    """A report subcommand with the flags every report has: ``--out``, ``--tiny``, ``--eval-batch-size``."""
    p = subparsers.add_parser(name, allow_abbrev=False, formatter_class=HelpFormatter, **texts)
    p.add_argument("--out", default=name, help=f"{folder} folder (default: {name})")
    p.add_argument("--tiny", action="store_true", help="a seconds-long configuration (tests, smoke runs)")
    p.add_argument("--eval-batch-size", type=_positive, default=UNSET, help="images per sampling batch (default 250)")
    p.set_defaults(func=func)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench``, ``demo`` and ``study`` to the ``patchforcing`` console script."""
    b = _report_parser(
        subparsers, "bench", "bench", run_bench_command,
        help="equal-compute benchmark of networks and samplers on digits (about 50 minutes on a 2-core CPU)",
        description="Train the SiT baseline and Patch Forcing networks (ltg, uniform-patch, srm) with matched compute "
        "on digits, sample each with every sampler at equal NFE budgets over several seeds, and write DIR/results.md, "
        "DIR/results.json and DIR/fid_vs_nfe.png. Rerunning resumes: finished trainings and rows are reused.")
    b.add_argument("--steps", type=_positive, default=UNSET, help="training steps per network (default: the digits training preset's)")
    b.add_argument("--batch-size", type=_positive, default=UNSET, help="training batch (default: the digits preset's)")
    b.add_argument("--num-samples", type=_positive, default=UNSET, help="images per evaluation row (default 1000)")
    b.add_argument("--seeds", type=_positive, default=UNSET, help="evaluation seeds per row, for mean and std (default 3)")
    b.add_argument("--nfe", type=_ints, default=UNSET, help="equal-compute NFE budgets, comma separated (default 16,32)")
    b.add_argument("--depth", type=_positive, default=UNSET, help="network blocks (default: the digits preset's)")
    b.add_argument("--hidden-size", type=_positive, default=UNSET, help="network width (default: the digits preset's)")
    b.add_argument("--num-heads", type=_positive, default=UNSET, help="attention heads (default: the digits preset's)")
    b.add_argument("--patch-size", type=_positive, default=UNSET, help="patch size (default: the digits preset's)")
    b.add_argument("--train-seed", type=int, default=UNSET, help="training seed shared by all networks (default 0)")
    b.add_argument("--networks", type=_names, default=UNSET,
                   help="comma-separated subset of: sit-uniform, pf-ltg, pf-uniform-patch, pf-srm (default: all)")
    add_plan_flags(b, budget="none", sampler=False, guide=False)  # options apply to every sampler that has them

    d = _report_parser(
        subparsers, "demo", "report", run_demo_command,
        help="train the default network and write a visual report (about 5 minutes on a 2-core CPU)",
        description="Train the default Patch Forcing network on digits (the `digits` training preset), sample with every "
        "sampler at one equal NFE budget, and write DIR/index.html: sample grids, metrics, the training curve, the "
        "difficulty-head calibration and animations of adaptive sampling. Rerunning reuses the trained network.")
    d.add_argument("--steps", type=_positive, default=UNSET, help="training steps (default: the digits preset's)")
    d.add_argument("--num-samples", type=_positive, default=UNSET, help="images per sampler (default 1000)")
    d.add_argument("--nfe", type=_positive, default=UNSET, help="the NFE budget every sampler gets (default 32)")
    d.add_argument("--animation-samples", type=_positive, default=UNSET, help="digits per animation (default 6)")
    d.add_argument("--samplers", type=_names, default=UNSET, help="comma-separated samplers (default: the paper's six; any public sampler may be named)")
    add_plan_flags(d, budget="none", sampler=False, guide=False)

    s = _report_parser(
        subparsers, "study", "study", run_study_command,
        help="when does difficulty-aware ordering help? (docs/study.md; about 40 CPU minutes)",
        description="Train Patch Forcing networks on digits, on 32x32 photo crops and a wider one on digits; compare "
        "euler-pf, look-ahead, random-look-ahead, inverted-look-ahead and spread-look-ahead at equal NFE over seeds; measure "
        "on held-out data whether advancing the certain patches lowers the error of the others; draw which patches run "
        "ahead. Writes DIR/study.md, DIR/results.json and DIR/study/*.png. Rerunning resumes.")
    s.add_argument("--steps", type=_positive, default=UNSET, help="training steps of the digits network (default 3000)")
    s.add_argument("--num-samples", type=_positive, default=UNSET, help="images per row (default 500)")
    s.add_argument("--seeds", type=_positive, default=UNSET, help="evaluation seeds per row (default 3)")
    s.add_argument("--nfe", type=_ints, default=UNSET, help="equal-compute NFE budgets, comma separated (default 16)")
    s.add_argument("--networks", type=_names, default=UNSET, help="comma-separated subset of: digits, photos, digits-wide, digits-1000")


def _values(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("out", "tiny", "func", "command")}


def _command_line(name: str) -> str | None:
    """The command line to record in the report (None when called other than as ``patchforcing NAME``)."""
    if sys.argv[1:2] != [name]:
        return None
    return "patchforcing " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_bench_command(args: argparse.Namespace) -> int:
    sampling = pop_sampling_settings(args)
    settings = BenchSettings.create(tiny=args.tiny, sampling=sampling, **_values(args))
    run_bench(args.out, settings, command=_command_line("bench"))
    return 0


def run_study_command(args: argparse.Namespace) -> int:
    settings = StudySettings.create(tiny=args.tiny, **_values(args))
    run_study(args.out, settings, command=_command_line("study"))
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    sampling = pop_sampling_settings(args)
    run_demo(args.out, DemoSettings.create(tiny=args.tiny, sampling=sampling, **_values(args)))
    return 0
