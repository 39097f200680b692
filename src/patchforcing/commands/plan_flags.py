"""Command-line flags of a sampling plan, generated from the sampler registry.

``add_plan_flags(parser)`` adds, for ``sample``, ``evaluate``, ``bench`` and ``demo``:

    --sampler NAME                 one of the public samplers (``--help`` lists each with its description)
    --steps S / --nfe N            outer steps, or an NFE budget (the most steps that fit it)
    --p-frac, --n-inner, ...       one flag per field of the samplers' options (help, default, range)
    --schedule uniform|shift:ALPHA|edm:RHO    the time grid of the outer steps (default uniform, the paper's)
    --cfg-scale W                  guidance weight (1 = off)
    --guidance-interval LO,HI      guide only the outer steps with LO <= t_k <= HI (t = 0 noise, t = 1 data)
    --guidance-interval sigma:LO,HI    the published form, sigma in (LO, HI], i.e. t in [1/(1+HI), 1/(1+LO))
    --guide-checkpoint PATH        autoguidance with a weaker network: a checkpoint file, a run folder,
                                   or RUN_FOLDER@step=N (--cfg-scale is then its weight)

A new sampler or option in ``sampling/registry.py`` needs no edit here. ``plan_from_args`` turns the
parsed flags into one checked ``SamplingPlan``; ``plan_to_argv`` writes a plan back as flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import textwrap
from typing import Any

from patchforcing.errors import ConfigError
from patchforcing.sampling import SAMPLERS, SCHEDULE_HELP, Guidance, SamplingPlan, get_sampler
from patchforcing.sampling.registry import OPTION_ALIASES, describe_range
from patchforcing.sampling.schedules import UNIFORM, canonical_schedule


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` of every command: prose paragraphs of the description and epilog are wrapped to the
    terminal, paragraphs with indented lines (command examples, the sampler table) are kept line for
    line, and the reST markup of docstrings (````x````) is shown as plain ``x``."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in re.split(r"\n\s*\n", plain_text(text).strip("\n")):
            lines = para.splitlines()
            if any(line[:1].isspace() for line in lines[1:]) or para[:1].isspace():
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(line.strip() for line in lines), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str:
        return plain_text(action.help or "")


def plain_text(text: str) -> str:
    """Docstring markup for a terminal: ````x```` -> ``x``."""
    return re.sub(r"``([^`]+)``", r"\1", text)


def option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every option field of the public samplers: name -> (field, the samplers that have it)."""
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name, spec in SAMPLERS.items():
        for f in dataclasses.fields(spec.options_type):
            out.setdefault(f.name, (f, []))[1].append(name)
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def sampler_table() -> str:
    """One line per public sampler with its description (the ``--help`` epilog)."""
    width = max(map(len, SAMPLERS))
    return "samplers (--sampler):\n" + "\n".join(f"  {n:<{width}}  {s.description}" for n, s in SAMPLERS.items())


def add_plan_flags(parser: argparse.ArgumentParser, *, budget: str = "steps", default_sampler: str | None = None,
                   default_steps: int | None = None, sampler: bool = True, guide: bool = True) -> None:
    """Add the plan's flags to ``parser``.

    Args:
        budget: ``"steps"`` (``--steps`` or ``--nfe``, one of them), ``"nfe"`` (``--nfe`` only,
            required) or ``"none"`` (the command sets the budget itself).
        default_sampler: the ``--sampler`` default (None: required).
        default_steps: ``--steps``' default when neither ``--steps`` nor ``--nfe`` is given.
        sampler: add ``--sampler`` (False: the command samples with several; the options apply
            to each sampler that has them).
        guide: add ``--guide-checkpoint`` (False: the command trains its own networks).
    """
    g = parser.add_argument_group("sampling plan")
    if sampler:
        # no argparse choices: an unknown name gets the one-line error of the registry, naming the choices
        g.add_argument("--sampler", default=default_sampler, required=default_sampler is None, metavar="NAME",
                       help=f"the sampler: {', '.join(SAMPLERS)} (each described below)"
                            + (f"; default {default_sampler}" if default_sampler else ""))
    parser.epilog = "\n\n".join(filter(None, (parser.epilog, sampler_table())))
    parser.formatter_class = HelpFormatter  # keeps the table's lines, wraps the prose
    if budget == "steps":
        one = g.add_mutually_exclusive_group()
        one.add_argument("--steps", type=int, default=None,
                         help=f"outer steps S (NFE depends on the sampler; default {default_steps})")
        one.add_argument("--nfe", type=int, default=None, help="an NFE budget instead: the most outer steps that fit it")
        parser.set_defaults(default_steps=default_steps)
    elif budget == "nfe":
        g.add_argument("--nfe", type=int, required=True,
                       help="network evaluations per image; the sampler takes the most steps that fit")
    for name, (f, owners) in option_fields().items():
        meta = f.metadata
        g.add_argument(flag(name), dest=name, type=int if meta["integer"] else float, default=None,
                       help=f"{meta['help']} ({', '.join(owners)}; default {f.default}, {describe_range(meta)})")
    for old, new in OPTION_ALIASES.items():  # old spellings still parse (hidden)
        g.add_argument(flag(old), dest=new, type=float, default=None, help=argparse.SUPPRESS)
    add_schedule_flag(g)
    g.add_argument("--cfg-scale", type=float, default=1.0, help="guidance weight w (1 = off)")
    g.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only the outer steps whose grid time t_k lies in [LO, HI] (t=0 noise, t=1 data), or "
                        "sigma:LO,HI for the published form sigma in (LO, HI], i.e. t in [1/(1+HI), 1/(1+LO)); "
                        "the other steps make one conditional call")
    if guide:
        g.add_argument("--guide-checkpoint", default=None, metavar="PATH",
                       help="autoguidance: a weaker network of the same kind and shape replaces the unconditional "
                            "branch (a checkpoint file, a run folder, or RUN_FOLDER@step=N); --cfg-scale is its weight")


