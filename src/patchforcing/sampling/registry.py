"""The sampler registry: everything about a sampler in one record (``docs/method.md``, samplers).

A ``SamplerSpec`` holds the step function, its typed options (a frozen dataclass whose fields carry
a default, a one-line help and the valid range), what the network must offer (per-patch time; the
difficulty head: two separate facts), the kind of certain-patch mask, a description and whether
commands and reports offer it (``public``) or only ``patchforcing study`` does. A sampler's NFE on a
grid is counted, not written down: one dry run of its step function on a 2x2 stand-in through an
evaluation that only counts its calls (look-ahead's warm-up count, for instance, depends on the grid
of the plan's schedule, ``sampling/schedules.py``). Nothing outside this module branches on a
sampler's name or function: the command-line flags, the NFE budget, the network checks and the
reports all read the spec.

    >>> spec = get_sampler("dual-loop")
    >>> spec.nfe(8, spec.make_options(n_inner=2))
    16
    >>> get_sampler("look-ahead").nfe(8, schedule="edm:3")  # four warm-up steps below t = 0.05
    12
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from patchforcing.errors import ConfigError
from patchforcing.models.config import Kind
from patchforcing.sampling.guidance import Guided
from patchforcing.sampling.heun import corrected_look_ahead, heun, heun_pf, look_ahead_heun
from patchforcing.sampling.masks import difficulty_mask, inverted_mask, random_mask, spread_mask
from patchforcing.sampling.samplers import SamplerRun, dual_loop, euler, euler_pf, look_ahead
from patchforcing.sampling.schedules import UNIFORM, time_grid

# Other keyword names accepted in Python calls (``p=0.4`` for ``p_frac=0.4``): name -> field.
OPTION_ALIASES = {"p": "p_frac"}

# The most network evaluations one image may cost (a plan's NFE, an NFE budget): 300 times the
# paper's 32 and above the 1,000-step references of the field; more is a typo that would fill the
# memory with its time grid or run for days, so plans above it are refused up front.
MAX_PLAN_NFE = 10_000


# --- typed options -------------------------------------------------------------------------------
def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, integer: bool = False) -> Any:
    """A field of a sampler's options: its default, a one-line help and the valid range."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open, "integer": integer}
    return field(default=default, metadata=meta)


def describe_range(meta: dict[str, Any]) -> str:
    """``(0, 1)``, ``[1, inf)``, ``a positive integer``: the valid range of an option field."""
    if meta["integer"] and meta["low"] == 1 and meta["high"] is None:
        return "a positive integer"
    low = "-inf" if meta["low"] is None else f"{meta['low']:g}"
    high = "inf" if meta["high"] is None else f"{meta['high']:g}"
    return f"{'(' if meta['low_open'] or meta['low'] is None else '['}{low}, {high}{')' if meta['high_open'] or meta['high'] is None else ']'}"


