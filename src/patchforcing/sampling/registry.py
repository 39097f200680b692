"""The sampler registry: everything about a sampler in one record (``docs/method.md``, samplers).

A ``SamplerSpec`` holds the step function, its typed options (a frozen dataclass whose fields carry
a default, a one-line help and the valid range), the NFE rule ``(steps, options, grid) -> int`` (the
grid of the plan's time-grid schedule, ``sampling/schedules.py``: look-ahead's warm-up count
depends on it), what the
network must offer (per-patch time; the difficulty head: two separate facts), the kind of
certain-patch mask, a description and whether commands and reports offer it (``public``) or only
``patchforcing study`` does. Nothing outside this module branches on a sampler's name or function:
the command-line flags, the NFE budget, the network checks and the reports all read the spec.

    >>> spec = get_sampler("dual-loop")
    >>> spec.nfe(8, spec.make_options(n_inner=2))
    16
    >>> get_sampler("look-ahead").nfe(8, schedule="edm:3")  # four warm-up steps below t = 0.05
    12
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from patchforcing.errors import ConfigError
from patchforcing.models.config import Kind
from patchforcing.sampling.heun import (
    corrected_look_ahead,
    corrected_look_ahead_nfe,
    heun,
    heun_nfe,
    heun_pf,
    look_ahead_heun,
    look_ahead_heun_nfe,
)
from patchforcing.sampling.masks import difficulty_mask, inverted_mask, random_mask, spread_mask
from patchforcing.sampling.samplers import (
    Context,
    dual_loop,
    dual_loop_nfe,
    euler,
    euler_nfe,
    euler_pf,
    look_ahead,
    look_ahead_nfe,
)
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
StepFn = Callable[[Any, Tensor, Tensor, Context], Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler, completely described.

    Attributes:
        name: the name users pass (``--sampler``, ``sample(sampler=...)``).
        fn: the step function ``(guide, x0, grid, ctx) -> x1`` of ``sampling/samplers.py``.
        options_type: its typed options (defaults, help and ranges in the fields' metadata).
        nfe_rule: network calls per image ``(steps, options, grid) -> int`` (guided batches count
            once; ``grid`` the (S + 1,) float32 time grid of the plan's schedule).
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
    nfe_rule: Callable[[int, SamplerOptions, Tensor], int]
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
        """Network calls of ``steps`` outer steps with ``options`` (defaults when None) on the grid of ``schedule``."""
        return self.nfe_on_grid(time_grid(int(steps), schedule), options)

    def nfe_on_grid(self, grid: Tensor, options: SamplerOptions | None = None) -> int:
        """Network calls of the ``len(grid) - 1`` outer steps of the (S + 1,) time ``grid``."""
        return int(self.nfe_rule(int(grid.shape[0]) - 1, self.make_options(options), grid))

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
            raise ConfigError(f"one step of {self.name!r} already costs {one} NFE, more than the budget of {nfe}; "
                              "raise --nfe (or lower n_inner)")
        best = 1
        for steps in range(1, int(nfe) + 1):
            if self.nfe(steps, options, schedule) > nfe:
                break
            best = steps
        return best


def _spec(name, fn, options_type, nfe_rule, per_patch, head, mask, description, public=True, paper=True) -> SamplerSpec:
    return SamplerSpec(name, fn, options_type, nfe_rule, per_patch, head, mask, description, public, paper)


REGISTRY: dict[str, SamplerSpec] = {s.name: s for s in (
    _spec("euler", euler, NoOptions, euler_nfe, False, False, MaskKind.NONE,
          "Euler with one global time per sample (any network)."),
    _spec("euler-pf", euler_pf, NoOptions, euler_nfe, True, False, MaskKind.NONE,
          "Euler with per-patch times, all equal (Patch Forcing networks)."),
    _spec("dual-loop", dual_loop, DualLoopOptions, dual_loop_nfe, True, True, MaskKind.DIFFICULTY,
          "Easy patches take the whole step; hard ones K small steps."),
    _spec("look-ahead", look_ahead, LookAheadOptions, look_ahead_nfe, True, True, MaskKind.DIFFICULTY,
          "Easy patches run ahead as context for hard ones."),
    _spec("random-dual-loop", dual_loop, DualLoopOptions, dual_loop_nfe, True, False, MaskKind.RANDOM,
          "Ablation: dual-loop with a random mask."),
    _spec("random-look-ahead", look_ahead, LookAheadOptions, look_ahead_nfe, True, False, MaskKind.RANDOM,
          "Ablation: look-ahead with a random mask."),
    # Offered only by `patchforcing study` (docs/study.md): they did not earn a place in the commands.
    _spec("inverted-look-ahead", look_ahead, LookAheadOptions, look_ahead_nfe, True, True, MaskKind.INVERTED,
          "Ablation: look-ahead where the HARDEST patches run ahead.", public=False),
    _spec("spread-look-ahead", look_ahead, LookAheadOptions, look_ahead_nfe, True, True, MaskKind.SPREAD,
          "Look-ahead whose ahead-running patches are the easiest of every 2x2 window.", public=False),
    # Second order (sampling/heun.py, docs/method.md §5.12), measured against look-ahead on digits and
    # photos (docs/samplers.md): the two that beat it there are public, on a shifted or EDM grid only.
    _spec("heun", heun, HeunOptions, heun_nfe, False, False, MaskKind.NONE,
          "Heun with one global time per sample (any network); the last step is Euler unless correct_last=1.",
          public=False, paper=False),
    _spec("heun-pf", heun_pf, HeunOptions, heun_nfe, True, False, MaskKind.NONE,
          "Heun with per-patch times, all equal; the last step is Euler unless correct_last=1.", public=False, paper=False),
    _spec("look-ahead-heun", look_ahead_heun, LookAheadHeunOptions, look_ahead_heun_nfe, True, True, MaskKind.DIFFICULTY,
          "Look-ahead whose main step is Heun; use it with --schedule shift:3 (docs/samplers.md).", paper=False),
    _spec("corrected-look-ahead", corrected_look_ahead, LookAheadOptions, corrected_look_ahead_nfe, True, True,
          MaskKind.DIFFICULTY, "Look-ahead whose context jump is corrected by a second evaluation; use it with "
          "--schedule shift:3 or edm:3 (docs/samplers.md).", paper=False),
)}

SAMPLERS: dict[str, SamplerSpec] = {n: s for n, s in REGISTRY.items() if s.public}  # what commands offer
STUDY_SAMPLERS: dict[str, SamplerSpec] = {n: s for n, s in REGISTRY.items() if not s.public}
PAPER_SAMPLERS: dict[str, SamplerSpec] = {n: s for n, s in SAMPLERS.items() if s.paper}  # what the bench and demo compare


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
