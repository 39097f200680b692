"""Guided evaluation: the only way samplers see the network (docs/method.md, samplers and guidance).

Three names, three things: ``Guidance`` is the setting a plan records (scale, interval, and the
name of a guide network); ``Guide`` is the evaluation a sampler calls; the guide network
(``guide_model``) is the weak network of autoguidance, loaded from ``Guidance.guide`` by
``patchforcing.guides.load_guide_model``.

``Guide(x, t)`` returns the guided velocity, the guided log-variance and the conditional-only
velocity. Three kinds of evaluation, chosen per OUTER step:

* plain (``cfg_scale == 1``, or the step lies outside the guidance interval): one conditional call;
* classifier-free guidance: one call on ``[x; x]`` with the condition ``[null; value]``
  (unconditional first), ``v = v_u + w (v_c - v_u)``, the same for the log-variance;
* autoguidance (Karras et al. 2024, ``guide_model=weak``): the unconditional branch is replaced by
  the CONDITIONAL prediction of a weaker network of the same kind,
  ``v = v_weak + w (v_main - v_weak)``, the same for the log-variance; ``cond_velocity = v_main``.

Guidance interval (Kynkaanniemi et al. 2024): with ``guidance_interval=(lo, hi)`` guidance is on for
an outer step iff ``lo <= t_k <= hi``, compared in float32 like the grid ``t_k`` itself. The
published intervals are given in sigma and half-open, ``sigma in (lo, hi]``; with
``t = 1 / (1 + sigma)`` that is ``t in [1 / (1 + hi), 1 / (1 + lo))``, open at the top:
``GuidanceInterval.from_sigma(lo, hi)`` (``--guidance-interval sigma:LO,HI``) keeps both ends
exact (see ``GuidanceInterval``). Samplers
announce each outer step with ``guide.begin_step(t_k)``; every evaluation until the next
announcement (dual-loop's inner steps, look-ahead's context call) follows that step's decision.

Every call of the main network counts as one NFE (``nfe``); calls of the weak network are
counted apart (``guide_nfe``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from patchforcing.conditioning import Condition
from patchforcing.errors import ConfigError, ShapeError


class Guided(NamedTuple):
    velocity: Tensor  # (B, C, H, W) guided
    logvar: Tensor | None  # (B, 1, H, W) guided, None for networks without the head
    cond_velocity: Tensor  # (B, C, H, W) conditional (main network) only; == velocity when unguided


@dataclass(frozen=True)
class GuidanceInterval:
    """The grid times ``t_k`` whose outer steps are guided: ``lo .. hi`` with each end open or closed.

    Two forms, both exact:

    * ``GuidanceInterval.closed(lo, hi)``: ``lo <= t_k <= hi`` in t, both ends rounded to float32
      (the precision of the grid) -- the form of ``guidance_interval=(lo, hi)`` and ``LO,HI``;
    * ``GuidanceInterval.from_sigma(lo, hi)``: the published form ``sigma in (lo, hi]`` with
      ``t = 1 / (1 + sigma)``, i.e. ``t in [1 / (1 + hi), 1 / (1 + lo))``. A grid time is tested
      in exact rational arithmetic against the sigma ends (``sigma_k = (1 - t_k) / t_k``), so a grid
      time exactly on an end is in or out as the half-open interval says.

    The published intervals converted to t (their sigma bounds; ``lo``/``hi`` rounded here):

    =========  ====================  ========================
    network    sigma in              t in
    =========  ====================  ========================
    DiT-XL/2   (0.34, 1.02]          [0.49505, 0.74627)
    EDM2-S     (0.28, 2.90]          [0.25641, 0.78125)
    EDM2-XXL   (0.19, 1.61]          [0.38314, 0.84034)
    SD-XL      (0.28, 5.42]          [0.15576, 0.78125)
    =========  ====================  ========================

    EDM2's sigmas assume latents scaled to standard deviation 0.5; for latents scaled to 1 (ours)
    the same noise level is at half the sigma, so treat its rows as a starting point, not a match.

    Attributes:
        lo, hi: the ends in t (float; for the sigma form the nearest doubles of ``1 / (1 + sigma)``).
        lo_open, hi_open: whether each end is excluded.
        sigma: ``(sigma_lo, sigma_hi)`` as given, for the sigma form; None for the t form.
    """

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    sigma: tuple[float, float] | None = None

    @classmethod
    def closed(cls, lo: float, hi: float) -> GuidanceInterval:
        """``lo <= t_k <= hi`` (t form), both ends rounded to float32."""
        lo, hi = check_interval((lo, hi))
        return cls(lo, hi)

    @classmethod
    def from_sigma(cls, sigma_lo: float, sigma_hi: float) -> GuidanceInterval:
        """``sigma_lo < sigma_k <= sigma_hi``: ``t in [1 / (1 + sigma_hi), 1 / (1 + sigma_lo))``."""
        try:
            lo, hi = float(sigma_lo), float(sigma_hi)
        except (TypeError, ValueError):
            raise ConfigError(f"a sigma interval takes two numbers (lo, hi), got {(sigma_lo, sigma_hi)!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or not 0 <= lo < hi:
            raise ConfigError(f"a sigma interval needs finite 0 <= lo < hi, got ({lo}, {hi}); e.g. sigma:0.34,1.02")
        return cls(1.0 / (1.0 + hi), 1.0 / (1.0 + lo), lo_open=False, hi_open=True, sigma=(lo, hi))

    @classmethod
    def parse(cls, text: str) -> GuidanceInterval:
        """``"0.25,0.75"`` (t, closed) or ``"sigma:0.34,1.02"`` (sigma, half-open ``(lo, hi]``)."""
        body = text.strip()
        is_sigma = body.lower().startswith("sigma:")
        numbers = body[len("sigma:"):] if is_sigma else body
        try:
            lo, hi = (float(p.strip()) for p in numbers.split(","))
        except ValueError:
            raise ConfigError(f"--guidance-interval takes two numbers LO,HI in t (e.g. 0.25,0.75) or sigma:LO,HI "
                              f"(e.g. sigma:0.34,1.02), got {text!r}") from None
        if not is_sigma and not lo <= hi:
            raise ConfigError(f"--guidance-interval needs LO <= HI, got {text!r}")
        return cls.from_sigma(lo, hi) if is_sigma else cls.closed(lo, hi)

    @classmethod
    def coerce(cls, value: Any) -> GuidanceInterval | None:
        """None, a ``GuidanceInterval``, text (``parse``), a JSON dict, or ``(lo, hi)`` in t (closed)."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, dict):
            return cls.from_json(value)
        return cls.closed(*check_interval(value))

    def contains(self, t_k: float) -> bool:
        """Whether the outer step at grid time ``t_k`` (a float32 value) is guided."""
        if self.sigma is None:
            t32 = _f32(t_k)
            return self.lo <= t32 <= self.hi
        t = Fraction(_f32(t_k))
        s_lo, s_hi = Fraction(self.sigma[0]), Fraction(self.sigma[1])
        return t * (1 + s_hi) >= 1 and t * (1 + s_lo) < 1  # sigma_lo < (1 - t) / t <= sigma_hi, for t > 0

    def __iter__(self):
        """``lo, hi = interval`` (t ends)."""
        return iter((self.lo, self.hi))

    def to_text(self) -> str:
        """The ``--guidance-interval`` text that rebuilds this interval (``parse``)."""
        if self.sigma is not None:
            return f"sigma:{self.sigma[0]!r},{self.sigma[1]!r}"
        return f"{self.lo!r},{self.hi!r}"

    def describe(self) -> str:
        text = f"t in {'(' if self.lo_open else '['}{self.lo:.6g}, {self.hi:.6g}{')' if self.hi_open else ']'}"
        return text if self.sigma is None else f"sigma in ({self.sigma[0]:g}, {self.sigma[1]:g}], {text}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": [self.lo, self.hi], "open": [self.lo_open, self.hi_open]}
        if self.sigma is not None:
            out["sigma"] = list(self.sigma)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GuidanceInterval:
        if d.get("sigma") is not None:
            return cls.from_sigma(*d["sigma"])
        return cls.closed(*d["t"])


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance or autoguidance (``docs/method.md``, guidance).

    Attributes:
        scale: the weight w (1 = no guidance, one plain call per evaluation).
        interval: guide only the outer steps inside it (None: every step); ``(lo, hi)`` in t and
            ``"sigma:LO,HI"`` are accepted and turned into a ``GuidanceInterval``.
        guide: where the weak network of autoguidance comes from, as ``patchforcing.guides.resolve_guide``
            reads it (a checkpoint file, a run folder, ``runs/digits@step=500``); recorded with the plan.
            None: CFG with the null condition, or autoguidance with a network handed over in Python
            (``sample(..., guide_model=weak)``), which the plan does not name.
    """

    scale: float = 1.0
    interval: GuidanceInterval | None = None
    guide: str | None = None

    def __post_init__(self) -> None:
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            scale = math.nan
        if isinstance(self.scale, bool) or not math.isfinite(scale):
            raise ConfigError(f"cfg_scale must be a finite number, got {self.scale}; 1 turns guidance off")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "interval", GuidanceInterval.coerce(self.interval))
        if self.guide is not None:
            object.__setattr__(self, "guide", str(self.guide))

    @property
    def active(self) -> bool:
        return self.scale != 1.0

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "interval": None if self.interval is None else self.interval.to_json(),
                "guide": self.guide}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Guidance:
        return cls(scale=d.get("scale", 1.0), interval=d.get("interval"), guide=d.get("guide"))


class Guide:
    """Guided network evaluation (CFG or autoguidance, optionally within an interval) with NFE counters.

    Args:
        model: the network to sample.
        condition: a ``Condition``, or class labels (B,) with ``null_label``; None samples the null
            class (unconditional networks).
        guidance: the plan's ``Guidance`` (scale and interval; default: none), already checked
            against the network by ``SamplingPlan.check``.
        null_label: the unconditional class when ``condition`` is given as labels; defaults to the
            network's null row.
        guide_model: the weak network of autoguidance (instead of CFG), checked by ``SamplingPlan.check``.
    """

    def __init__(
        self,
        model: nn.Module,
        condition: Condition | Tensor | None,
        guidance: Guidance | None = None,
        null_label: int | None = None,
        *,
        guide_model: nn.Module | None = None,
    ):
        guidance = Guidance() if guidance is None else guidance
        self.model = model
        self.cfg_scale = guidance.scale
        self.guide_model = guide_model
        self.nfe = 0
        self.guide_nfe = 0
        cfg_guided = self.cfg_scale != 1.0 and guide_model is None
        if condition is not None and not isinstance(condition, Condition):
            null = model.config.null_label if null_label is None else int(null_label)
            condition = Condition.from_labels(condition, -1 if null is None else null)
        self.condition = condition
        if cfg_guided:  # what the condition holds (the plan's checks see only the network)
            if condition is None and model.config.null_label is not None:
                raise ConfigError("cfg_scale != 1 needs class labels; pass labels=... or use cfg_scale=1")
            if condition is None or (not condition.is_text and condition.null.numel() and int(condition.null.min()) < 0):
                raise ConfigError("cfg_scale != 1 needs a null class, but this network has none (class_dropout_prob=0)")
        # [null; value], built once: every guided call of the run feeds the same doubled condition
        self._doubled = condition.doubled() if cfg_guided else None
        self.interval = guidance.interval
        self._active: bool | None = True if self.interval is None else None

    # --- the outer step ------------------------------------------------------------------------
    def begin_step(self, t_k: float) -> None:
        """Announce an outer step at grid time ``t_k`` (a float32 value): decides guidance for it."""
        if self.interval is not None:
            self._active = self.interval.contains(t_k)

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
    """Validate ``(lo, hi)`` in t, ``0 <= lo <= hi <= 1``, and round both to float32, the precision
    of the time grid; the one check of every interval (``--guidance-interval``, ``pf.sample``, the
    pipeline and the app)."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ConfigError(f"guidance_interval must be two numbers (lo, hi), got {interval!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:  # NaN fails too
        raise ConfigError(f"guidance_interval needs 0 <= lo <= hi <= 1 in t (0 noise, 1 data), got ({lo:g}, {hi:g}); "
                          "e.g. 0.1,0.7, or sigma:LO,HI for the published form")
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


def outer_steps(grid: Tensor, x: Tensor, guide: Guide) -> Iterator[tuple[Tensor, Tensor, float]]:
    """Yield ``(t_k, t_{k+1}, t_k as a float32 Python number)`` with tensors in x's dtype/device,
    announcing each outer step to the guide first (it decides guidance for the whole step)."""
    cast = grid.to(device=x.device, dtype=x.dtype)
    for k, t32 in enumerate(grid[:-1].tolist()):
        guide.begin_step(t32)
        yield cast[k], cast[k + 1], t32
