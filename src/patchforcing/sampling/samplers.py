"""Inference samplers (docs/method.md, samplers). Each integrates ``t: 0 -> 1`` on a time grid
``0 = t_0 < t_1 < ... < t_S = 1`` (``sampling/schedules.py``; uniform ``t_k = k / S`` by default).

A sampler is a function ``(guide, x, grid, ctx) -> x`` that sees the network only through
``guide(x, t) -> Guided(velocity, logvar, cond_velocity)``. At the start of every outer step
``outer_steps`` calls ``guide.begin_step(t_k)`` with the step's float32 grid time: the guide decides there whether
the step is guided (guidance interval), and every evaluation of the step follows that decision.
Every outer step ends with ``x = ctx.end_step(x, t_k)``, which hands the sample to the caller's
step-end callback (``sample(on_step_end=...)``, the pipeline's ``callback_on_step_end``).
``ctx`` carries the patch size, the sampler's options (a typed dataclass of
``sampling.registry``), the certain-patch mask function and an optional recorder (None unless
trajectories are asked for). Beside each step function sits its NFE rule ``(steps, options, grid) -> int``
(``grid`` the (S + 1,) float32 time grid); ``sampling.registry`` ties the two together with everything
else a sampler needs. The second-order samplers live in ``sampling/heun.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from patchforcing.errors import ShapeError
from patchforcing.flow import pixels_to_patch_mean
from patchforcing.sampling.guidance import Guide, Guided
from patchforcing.sampling.schedules import WARMUP_T32, outer_steps, warmup_count


@dataclass
class Context:
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
def euler(guide: Guide, x: Tensor, grid: Tensor, ctx: Context) -> Tensor:
    """Global-time Euler: ``x += (t_{k+1} - t_k) v``, ``t`` passed as (B,). NFE = S."""
    b = x.shape[0]
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        out = guide(x, t_cur.expand(b))
        ctx.record(x=x, t=t_cur.expand(b, ctx.num_patches), logvar=out.logvar)
        x = ctx.end_step(x + (t_next - t_cur) * out.velocity, t32)
    return x


def euler_nfe(steps: int, options: Any, grid: Tensor) -> int:
    """One network call per outer step (euler, euler-pf)."""
    return steps


def euler_pf(guide: Guide, x: Tensor, grid: Tensor, ctx: Context) -> Tensor:
    """Euler for Patch Forcing networks: the same step, ``t`` passed as (B, N), all equal. NFE = S."""
    b, n = x.shape[0], ctx.num_patches
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        t = t_cur.expand(b, n)
        out = guide(x, t)
        ctx.record(x=x, t=t, logvar=out.logvar)
        x = ctx.end_step(x + (t_next - t_cur) * out.velocity, t32)
    return x


# --- dual loop ---------------------------------------------------------------------------------
def dual_loop(guide: Guide, x: Tensor, grid: Tensor, ctx: Context) -> Tensor:
    """Certain patches take the whole step at once; uncertain ones take ``K`` small steps with
    the certain ones already ahead as context (docs/method.md, samplers). The mask is fixed within an outer step.
    NFE = S * K."""
    k_inner = int(ctx.options.n_inner)
    b, patch, n = x.shape[0], ctx.patch_size, ctx.num_patches
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        dt = t_next - t_cur
        small = dt / k_inner
        out = guide(x, t_cur.expand(b, n))
        certain = ctx.mask_fn(out, x)  # (B, 1, H, W) bool
        uncertain = ~certain
        ctx.record(x=x, t=t_cur.expand(b, n), logvar=out.logvar, certain=certain)
        x = x + torch.where(certain, dt, small) * out.velocity
        t_map = t_cur + torch.where(certain, dt, small)  # (B, 1, H, W) per-pixel time
        for _ in range(k_inner - 1):
            t_patch = pixels_to_patch_mean(t_map, patch)  # (B, N)
            v = guide(x, t_patch).velocity
            x = x + small * v * uncertain
            t_map = t_map + small * uncertain
            ctx.record(x=x, t=t_patch, logvar=None, certain=certain, inner=True)
        x = ctx.end_step(x, t32)
    return x


def dual_loop_nfe(steps: int, options: Any, grid: Tensor) -> int:
    """``S * K``: the outer call and ``K - 1`` inner calls per outer step."""
    return steps * int(options.n_inner)


# --- look ahead --------------------------------------------------------------------------------
def look_ahead(guide: Guide, x: Tensor, grid: Tensor, ctx: Context) -> Tensor:
    """Certain patches are pushed ahead to ``t_ctx = min(rho t_k, 1)`` with the conditional
    velocity; the uncertain ones are then predicted with that cleaner context (docs/method.md, samplers).
    NFE = 1 while ``t_k <= 0.05``, else 2 per step."""
    b, n = x.shape[0], ctx.num_patches
    for t_cur, t_next, t32 in outer_steps(grid, x, guide):
        dt = t_next - t_cur
        t = t_cur.expand(b, n)
        out = guide(x, t)
        if t32 <= WARMUP_T32:
            # Reference behaviour: the first steps use the CONDITIONAL velocity, not the guided one.
            ctx.record(x=x, t=t, logvar=out.logvar)
            x = ctx.end_step(x + dt * out.cond_velocity, t32)
            continue
        certain = ctx.mask_fn(out, x)  # (B, 1, H, W)
        x_ctx, t_ctx, _ = context_jump(x, t, t_cur, out.cond_velocity, certain, ctx)
        ctx.record(x=x, t=t_ctx, logvar=out.logvar, certain=certain, context=True)  # two calls: x at t_k, context at t_ctx
        v_ctx = guide(x_ctx, t_ctx).velocity
        x = ctx.end_step(x + dt * torch.where(certain, out.velocity, v_ctx), t32)
    return x


def context_jump(x: Tensor, t: Tensor, t_cur: Tensor, cond_velocity: Tensor, certain: Tensor,
                 ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
    """Look-ahead's context: certain patches jump by Euler to ``min(rho t_k, 1)`` with the
    conditional velocity. Returns ``x_ctx`` (B, C, H, W), the per-patch times ``t_ctx`` (B, N)
    and the advance ``delta = min(rho t_k, 1) - t_k`` (a scalar tensor)."""
    rho = float(ctx.options.context_ratio)
    delta = torch.clamp(rho * t_cur, max=1.0) - t_cur
    x_ctx = x + delta * cond_velocity * certain
    certain_patch = pixels_to_patch_mean(certain.to(x.dtype), ctx.patch_size) > 0.5  # (B, N)
    return x_ctx, t + delta * certain_patch, delta


def look_ahead_nfe(steps: int, options: Any, grid: Tensor) -> int:
    """One call per warm-up step of ``grid`` (``t_k <= 0.05`` in float32), two per step after it."""
    warm = warmup_count(grid)
    return warm + 2 * (steps - warm)
