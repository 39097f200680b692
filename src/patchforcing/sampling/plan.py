"""One value for how to sample: ``SamplingPlan`` (sampler, steps, typed options, guidance, time grid).

Built once (from an NFE budget or from steps, in Python or from the command-line flags), checked
once against the network (``plan.check``), and recorded as JSON in every output (``metrics.json``,
the evaluation parts' ``plan.json``, the report rows)::

    plan = SamplingPlan.from_nfe("look-ahead", 32, p_frac=0.3,
                                 guidance=Guidance(scale=2.0, interval=GuidanceInterval.from_sigma(0.34, 1.02)))
    x = pf.sample(net, noise, plan, condition=Condition.from_labels(labels, net.config.null_label))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from patchforcing.conditioning import Condition
from patchforcing.errors import ConfigError
from patchforcing.sampling.guidance import Guidance, check_guide_model
from patchforcing.sampling.registry import (
    MAX_PLAN_NFE,
    SAMPLERS,
    SamplerOptions,
    SamplerSpec,
    get_sampler,
    network_takes_per_patch_time,
)
from patchforcing.sampling.schedules import UNIFORM, canonical_schedule, time_grid


@dataclass(frozen=True)
class SamplingPlan:
    """Sampler, outer steps, its options, guidance and time grid; immutable and checked on construction.

    Attributes:
        sampler: a name of the registry (``patchforcing.sampling.registry.REGISTRY``).
        steps: outer steps S on the time grid of ``schedule``.
        options: the sampler's typed options; a dict (``{"p_frac": 0.3}``) or None (defaults) is
            turned into them.
        guidance: a ``Guidance`` (default: none).
        nfe_budget: the budget the steps were chosen for (``from_nfe``), else None.
        schedule: the time grid (``sampling/schedules.py``, ``docs/method.md`` §5.10):
            ``uniform`` (``t_k = k / S``, the paper's), ``shift:ALPHA`` or ``edm:RHO``; kept in its
            canonical spelling (``"shift:3.0"`` -> ``"shift:3"``).
    """

    sampler: str
    steps: int
    options: SamplerOptions | dict[str, Any] | None = None
    guidance: Guidance = field(default_factory=Guidance)
    nfe_budget: int | None = None
    schedule: str = UNIFORM
    _grid: Tensor = field(init=False, repr=False, compare=False)  # built once, in __post_init__
    _nfe: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = get_sampler(self.sampler)
        if not _is_positive_integer(self.steps):
            raise ConfigError(f"steps must be a positive integer, got {self.steps}")
        object.__setattr__(self, "steps", int(self.steps))
        if self.steps > MAX_PLAN_NFE:  # every sampler calls the network at least once per step: refused before the grid is built
            raise ConfigError(f"{self.steps:,} outer steps cost at least {self.steps:,} network evaluations per image, more "
                              f"than a plan may cost (at most {MAX_PLAN_NFE:,}; the paper samples with 32): lower --steps")
        object.__setattr__(self, "options", spec.make_options(self.options))
        if not isinstance(self.guidance, Guidance):
            raise ConfigError(f"guidance must be a patchforcing.sampling.Guidance, got {type(self.guidance).__name__}")
        object.__setattr__(self, "schedule", canonical_schedule(self.schedule))
        grid = time_grid(self.steps, self.schedule)  # a grid that collapses in float32 fails here, once
        object.__setattr__(self, "_grid", grid)
        object.__setattr__(self, "_nfe", spec.nfe_on_grid(grid, self.options))
        if self.nfe > MAX_PLAN_NFE:
            opts = ", ".join(f"{k}={v:,}" for k, v in self.options.to_dict().items())
            raise ConfigError(f"{self.sampler} with {self.steps:,} steps{f' and {opts}' if opts else ''} costs over {MAX_PLAN_NFE:,} "
                              f"network evaluations per image, more than a plan may cost (at most {MAX_PLAN_NFE:,}; the "
                              "paper samples with 32): lower --steps or --nfe, or the sampler's options (--n-inner)")

    @classmethod
    def from_nfe(cls, sampler: str, nfe: int, *, guidance: Guidance | None = None, schedule: str = UNIFORM,
                 **options: Any) -> SamplingPlan:
        """The most outer steps of ``sampler`` whose NFE on the grid of ``schedule`` fits within the budget ``nfe``."""
        spec = get_sampler(sampler)
        opts = spec.make_options(options)
        schedule = canonical_schedule(schedule)
        return cls(sampler, spec.steps_for_nfe(nfe, opts, schedule), opts, guidance or Guidance(), nfe_budget=int(nfe),
                   schedule=schedule)

    @classmethod
    def from_keywords(cls, plan: SamplingPlan | None = None, *, sampler: str | None = None, steps: int | None = None,
                      nfe: int | None = None, cfg_scale: float | None = None, guidance_interval: Any = None,
                      schedule: str | None = None, **options: Any) -> SamplingPlan:
        """``plan`` itself, or the plan the keywords of ``pf.sample`` describe (never both): ``sampler``
        with ``steps`` or an ``nfe`` budget, ``schedule``, ``cfg_scale``, ``guidance_interval`` and the
        sampler's options."""
        loose = {"sampler": sampler, "steps": steps, "nfe": nfe, "cfg_scale": cfg_scale,
                 "guidance_interval": guidance_interval, "schedule": schedule}
        given = [k for k, v in loose.items() if v is not None] + sorted(options)
        if plan is not None:
            if not isinstance(plan, SamplingPlan):
                raise ConfigError(f"expected a SamplingPlan, got {type(plan).__name__}; or pass sampler= and steps=")
            if given:
                raise ConfigError(f"pass either a SamplingPlan or {', '.join(given)}=..., not both")
            return plan
        if sampler is None or (steps is None) == (nfe is None):
            raise ConfigError("say how to sample: a SamplingPlan, or sampler= with steps= (or an nfe= budget)")
        guidance = Guidance(1.0 if cfg_scale is None else cfg_scale, guidance_interval)
        schedule = UNIFORM if schedule is None else schedule
        if nfe is not None:
            return cls.from_nfe(sampler, nfe, guidance=guidance, schedule=schedule, **options)
        return cls(sampler, steps, options, guidance, schedule=schedule)

    @property
    def spec(self) -> SamplerSpec:
        return get_sampler(self.sampler)

    @property
    def grid(self) -> Tensor:
        """The (S + 1,) float32 time grid every sampler integrates on, 0 first and 1 last (a copy of the
        plan's own, built once)."""
        return self._grid.clone()

    @property
    def nfe(self) -> int:
        """Main-network calls per image (a guided batch counts once)."""
        return self._nfe

    def replace(self, **changes: Any) -> SamplingPlan:
        return dataclasses.replace(self, **changes)

    def check(self, model: nn.Module, guide_model: nn.Module | None = None) -> SamplingPlan:
        """Every check of the plan against the network, in one place; returns the plan.

        Raises:
            ConfigError: the sampler needs per-patch time or the difficulty head and the network
                lacks it; guidance needs a null condition the network has not; the plan names a
                guide network that is not given, or the guide network differs in kind or shape.
        """
        cfg, spec, name = model.config, self.spec, self.sampler
        if spec.needs_per_patch_time and not network_takes_per_patch_time(cfg):
            raise ConfigError(f"sampler {name!r} needs a Patch Forcing network (per-patch time); this network is a "
                              "global-time baseline (SiT): use sampler='euler' (--sampler euler)")
        if spec.needs_difficulty_head and not cfg.has_difficulty_head:
            raise ConfigError(f"sampler {name!r} reads the difficulty head, which this network lacks: use "
                              f"{', '.join(n for n, s in SAMPLERS.items() if not s.needs_difficulty_head)}")
        g = self.guidance
        if g.guide is not None and guide_model is None:
            raise ConfigError(f"the plan names the guide network {g.guide!r}; load it with "
                              "patchforcing.guides.load_guide_model(plan, model) and pass it as guide_model=...")
        if guide_model is not None:
            check_guide_model(model, guide_model)
        elif g.active and not cfg.is_text and cfg.null_label is None:
            raise ConfigError(f"cfg_scale={g.scale} needs a null class, but this network has none (unconditional, or "
                              "trained with class_dropout_prob=0): use cfg_scale 1, or autoguidance (--guide-checkpoint)")
        return self

    def check_samples(self, x: Tensor, model: nn.Module, noise: Tensor, condition: Condition | Tensor | None = None,
                      guide_model: nn.Module | None = None) -> None:
        """Refuse guided samples ``x`` that hold inf or NaN while the network's own prediction on
        ``noise`` is finite: the guidance scale overflowed float32 (``--cfg-scale 1e30`` would
        otherwise give black images). Unguided plans and non-finite networks pass (``evaluate``
        names those). ``condition`` is a ``Condition`` or class labels (B,) as ``Guide`` takes them.

        Raises:
            ConfigError: naming the scale and the fix.
        """
        g = self.guidance
        if not g.active or bool(torch.isfinite(x).all()):
            return
        b, cfg = noise.shape[0], model.config
        t = noise.new_zeros((b, cfg.num_patches) if network_takes_per_patch_time(cfg) else (b,))
        value = condition.value if isinstance(condition, Condition) else condition
        for net in [n for n in (model, guide_model) if n is not None]:
            if not bool(torch.isfinite(net(noise, t, value)[0]).all()):
                return  # the network itself is not finite at t = 0: not the scale's doing
        raise ConfigError(f"guidance scale {g.scale:g} made the samples infinite or NaN while the network's own prediction "
                          "is finite: lower the scale (--cfg-scale, guidance_scale; 1.5 to 4 are usual, 1 turns guidance off)")

    def describe(self) -> str:
        """One line: ``look-ahead, 17 steps (33 NFE), p_frac=0.4, context_ratio=1.4, CFG 2 on t in [...]``
        (``, schedule edm:7`` after the steps on a non-uniform grid)."""
        opts = ", ".join(f"{k}={v:g}" for k, v in self.options.to_dict().items())
        text = f"{self.sampler}, {self.steps} steps ({self.nfe} NFE)"
        text += f", schedule {self.schedule}" if self.schedule != UNIFORM else ""
        text += f", {opts}" if opts else ""
        g = self.guidance
        if g.active:
            text += f", {'autoguidance' if g.guide else 'CFG'} {g.scale:g}"
            text += f" on {g.interval.describe()}" if g.interval is not None else ""
        return text

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON (``metrics.json``, the parts' ``plan.json``, report rows); ``schedule`` only
        when the grid is not uniform, so every uniform plan has one spelling."""
        out = {"sampler": self.sampler, "steps": self.steps, "nfe": self.nfe, "nfe_budget": self.nfe_budget,
               "options": self.options.to_dict(), "guidance": self.guidance.to_json()}
        return out if self.schedule == UNIFORM else {**out, "schedule": self.schedule}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SamplingPlan:
        return cls(d["sampler"], d["steps"], d.get("options") or {}, Guidance.from_json(d.get("guidance") or {}),
                   nfe_budget=d.get("nfe_budget"), schedule=d.get("schedule") or UNIFORM)


def _is_positive_integer(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(value) and int(value) == value and value >= 1
    except (TypeError, ValueError):
        return False