def add_schedule_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: str | None = UNIFORM,
                      default_help: str = "uniform, t_k = k / S (the paper's)") -> None:
    """``--schedule GRID``, the time grid of the outer steps: one flag and help for ``add_plan_flags``
    (read by ``schedule_from_args``) and ``patchforcing export`` (the pipeline's saved default)."""
    parser.add_argument("--schedule", default=default, metavar="GRID",
                        help=f"time grid of the outer steps: {SCHEDULE_HELP}; a shift > 1 and a small RHO put more steps "
                             f"near the noise (docs/method.md §5.10); default {default_help}")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The option flags given on the command line (unset ones left to the sampler's defaults)."""
    return {name: getattr(args, name) for name in option_fields() if getattr(args, name, None) is not None}


def guidance_from_args(args: argparse.Namespace) -> Guidance:
    """``--cfg-scale``, ``--guidance-interval`` and ``--guide-checkpoint`` (the last two need a scale != 1)."""
    if not math.isfinite(args.cfg_scale):
        raise ConfigError(f"--cfg-scale must be a finite number, got {args.cfg_scale}; 1 turns guidance off")
    guide = getattr(args, "guide_checkpoint", None)
    if args.cfg_scale == 1.0 and (args.guidance_interval is not None or guide is not None):
        raise ConfigError(f"{'--guidance-interval' if args.guidance_interval is not None else '--guide-checkpoint'} "
                          "does nothing at --cfg-scale 1 (no guidance): pass --cfg-scale W (e.g. 2), or drop it")
    return Guidance(args.cfg_scale, args.guidance_interval, guide)


def pop_sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """For commands that run several samplers (bench, demo): the option, guidance and schedule flags,
    taken out of ``args``, as ``{"options": {...}, "guidance": Guidance JSON or {}}`` plus
    ``"schedule"`` when it is not uniform."""
    options, guidance = options_from_args(args), guidance_from_args(args)
    schedule = schedule_from_args(args)
    for name in [*option_fields(), "cfg_scale", "guidance_interval", "guide_checkpoint", "schedule"]:
        if hasattr(args, name):
            delattr(args, name)
    out = {"options": options, "guidance": guidance.to_json() if guidance.active else {}}
    return out if schedule == UNIFORM else {**out, "schedule": schedule}


def schedule_from_args(args: argparse.Namespace) -> str:
    """``--schedule`` in its canonical spelling (a bad one is a ``ConfigError`` naming the forms)."""
    return canonical_schedule(getattr(args, "schedule", UNIFORM))


def plan_from_args(args: argparse.Namespace, *, steps: int | None = None, nfe: int | None = None) -> SamplingPlan:
    """The sampling plan the flags describe (``steps``/``nfe`` override the flags: bench and demo).

    Raises:
        ConfigError: an option the chosen sampler does not have (never silently dropped), an
            option out of range, a budget below one step, a bad interval or scale.
    """
    spec = get_sampler(args.sampler)
    options = options_from_args(args)
    bad = [flag(k) for k in options if k not in {f.name for f in dataclasses.fields(spec.options_type)}]
    if bad:
        raise ConfigError(f"sampler {args.sampler!r} has no option {', '.join(bad)}; drop it "
                          f"(the flags of {args.sampler}: {_flags_of(spec) or 'none'})")
    guidance, schedule = guidance_from_args(args), schedule_from_args(args)
    nfe = nfe if nfe is not None else getattr(args, "nfe", None)
    steps = steps if steps is not None else getattr(args, "steps", None)
    if nfe is not None and steps is None:
        return SamplingPlan.from_nfe(args.sampler, nfe, guidance=guidance, schedule=schedule, **options)
    return SamplingPlan(args.sampler, steps if steps is not None else args.default_steps, options, guidance,
                        schedule=schedule)


def plan_to_argv(plan: SamplingPlan) -> list[str]:
    """The flags that rebuild ``plan`` (``--nfe`` when it was built from a budget)."""
    argv = ["--sampler", plan.sampler]
    argv += ["--nfe", str(plan.nfe_budget)] if plan.nfe_budget is not None else ["--steps", str(plan.steps)]
    for name, value in plan.options.to_dict().items():
        argv += [flag(name), repr(value)]
    if plan.schedule != UNIFORM:
        argv += ["--schedule", plan.schedule]
    g = plan.guidance
    argv += ["--cfg-scale", repr(g.scale)]
    if g.interval is not None:
        argv += ["--guidance-interval", g.interval.to_text()]
    if g.guide is not None:
        argv += ["--guide-checkpoint", g.guide]
    return argv


def _flags_of(spec) -> str:
    return ", ".join(flag(f.name) for f in dataclasses.fields(spec.options_type))
