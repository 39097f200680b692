"""Guided evaluation: the only way samplers see the network (SPEC 5 and 6).

``Guide(x, t)`` returns the guided velocity, the guided log-variance and the conditional-only
velocity. Three kinds of evaluation, chosen per OUTER step:

* plain (``cfg_scale == 1``, or the step lies outside the guidance interval): one conditional call;
* classifier-free guidance: one call on ``[x; x]`` with the condition ``[null; value]``
  (unconditional first), ``v = v_u + w (v_c - v_u)``, the same for the log-variance;
* autoguidance (Karras et al. 2024, ``guide_model=weak``): the unconditional branch is replaced by
  the CONDITIONAL prediction of a weaker network of the same kind,
  ``v = v_weak + w (v_main - v_weak)``, the same for the log-variance; ``cond_velocity = v_main``.

Guidance interval (Kynkaanniemi et al. 2024): with ``guidance_interval=(lo, hi)`` guidance is on for
an outer step iff ``lo <= t_k <= hi``, compared in float32 like the grid ``t_k`` itself. Samplers
announce each outer step with ``guide.begin_step(t_k)``; every evaluation until the next
announcement (dual-loop's inner steps, look-ahead's context call) follows that step's decision.

Every call of the main network counts as one NFE (``nfe``); calls of the weak network are
counted apart (``guide_nfe``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from patchforcing.conditioning import Condition
from patchforcing.errors import ConfigError, ShapeError


class Guided(NamedTuple):
    velocity: Tensor  # (B, C, H, W) guided
    logvar: Tensor | None  # (B, 1, H, W) guided, None for networks without the head
    cond_velocity: Tensor  # (B, C, H, W) conditional (main network) only; == velocity when unguided


class Guide:
    """Guided network evaluation (CFG or autoguidance, optionally within an interval) with NFE counters.

    Args:
        model: the network to sample.
        condition: a ``Condition``, or (as before) class labels (B,) with ``null_label``; None
            samples the null class (unconditional networks).
        cfg_scale: guidance weight w (1 = no guidance).
        null_label: the unconditional class when ``condition`` is given as labels; defaults to the
            network's null row.
        guidance_interval: ``(lo, hi)``: guide only the outer steps with ``lo <= t_k <= hi``.
        guide_model: a weaker network of the same kind and shape: autoguidance instead of CFG.
    """

    def __init__(
        self,
        model: nn.Module,
        condition: Condition | Tensor | None,
        cfg_scale: float = 1.0,
        null_label: int | None = None,
        *,
        guidance_interval: tuple[float, float] | None = None,
        guide_model: nn.Module | None = None,
    ):
        self.model = model
        self.cfg_scale = float(cfg_scale)
        self.guide_model = guide_model
        self.nfe = 0
        self.guide_nfe = 0
        cfg_guided = self.cfg_scale != 1.0 and guide_model is None
        if condition is not None and not isinstance(condition, Condition):
            null = model.config.null_label if null_label is None else int(null_label)
            condition = Condition.from_labels(condition, -1 if null is None else null)
        self.condition = condition
        if cfg_guided:
            if condition is None and model.config.null_label is not None:
                raise ConfigError("cfg_scale != 1 needs class labels; pass labels=... or use cfg_scale=1")
            if condition is None or (not condition.is_text and condition.null.numel() and int(condition.null.min()) < 0):
                raise ConfigError("cfg_scale != 1 needs a null class, but this network has none (class_dropout_prob=0)")
        # [null; value], built once: every guided call of the run feeds the same doubled condition
        self._doubled = condition.doubled() if cfg_guided else None
        if guide_model is not None:
            check_guide_model(model, guide_model)
        self.interval = None if guidance_interval is None else check_interval(guidance_interval)
        self._active: bool | None = True if self.interval is None else None

    # --- the outer step ------------------------------------------------------------------------
    def begin_step(self, t_k: float) -> None:
        """Announce an outer step at grid time ``t_k`` (a float32 value): decides guidance for it."""
        if self.interval is not None:
            t32 = _f32(t_k)
            self._active = self.interval[0] <= t32 <= self.interval[1]

    @property
    def guiding(self) -> bool:
        """Whether evaluations of the current outer step are guided."""
        if self._active is None:
            raise ConfigError(
                "a guidance interval needs the sampler to announce each outer step: call guide.begin_step(t_k) "
                "at the start of every outer step of the sampler"
            )
        return self.cfg_scale != 1.0 and self._active

    # --- evaluation ----------------------------------------------------------------------------
    def __call__(self, x: Tensor, t: Tensor) -> Guided:
        guiding = self.guiding
        self.nfe += 1
        value = None if self.condition is None else self.condition.value
        if not guiding:
            v, logvar = self.model(x, t, value)
            return Guided(v, logvar, v)
        if self.guide_model is not None:
            return self._autoguided(x, t, value)
        v, logvar = self.model(torch.cat([x, x]), torch.cat([t, t]), self._doubled)
        v_u, v_c = v.chunk(2)
        l_u, l_c = (None, None) if logvar is None else logvar.chunk(2)
        return Guided(_mix(v_u, v_c, self.cfg_scale), _mix(l_u, l_c, self.cfg_scale), v_c)

    def _autoguided(self, x: Tensor, t: Tensor, value: Tensor | None) -> Guided:
        v_main, l_main = self.model(x, t, value)
        v_weak, l_weak = self.guide_model(x, t, value)
        self.guide_nfe += 1
        return Guided(_mix(v_weak, v_main, self.cfg_scale), _mix(l_weak, l_main, self.cfg_scale), v_main)


def _mix(base: Tensor | None, target: Tensor | None, w: float) -> Tensor | None:
    """``base + w (target - base)``; None when either is None (networks without the head)."""
    if base is None or target is None:
        return None
    return base + w * (target - base)


def _f32(value: float) -> float:
    return torch.tensor(float(value), dtype=torch.float32).item()


def check_interval(interval) -> tuple[float, float]:
    """Validate ``(lo, hi)`` and round both to float32, the precision of the time grid."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ConfigError(f"guidance_interval must be two numbers (lo, hi), got {interval!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ConfigError(f"guidance_interval needs finite lo <= hi, got ({lo}, {hi}); e.g. (0.1, 0.7)")
    return _f32(lo), _f32(hi)


def check_guide_model(model: nn.Module, weak: nn.Module) -> None:
    """The weak network must take the same inputs and give outputs of the same shapes."""
    a, b = model.config, weak.config
    fields = ("kind", "in_channels", "input_size", "patch_size", "num_classes")
    diff = [f"{f}: {getattr(a, f, None)!r} vs {getattr(b, f, None)!r}" for f in fields if getattr(a, f, None) != getattr(b, f, None)]
    if diff:
        raise ConfigError(
            f"the guide network must be of the same kind and shape as the sampled one ({'; '.join(diff)}); "
            "use an earlier checkpoint or a smaller network trained on the same data"
        )
    pa, pb = next(model.parameters(), None), next(weak.parameters(), None)
    if pa is not None and pb is not None and (pa.device != pb.device or pa.dtype != pb.dtype):
        raise ConfigError(
            f"the guide network is on {pb.device} in {pb.dtype} but the sampled one on {pa.device} in {pa.dtype}; "
            "move it with guide_model.to(device, dtype)"
        )


def check_labels(model: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor | None:
    """Validate user labels against the network: shape (B,), integer, within the class table."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels, device=noise.device)
    if labels.ndim == 0:
        labels = labels.expand(noise.shape[0])
    if labels.shape != (noise.shape[0],):
        raise ShapeError(f"labels have shape {tuple(labels.shape)}; expected ({noise.shape[0]},), one per noise sample")
    if labels.dtype.is_floating_point:
        raise ShapeError("labels must be integer class indices")
    rows = model.config.num_classes + int(model.config.has_null_class)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= rows):
        raise ShapeError(f"labels must lie in [0, {model.config.num_classes}) (or {model.config.num_classes} for the null class)")
    return labels.long()


def check_condition(model: nn.Module, noise: Tensor, condition: Condition) -> Condition:
    """Validate a ``Condition`` against the noise batch (and, for labels, the class table)."""
    if not isinstance(condition, Condition):
        raise ConfigError(f"condition must be a patchforcing.Condition, got {type(condition).__name__}; "
                          "build one with Condition.from_labels or Condition.from_text")
    if condition.batch_size != noise.shape[0]:
        raise ShapeError(f"the condition holds {condition.batch_size} samples but the noise {noise.shape[0]}; give one per sample")
    if not condition.is_text:
        check_labels(model, noise, condition.value)
        if getattr(model.config, "null_label", None) is not None:
            check_labels(model, noise, condition.null)
    dtype = next(model.parameters()).dtype if condition.is_text else None
    return condition.to(noise.device, dtype)
