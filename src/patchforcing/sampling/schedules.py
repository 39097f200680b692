"""Time grids of the samplers: where the outer steps ``t_0 = 0 < t_1 < ... < t_S = 1`` lie.

Every sampler integrates ``t: 0 -> 1`` (``t = 0`` noise, ``t = 1`` data) on a grid of ``S + 1``
float32 times built here, once, by ``time_grid(steps, schedule)`` (``docs/method.md`` §5.10).
The schedule is a field of the sampling plan (``SamplingPlan.schedule``, ``--schedule``). Three
schedules, written as strings:

* ``uniform`` (the paper's): ``t_k = k / S``, a float32 ``linspace``, exactly as the reference builds it.
* ``shift:ALPHA`` (the shifted grids of SD3 and FLUX, Esser et al. 2024): with ``u_k = k / S`` (the
  uniform grid) and the noise level ``s = 1 - u``, ``s' = ALPHA s / (1 + (ALPHA - 1) s)`` and
  ``t' = 1 - s'``. ``ALPHA > 1`` moves the steps towards the noise end (more steps at high noise),
  ``ALPHA < 1`` towards the data end, ``ALPHA = 1`` is the uniform grid bit for bit.
* ``edm:RHO`` (Karras et al. 2022, eq. 5; ``0.1 <= RHO <= 100``) in ``sigma = (1 - t) / t``, the
  noise-to-signal ratio of ``x_t / t = x1 + sigma x0``. The ``S + 1`` points are spaced evenly in ``sigma^(1/RHO)`` from
  ``EDM_SIGMA_MAX`` down to ``EDM_SIGMA_MIN`` (both included) and mapped back by
  ``t = 1 / (1 + sigma)``; then the first point is pinned to ``t = 0`` (``sigma = inf``, pure noise,
  where the sampler starts) and the last to ``t = 1`` (``sigma = 0``, data). So ``t_1 .. t_{S-1}``
  are EDM's interior points, the first step runs from pure noise to ``t_1`` and the last from
  ``t_{S-1}`` to data. ``S = 1`` gives ``[0, 1]``.

All grids start at exactly 0, end at exactly 1 and increase strictly (a grid that collapses in
float32, e.g. an extreme shift with many steps, raises ``ConfigError``). The non-uniform grids
are computed in float64 from the float32 uniform grid and rounded once to float32.

What the samplers do on a non-uniform grid (``docs/method.md`` §5.11): Euler and Heun step from ``t_k``
to ``t_{k+1}``; dual-loop's inner steps split each outer interval ``[t_k, t_{k+1}]`` uniformly
(``K`` steps of ``(t_{k+1} - t_k) / K``); look-ahead's context advance ``min(rho t_k, 1)`` is a
function of the current time only; its warm-up (a plain conditional step while
``t_k <= 0.05``) is decided on the grid's float32 times, so a grid with more points below 0.05
has more warm-up steps and, for the look-ahead samplers, a slightly lower NFE for the same ``S``
(each sampler's NFE rule in ``sampling/registry.py`` reads the grid and counts it exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from patchforcing.errors import ConfigError

# The end points of the EDM schedule's interior in sigma = (1 - t) / t (EDM's values, Karras et al. 2022, Table 1).
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0

UNIFORM = "uniform"
# edm:RHO takes RHO in this range (EDM uses 7). Below 0.1 sigma_max^(1/RHO) is astronomically large
# (it overflows float64 under RHO = 0.0067); above 100 the grid hardly moves any more (RHO -> inf
# spaces sigma geometrically).
EDM_RHO_MIN, EDM_RHO_MAX = 0.1, 100.0
SCHEDULE_HELP = f"uniform, shift:ALPHA (ALPHA > 0, e.g. shift:3) or edm:RHO ({EDM_RHO_MIN:g} <= RHO <= {EDM_RHO_MAX:g}, e.g. edm:7)"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``kind`` in ``uniform``, ``shift``, ``edm`` and its parameter (None for uniform)."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_schedule(schedule: str | Schedule) -> Schedule:
    """``"uniform"``, ``"shift:3"``, ``"edm:7"`` -> a ``Schedule``; anything else raises ``ConfigError``.

    ``str()`` of the result is the canonical spelling (``"shift:3.0"`` -> ``"shift:3"``)."""
    if isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, str):
        raise ConfigError(f"schedule must be a string, got {schedule!r}; choose {SCHEDULE_HELP}")
    kind, sep, arg = schedule.strip().partition(":")
    if kind == UNIFORM and not sep:
        return Schedule(UNIFORM)
    if kind in ("shift", "edm") and sep:
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"schedule {schedule!r}: {kind} needs a finite number > 0 after the colon; choose {SCHEDULE_HELP}")
        if kind == "edm" and not EDM_RHO_MIN <= value <= EDM_RHO_MAX:
            raise ConfigError(f"schedule {schedule!r}: edm needs RHO in [{EDM_RHO_MIN:g}, {EDM_RHO_MAX:g}] (EDM uses 7; a larger "
                              "RHO puts more steps near the data); choose for example edm:7")
        return Schedule(kind, value)
    raise ConfigError(f"unknown schedule {schedule!r}; choose {SCHEDULE_HELP}")


def canonical_schedule(schedule: str | Schedule) -> str:
    """The canonical spelling of a schedule (``"shift:3.0"`` -> ``"shift:3"``), as plans, saved
    pipelines and report rows record it; a bad one raises ``ConfigError`` naming the valid forms."""
    return str(parse_schedule(schedule))


def time_grid(steps: int, schedule: str | Schedule = UNIFORM) -> Tensor:
    """The ``S + 1`` grid times of ``schedule``: float32 (S + 1,) on the CPU, 0 first, 1 last.

    ``uniform`` is ``t_k = k / S`` built as the reference builds it, a float32 linspace. Samplers
    cast the grid to the sample's dtype; the look-ahead warm-up test compares the float32 values,
    as the reference does (so ``t_k = 0.05`` counts as warm-up).

    Args:
        steps: outer steps S >= 1.
        schedule: a schedule string (``uniform``, ``shift:ALPHA``, ``edm:RHO``) or a ``Schedule``.

    Returns:
        (S + 1,) float32, strictly increasing, ``t_0 = 0`` and ``t_S = 1`` exactly.
    """
    sched = parse_schedule(schedule)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps}")
    steps = int(steps)
    uniform = torch.linspace(0, 1, steps + 1, dtype=torch.float32)  # the reference grid, bit for bit
    if sched.kind == UNIFORM:
        return uniform
    if sched.kind == "shift":
        s = 1 - uniform.double()  # noise level, 1 -> 0
        t = 1 - sched.value * s / (1 + (sched.value - 1) * s)
    else:
        t = _edm_times(steps, sched.value)
    t[0], t[-1] = 0.0, 1.0
    grid = t.float()
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ConfigError(f"schedule {sched} with {steps} steps puts two grid points at the same float32 time; "
                          "use a milder schedule or fewer steps")
    return grid


def _edm_times(steps: int, rho: float) -> Tensor:
    """EDM's ``S + 1`` points evenly spaced in ``sigma^(1/rho)`` from sigma_max to sigma_min, as t (float64)."""
    i = torch.arange(steps + 1, dtype=torch.float64) / steps
    hi, lo = EDM_SIGMA_MAX ** (1 / rho), EDM_SIGMA_MIN ** (1 / rho)
    sigma = (hi + i * (lo - hi)) ** rho  # (S + 1,) decreasing
    return 1 / (1 + sigma)


