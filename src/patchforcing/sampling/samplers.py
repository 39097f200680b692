"""Inference samplers (docs/method.md, samplers). Each integrates ``t: 0 -> 1`` on a time grid
``0 = t_0 < t_1 < ... < t_S = 1`` (``sampling/schedules.py``; uniform ``t_k = k / S`` by default).

A sampler is a function ``(guide, x, grid, run) -> x`` that sees the network only through
``guide(x, t) -> Guided(velocity, logvar, cond_velocity)``. At the start of every outer step
``outer_steps`` calls ``guide.begin_step(t_k)`` with the step's float32 grid time: the guide decides there whether
the step is guided (guidance interval), and every evaluation of the step follows that decision.
Every outer step ends with ``x = run.end_step(x, t_k)``, which hands the sample to the caller's
step-end callback (``sample(on_step_end=...)``, the pipeline's ``callback_on_step_end``).
``run`` carries the patch size, the sampler's options (a typed dataclass of
``sampling.registry``), the certain-patch mask function and an optional recorder (None unless
trajectories are asked for). A sampler's NFE is not written down beside it: ``sampling.registry``
counts it by one dry run of the step function through a counting evaluation, so the declared and the
spent NFE cannot disagree. The second-order samplers live in ``sampling/heun.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from patchforcing.errors import ShapeError
from patchforcing.flow import pixels_to_patch_mean
from patchforcing.sampling.guidance import Guide, Guided, outer_steps

# Look-ahead takes a plain step with the conditional velocity while t_k <= this (reference behaviour).
LOOK_AHEAD_WARMUP_T = 0.05
WARMUP_T32 = torch.tensor(LOOK_AHEAD_WARMUP_T, dtype=torch.float32).item()  # compared in float32


@dataclass
class SamplerRun:
    patch_size: int
    num_patches: int
    options: Any  # the sampler's options dataclass (sampling.registry)
    generator: torch.Generator | None = None
    recorder: Callable[..., None] | None = None
    mask_fn: Callable[[Guided, Tensor], Tensor] | None = field(default=None, repr=False)
    # Called after every outer step as (step index k, grid time t_k, x at t_{k+1}); a returned tensor replaces x.
    on_step_end: Callable[[int, float, Tensor], Tensor | None] | None = field(default=None, repr=False)
    steps_done: int = 0

    def record(self, **items) -> None:
        if self.recorder is not None:
            self.recorder(**items)

    def end_step(self, x: Tensor, t32: float) -> Tensor:
        """The end of outer step ``k`` (counted here), which started at grid time ``t32``: hands x
        (B, C, H, W) to ``on_step_end``, which may return new latents of the same shape."""
        k, self.steps_done = self.steps_done, self.steps_done + 1
        if self.on_step_end is None:
            return x
        new = self.on_step_end(k, t32, x)
        if new is None:
            return x
        if not isinstance(new, Tensor) or new.shape != x.shape:
            raise ShapeError(f"the step-end callback returned {getattr(new, 'shape', type(new).__name__)} latents at "
                             f"step {k}; return a tensor of shape {tuple(x.shape)}, or None to keep them")
        return new.to(device=x.device, dtype=x.dtype)


# --- plain Euler ------------------------------------------------------------------------------
def euler(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun) -> Tensor:
    """Global-time Euler: ``x += (t_{k+1} - t_k) v``, ``t`` passed as (B,). NFE = S."""
    b = x.shape[0]
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        out = guide(x, t_cur.expand(b))
        run.record(x=x, t=t_cur.expand(b, run.num_patches), logvar=out.logvar)
        x = run.end_step(x + (t_next - t_cur) * out.velocity, t32)
    return x


def euler_pf(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun) -> Tensor:
    """Euler for Patch Forcing networks: the same step, ``t`` passed as (B, N), all equal. NFE = S."""
    b, n = x.shape[0], run.num_patches
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        t = t_cur.expand(b, n)
        out = guide(x, t)
        run.record(x=x, t=t, logvar=out.logvar)
        x = run.end_step(x + (t_next - t_cur) * out.velocity, t32)
    return x


# --- dual loop ---------------------------------------------------------------------------------
def dual_loop(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun) -> Tensor:
    """Certain patches take the whole step at once; uncertain ones take ``K`` small steps with
    the certain ones already ahead as context (docs/method.md, samplers). The mask is fixed within an outer step.
    NFE = S * K."""
    k_inner = int(run.options.n_inner)
    b, patch, n = x.shape[0], run.patch_size, run.num_patches
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        dt = t_next - t_cur
        small = dt / k_inner
        out = guide(x, t_cur.expand(b, n))
        certain = run.mask_fn(out, x)  # (B, 1, H, W) bool
        uncertain = ~certain
        run.record(x=x, t=t_cur.expand(b, n), logvar=out.logvar, certain=certain)
        x = x + torch.where(certain, dt, small) * out.velocity
        t_map = t_cur + torch.where(certain, dt, small)  # (B, 1, H, W) per-pixel time
        for _ in range(k_inner - 1):
            t_patch = pixels_to_patch_mean(t_map, patch)  # (B, N)
            v = guide(x, t_patch).velocity
            x = x + small * v * uncertain
            t_map = t_map + small * uncertain
            run.record(x=x, t=t_patch, logvar=None, certain=certain, inner=True)
        x = run.end_step(x, t32)
    return x


# --- look ahead --------------------------------------------------------------------------------
def look_ahead(guide: Guide, x: Tensor, grid: Tensor, run: SamplerRun) -> Tensor:
    """Certain patches are pushed ahead to ``t_ctx = min(rho t_k, 1)`` with the conditional
    velocity; the uncertain ones are then predicted with that cleaner context (docs/method.md, samplers).
    NFE = 1 while ``t_k <= 0.05``, else 2 per step."""
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        v, _ = look_ahead_velocity(guide, x, t_cur, t32, run)
        x = run.end_step(x + (t_next - t_cur) * v, t32)
    return x


def look_ahead_velocity(guide: Guide, x: Tensor, t_cur: Tensor, t32: float, run: SamplerRun, *,
                        correct_context: bool = False) -> tuple[Tensor, Tensor | None]:
    """Look-ahead's velocity at outer step ``t_k``, shared by ``look-ahead``, ``look-ahead-heun`` and
    ``corrected-look-ahead``: ``(v (B, C, H, W), certain (B, 1, H, W) bool)``.

    A warm-up step (``t_k <= 0.05`` in float32) makes one call and returns the CONDITIONAL velocity
    (reference behaviour) and ``certain`` None. Every other step evaluates ``(x, t_k)``, picks the
    certain patches, jumps them ahead (``context_jump``; with ``correct_context`` the jump is
    Heun-corrected by one more conditional call at its end) and evaluates the uncertain ones with
    that context: ``v`` is the guided velocity at ``t_k`` on the certain patches and the guided
    velocity with the context on the others.
    """
    b, n = x.shape[0], run.num_patches
    t = t_cur.expand(b, n)
    out = guide(x, t)
    if t32 <= WARMUP_T32:
        run.record(x=x, t=t, logvar=out.logvar)
        return out.cond_velocity, None
    certain = run.mask_fn(out, x)  # (B, 1, H, W)
    x_ctx, t_ctx, delta = context_jump(x, t, t_cur, out.cond_velocity, certain, run)
    if correct_context:
        c2 = guide(x_ctx, t_ctx).cond_velocity  # conditional velocity at the Euler jump's end
        run.record(x=x_ctx, t=t_ctx, logvar=None, certain=certain, inner=True)  # the context's corrector call
        x_ctx = x + delta * (out.cond_velocity + c2) / 2 * certain
    run.record(x=x, t=t_ctx, logvar=out.logvar, certain=certain, context=True)  # two calls: x at t_k, context at t_ctx
    v_ctx = guide(x_ctx, t_ctx).velocity
    return torch.where(certain, out.velocity, v_ctx), certain


def context_jump(x: Tensor, t: Tensor, t_cur: Tensor, cond_velocity: Tensor, certain: Tensor,
                 run: SamplerRun) -> tuple[Tensor, Tensor, Tensor]:
    """Look-ahead's context: certain patches jump by Euler to ``min(rho t_k, 1)`` with the
    conditional velocity. Returns ``x_ctx`` (B, C, H, W), the per-patch times ``t_ctx`` (B, N)
    and the advance ``delta = min(rho t_k, 1) - t_k`` (a scalar tensor)."""
    rho = float(run.options.context_ratio)
    delta = torch.clamp(rho * t_cur, max=1.0) - t_cur
    x_ctx = x + delta * cond_velocity * certain
    certain_patch = pixels_to_patch_mean(certain.to(x.dtype), run.patch_size) > 0.5  # (B, N)
    return x_ctx, t + delta * certain_patch, delta