@dataclass(frozen=True)
class SamplerOptions:
    """Base of every sampler's options; fields are checked against their range on construction."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _checked(f: dataclasses.Field, value: Any) -> Any:
    meta = f.metadata
    bad = ConfigError(f"{f.name} must be {describe_range(meta)}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise bad
    if meta["integer"]:
        if int(number) != number:
            raise bad
        number = int(number)
    low, high = meta["low"], meta["high"]
    if low is not None and (number < low or (meta["low_open"] and number == low)):
        raise bad
    if high is not None and (number > high or (meta["high_open"] and number == high)):
        raise bad
    return number


@dataclass(frozen=True)
class NoOptions(SamplerOptions):
    """Euler has no options."""


_P_FRAC = dict(help="fraction of patches marked certain each outer step (the easiest, by the difficulty head)",
               low=0.0, high=1.0, low_open=True, high_open=True)


@dataclass(frozen=True)
class DualLoopOptions(SamplerOptions):
    p_frac: float = option(0.4, **_P_FRAC)
    n_inner: int = option(4, "inner steps K the uncertain patches take per outer step", low=1, integer=True)


@dataclass(frozen=True)
class LookAheadOptions(SamplerOptions):
    p_frac: float = option(0.4, **_P_FRAC)
    context_ratio: float = option(1.4, "rho: the certain patches run ahead to time min(rho t, 1)", low=1.0)


_CORRECT_LAST = dict(help="1: Heun-correct the last step to t = 1 too, as SiT's ODE sampler (one more NFE); "
                          "0: the last step is Euler, as EDM's Algorithm 1", low=0, high=1, integer=True)


@dataclass(frozen=True)
class HeunOptions(SamplerOptions):
    correct_last: int = option(0, **_CORRECT_LAST)


@dataclass(frozen=True)
class LookAheadHeunOptions(LookAheadOptions):
    correct_last: int = option(0, **_CORRECT_LAST)


# --- masks ---------------------------------------------------------------------------------------
class MaskKind(enum.Enum):
    """Which patches a sampler treats as certain (``sampling/masks.py``)."""

    NONE = "none"  # every patch alike (Euler)
    DIFFICULTY = "difficulty"  # the easiest by the difficulty head
    RANDOM = "random"  # as many, chosen at random (ablation)
    INVERTED = "inverted"  # the hardest (ablation)
    SPREAD = "spread"  # the easiest of every 2x2 window of patches


def make_mask_fn(kind: MaskKind, options: SamplerOptions, patch_size: int, generator,
                 among: Tensor | None = None) -> Callable | None:
    """``(guided output, x) -> (B, 1, H, W) bool`` certain-patch mask of ``kind``, or None; with
    ``among`` (B, N) bool only those patches are ranked (a region's generated patches, ``sampling/region.py``)."""
    if kind is MaskKind.NONE:
        return None
    p_frac = float(options.p_frac)
    if kind is MaskKind.RANDOM:
        return lambda out, x: random_mask(tuple(x.shape), patch_size, p_frac, generator, x.device, among=among)
    rule = {MaskKind.DIFFICULTY: difficulty_mask, MaskKind.INVERTED: inverted_mask, MaskKind.SPREAD: spread_mask}[kind]
    if among is None:
        return lambda out, x: rule(out.logvar, patch_size, p_frac)
    return lambda out, x: rule(out.logvar, patch_size, p_frac, among=among)


# --- the spec ------------------------------------------------------------------------------------
StepFn = Callable[[Any, Tensor, Tensor, SamplerRun], Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler, completely described.

    Attributes:
        name: the name users pass (``--sampler``, ``sample(sampler=...)``).
        fn: the step function ``(guide, x0, grid, run) -> x1`` of ``sampling/samplers.py``.
        options_type: its typed options (defaults, help and ranges in the fields' metadata).
        needs_per_patch_time: the network must take a time per patch (B, N): Patch Forcing networks.
        needs_difficulty_head: the sampler reads the difficulty head (its mask follows it).
        mask: which patches run ahead.
        description: one line for ``--help`` and the reports.
        public: offered by the commands and reports; False: only by ``patchforcing study``.
        paper: one of the paper's samplers; the bench and the demo compare these by default
            (the public samplers added here since, ``docs/samplers.md``, only when named).
    """

    name: str
    fn: StepFn
    options_type: type[SamplerOptions]
    needs_per_patch_time: bool
    needs_difficulty_head: bool
    mask: MaskKind
    description: str
    public: bool = True
    paper: bool = True

    def make_options(self, options: SamplerOptions | dict[str, Any] | None = None, **values: Any) -> SamplerOptions:
        """This sampler's options from a dict or keywords (defaults for the rest; ``p`` means ``p_frac``)."""
        if isinstance(options, self.options_type) and not values:
            return options
        if isinstance(options, SamplerOptions):
            raise ConfigError(f"sampler {self.name!r} takes {self.options_type.__name__}, got {type(options).__name__}")
        given = {**(options or {}), **values}
        for old, new in OPTION_ALIASES.items():
            if old in given:
                if new in given:
                    raise ConfigError(f"pass {new}= or its old name {old}=, not both")
                given[new] = given.pop(old)
        names = [f.name for f in dataclasses.fields(self.options_type)]
        bad = sorted(set(given) - set(names))
        if bad:
            raise ConfigError(f"sampler {self.name!r} has no option(s) {bad}; its options are: {names or 'none'}")
        return self.options_type(**given)

    def nfe(self, steps: int, options: SamplerOptions | None = None, schedule: str = UNIFORM) -> int:
        """Network calls of ``steps`` outer steps with ``options`` (defaults when None) on the grid of
        ``schedule``; ``MAX_PLAN_NFE + 1`` stands for any count above ``MAX_PLAN_NFE``."""
        return self.nfe_on_grid(time_grid(int(steps), schedule), options)

    def nfe_on_grid(self, grid: Tensor, options: SamplerOptions | None = None) -> int:
        """Network calls of the ``len(grid) - 1`` outer steps of the (S + 1,) time ``grid``, counted
        by a dry run of the step function (cached per sampler, options and grid)."""
        return _counted_nfe(self.fn, self.make_options(options), tuple(grid.tolist()))

    def steps_for_nfe(self, nfe: int, options: SamplerOptions | None = None, schedule: str = UNIFORM) -> int:
        """The most outer steps whose NFE on the grid of ``schedule`` fits within ``nfe``."""
        options = self.make_options(options)
        if isinstance(nfe, bool) or not isinstance(nfe, numbers.Real) or not math.isfinite(nfe) or int(nfe) != nfe or nfe < 1:
            raise ConfigError(f"the NFE budget must be a whole number of at least 1, got {nfe}")
        if nfe > MAX_PLAN_NFE:
            raise ConfigError(f"an NFE budget of {int(nfe):,} network evaluations per image is more than a plan may cost "
                              f"(at most {MAX_PLAN_NFE:,}; the paper samples with 32): lower --nfe")
        one = self.nfe(1, options, schedule)
        if one > nfe:
            cost = f"over {MAX_PLAN_NFE:,}" if one > MAX_PLAN_NFE else f"{one}"
            raise ConfigError(f"one step of {self.name!r} already costs {cost} NFE, more than the budget of {nfe}; "
                              "raise --nfe (or lower n_inner)")
        lo, hi = 1, int(nfe)  # every step costs at least one call: the answer is at most the budget
        while lo < hi:  # NFE grows with the steps on every grid (tested): the last step count that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.nfe(mid, options, schedule) <= nfe else (lo, mid - 1)
        return lo


_PATCH_FORCING = dict(needs_per_patch_time=True, needs_difficulty_head=True)  # the difficulty-aware samplers
REGISTRY: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("euler", euler, NoOptions, needs_per_patch_time=False, needs_difficulty_head=False, mask=MaskKind.NONE,
                description="Euler with one global time per sample (any network)."),
    SamplerSpec("euler-pf", euler_pf, NoOptions, needs_per_patch_time=True, needs_difficulty_head=False,
                mask=MaskKind.NONE, description="Euler with per-patch times, all equal (Patch Forcing networks)."),
    SamplerSpec("dual-loop", dual_loop, DualLoopOptions, **_PATCH_FORCING, mask=MaskKind.DIFFICULTY,
                description="Easy patches take the whole step; hard ones K small steps."),
    SamplerSpec("look-ahead", look_ahead, LookAheadOptions, **_PATCH_FORCING, mask=MaskKind.DIFFICULTY,
                description="Easy patches run ahead as context for hard ones."),
    SamplerSpec("random-dual-loop", dual_loop, DualLoopOptions, needs_per_patch_time=True, needs_difficulty_head=False,
                mask=MaskKind.RANDOM, description="Ablation: dual-loop with a random mask."),
    SamplerSpec("random-look-ahead", look_ahead, LookAheadOptions, needs_per_patch_time=True,
                needs_difficulty_head=False, mask=MaskKind.RANDOM, description="Ablation: look-ahead with a random mask."),
    # Offered only by `patchforcing study` (docs/study.md): they did not earn a place in the commands.
    SamplerSpec("inverted-look-ahead", look_ahead, LookAheadOptions, **_PATCH_FORCING, mask=MaskKind.INVERTED,
                description="Ablation: look-ahead where the HARDEST patches run ahead.", public=False),
    SamplerSpec("spread-look-ahead", look_ahead, LookAheadOptions, **_PATCH_FORCING, mask=MaskKind.SPREAD,
                description="Look-ahead whose ahead-running patches are the easiest of every 2x2 window.", public=False),
    # Second order (sampling/heun.py, docs/method.md §5.12), measured against look-ahead on digits and
    # photos (docs/samplers.md): the two that beat it there are public, on a shifted or EDM grid only.
    SamplerSpec("heun", heun, HeunOptions, needs_per_patch_time=False, needs_difficulty_head=False, mask=MaskKind.NONE,
                description="Heun with one global time per sample (any network); the last step is Euler unless "
                            "correct_last=1.", public=False, paper=False),
    SamplerSpec("heun-pf", heun_pf, HeunOptions, needs_per_patch_time=True, needs_difficulty_head=False,
                mask=MaskKind.NONE, description="Heun with per-patch times, all equal; the last step is Euler unless "
                                                "correct_last=1.", public=False, paper=False),
    SamplerSpec("look-ahead-heun", look_ahead_heun, LookAheadHeunOptions, **_PATCH_FORCING, mask=MaskKind.DIFFICULTY,
                description="Look-ahead whose main step is Heun; use it with --schedule shift:3 (docs/samplers.md).",
                paper=False),
    SamplerSpec("corrected-look-ahead", corrected_look_ahead, LookAheadOptions, **_PATCH_FORCING,
                mask=MaskKind.DIFFICULTY, description="Look-ahead whose context jump is corrected by a second "
                "evaluation; use it with --schedule shift:3 or edm:3 (docs/samplers.md).", paper=False),
)}

SAMPLERS: dict[str, SamplerSpec] = {n: s for n, s in REGISTRY.items() if s.public}  # what commands offer
STUDY_SAMPLERS: dict[str, SamplerSpec] = {n: s for n, s in REGISTRY.items() if not s.public}
PAPER_SAMPLERS: dict[str, SamplerSpec] = {n: s for n, s in SAMPLERS.items() if s.paper}  # what the bench and demo compare


class _OverLimit(Exception):
    """A dry run passed ``MAX_PLAN_NFE`` calls: no plan may cost that much, so the count stops there."""


class _CountingEvaluation:
    """Stands in for ``Guide`` in a dry run: counts the calls and answers zeros."""

    def __init__(self) -> None:
        self.nfe = 0

    def begin_step(self, t_k: float) -> None:
        pass

    def __call__(self, x: Tensor, t: Tensor) -> Guided:
        self.nfe += 1
        if self.nfe > MAX_PLAN_NFE:
            raise _OverLimit
        zero = torch.zeros_like(x)
        return Guided(zero, zero[:, :1], zero)


@functools.lru_cache(maxsize=4096)
def _counted_nfe(fn: StepFn, options: SamplerOptions, grid: tuple[float, ...]) -> int:
    """The network calls of step function ``fn`` on the time ``grid``: one dry run on a (1, 1, 2, 2)
    stand-in with 1x1 patches, half of them certain (no branch of a sampler depends on the values).
    A run that passes ``MAX_PLAN_NFE`` stops there and counts ``MAX_PLAN_NFE + 1``."""
    counter = _CountingEvaluation()
    x = torch.zeros(1, 1, 2, 2)
    certain = torch.tensor([[[[True, False], [False, True]]]])
    run = SamplerRun(patch_size=1, num_patches=4, options=options, mask_fn=lambda out, x: certain)
    try:
        with torch.no_grad():
            fn(counter, x, torch.tensor(grid, dtype=torch.float32), run)
    except _OverLimit:
        pass
    return counter.nfe


def get_sampler(name: str) -> SamplerSpec:
    """The spec of ``name`` (public or study-only)."""
    spec = REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return spec


def plain_sampler(model_config: Any) -> str:
    """The public first-order sampler without a mask that fits the network: one time per patch for
    Patch Forcing networks, one per sample for global-time ones (what training grids use)."""
    per_patch = network_takes_per_patch_time(model_config)
    return next(n for n, s in SAMPLERS.items()
                if s.mask is MaskKind.NONE and s.needs_per_patch_time == per_patch and not s.needs_difficulty_head)


def default_sampler(model_config: Any) -> str:
    """The sampler a network is sampled with when none is named: ``look-ahead`` (the paper's best)
    where the network has a difficulty head, else ``plain_sampler``."""
    return "look-ahead" if model_config.has_difficulty_head else plain_sampler(model_config)


def resolve_options(name: str, options: dict[str, Any]) -> tuple[SamplerSpec, SamplerOptions]:
    """The spec of ``name`` and its checked options (``p`` accepted for ``p_frac``)."""
    spec = get_sampler(name)
    return spec, spec.make_options(options)


def expected_nfe(name: str, steps: int, *, schedule: str = UNIFORM, **options: Any) -> int:
    """Network calls of ``sample(..., sampler=name, steps=steps, schedule=schedule)`` (guidance batches count once)."""
    spec, opts = resolve_options(name, options)
    return spec.nfe(steps, opts, schedule)


def steps_for_nfe(name: str, nfe: int, *, schedule: str = UNIFORM, **options: Any) -> int:
    """The number of outer steps whose NFE on the grid of ``schedule`` comes closest to ``nfe`` without exceeding it."""
    spec, opts = resolve_options(name, options)
    return spec.steps_for_nfe(nfe, opts, schedule)


def network_takes_per_patch_time(model_config: Any) -> bool:
    """Whether a network takes one time per patch (Patch Forcing) or one per sample (SiT, ``kind="sit"``)."""
    return model_config.kind is Kind.PATCH_FORCING


__all__ = ["PAPER_SAMPLERS", "REGISTRY", "SAMPLERS", "STUDY_SAMPLERS", "DualLoopOptions", "HeunOptions",
           "LookAheadHeunOptions", "LookAheadOptions", "MaskKind", "NoOptions",
           "SamplerOptions", "SamplerSpec", "default_sampler", "expected_nfe", "get_sampler", "make_mask_fn",
           "network_takes_per_patch_time", "option", "plain_sampler", "resolve_options", "steps_for_nfe"]
