"""Second-order samplers: Heun's method on the per-patch grid, alone and inside look-ahead.

Same contract as the samplers of ``samplers.py`` (``docs/method.md``, sections 5 and 10): a function
``(guide, x, grid, run) -> x`` that sees the network only through ``guide(x, t)``; every outer
step is announced with ``guide.begin_step(t_k)`` and all its evaluations (the corrector too)
follow that step's guidance decision (CFG, guidance interval, autoguidance). ``grid`` is any
grid of ``schedules.time_grid``. ``sampling/registry.py`` holds their entries and counts their NFE
by a dry run (study-only until measured against look-ahead).

Heun's step (the explicit trapezoidal rule, as in EDM's Algorithm 1 and SiT's ODE sampler) from
``t_k`` to ``t_{k+1}`` with ``h = t_{k+1} - t_k``::

    d1     = v(x, t_k)
    x_pred = x + h d1                      # Euler predictor
    d2     = v(x_pred, t_{k+1})            # corrector evaluation
    x      = x + h (d1 + d2) / 2

The last step (to ``t = 1``): by default, as in EDM's Algorithm 1, it takes no correction and is the
Euler predictor alone (EDM's ODE is undefined at ``sigma = 0``). In flow matching the velocity at
``t = 1`` is defined, and SiT's ODE sampler (torchdiffeq's fixed-grid Heun) corrects every step,
the last one too: the option ``correct_last=1`` does that here (``heun``, ``heun-pf``,
``look-ahead-heun``), for one more evaluation.

* ``heun`` and ``heun-pf``: Heun with one global time per sample (t as (B,), any network: the SiT
  baseline's second-order sampler) and with per-patch times, all equal (t as (B, N)).
  NFE = 2 S - 1, or 2 S with ``correct_last=1``.
* ``look-ahead-heun``: look-ahead whose main step is Heun. ``d1`` is look-ahead's velocity (the
  guided velocity at ``(x, t_k)`` on the certain patches, the guided velocity with the advanced
  context at ``(x_ctx, t_ctx)`` on the uncertain ones); ``d2`` is the guided velocity at
  ``(x_pred, t_{k+1})`` with every patch at ``t_{k+1}`` (one plain evaluation, no mask, no
  context). Warm-up steps (``t_k <= 0.05``) are look-ahead's: one conditional Euler step, no
  correction. NFE = W + 3 (S - W) - 1 with W warm-up steps (the last step saves its corrector;
  S = W = 1 gives 1), or W + 3 (S - W) with ``correct_last=1``.
* ``corrected-look-ahead`` (suggested by ``docs/study.md``: the Euler jump that builds the context
  raises the error of the patches left behind): the certain patches' jump to ``t_ctx`` is
  corrected like a Heun step, ``x_ctx = x + delta (c1 + c2) / 2`` on the certain patches, with
  ``c1`` the conditional velocity at ``(x, t_k)`` and ``c2`` the conditional velocity at the Euler
  jump's end ``(x_ctx_euler, t_ctx)``; the uncertain patches are then predicted with this
  corrected context. The main step stays Euler, as in look-ahead. NFE = W + 3 (S - W).
"""

from __future__ import annotations

from torch import Tensor

from patchforcing.sampling.guidance import Guide, outer_steps
from patchforcing.sampling.samplers import SamplerRun, look_ahead_velocity


def heun(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun) -> Tensor:
    """Heun with one global time per sample (t as (B,), any network). NFE = 2 S - 1 (last step Euler), 2 S with ``correct_last``."""
    return _plain_heun(guide, x, grid, run, per_patch=False)


def heun_pf(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun) -> Tensor:
    """Heun with per-patch times, all equal (t as (B, N)). NFE = 2 S - 1 (last step Euler), 2 S with ``correct_last``."""
    return _plain_heun(guide, x, grid, run, per_patch=True)


def _plain_heun(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun, *, per_patch: bool) -> Tensor:
    b, n = x.shape[0], run.num_patches
    shape = (b, n) if per_patch else (b,)
    last = _uncorrected_step(grid, run)
    for k, (t_cur, t_next, t32) in enumerate(outer_steps(grid, x, guide)):
        h = t_next - t_cur
        out = guide(x, t_cur.expand(shape))
        run.record(x=x, t=t_cur.expand(b, n), logvar=out.logvar)
        x = run.end_step(_heun_update(guide, x, out.velocity, h, t_next.expand(shape), run, correct=k != last), t32)
    return x


def look_ahead_heun(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun) -> Tensor:
    """Look-ahead whose main step is Heun (module docstring). NFE = W + 3 (S - W) - 1, or W + 3 (S - W) with ``correct_last``."""
    b, n = x.shape[0], run.num_patches
    last = _uncorrected_step(grid, run)
    for k, (t_cur, t_next, t32) in enumerate(outer_steps(grid, x, guide)):
        h = t_next - t_cur
        d1, certain = look_ahead_velocity(guide, x, t_cur, t32, run)
        if certain is None:  # look-ahead's warm-up: one conditional Euler step, no corrector
            x = run.end_step(x + h * d1, t32)
        else:
            x = run.end_step(_heun_update(guide, x, d1, h, t_next.expand(b, n), run, correct=k != last, certain=certain), t32)
    return x


def corrected_look_ahead(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun) -> Tensor:
    """Look-ahead whose context jump is Heun-corrected (module docstring). NFE = W + 3 (S - W)."""
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        v, _ = look_ahead_velocity(guide, x, t_cur, t32, run, correct_context=True)
        x = run.end_step(x + (t_next - t_cur) * v, t32)
    return x


# --- pieces ----------------------------------------------------------------------------------------
def _uncorrected_step(grid: Tensor, run: SamplerRun) -> int:
    """The index of the step that takes no corrector: the last (EDM's Algorithm 1), or -1 (none:
    every step is corrected, as SiT's ODE sampler does) with the option ``correct_last=1``."""
    return -1 if int(run.options.correct_last) else grid.numel() - 2


def _heun_update(guide: Guide, x: Tensor, d1: Tensor, h: Tensor, t_next: Tensor, run: SamplerRun, *,
                 correct: bool, certain: Tensor | None = None) -> Tensor:
    """``x + h d1`` (no correction) or ``x + h (d1 + d2) / 2`` with ``d2 = v(x + h d1, t_{k+1})``;
    ``t_next`` is (B,) or (B, N)."""
    x_pred = x + h * d1
    if not correct:
        return x_pred
    d2 = guide(x_pred, t_next).velocity
    t_rec = t_next if t_next.ndim == 2 else t_next[:, None].expand(x.shape[0], run.num_patches)
    run.record(x=x_pred, t=t_rec, logvar=None, certain=certain, inner=True)
    return x + h * (d1 + d2) / 2


__all__ = ["corrected_look_ahead", "heun", "heun_pf", "look_ahead_heun"]
