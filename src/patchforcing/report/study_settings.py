"""The study's settings: its networks (``NETWORKS``), the samplers it compares, the seconds-long
``TINY`` values, :class:`StudySettings`, and the names of its rows and sample grids. Read by
``study`` (which runs them) and ``study_report`` (which writes ``study.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchforcing.errors import ConfigError
from patchforcing.training import resolve_config


@dataclass(frozen=True)
class StudyNetwork:
    """One network of the study: a training recipe on top of the ``digits`` preset."""

    data: str  # training data set (built-in name)
    label: str
    overrides: dict  # TrainConfig fields beyond the shared ones (size, data, steps)


# The bench's recipe (PF-XS/2 at depth 2, width 64, 2x2 patches, 3000 steps of 64) on digits; photos at
# 32x32 with 4x4 patches, so the token grid (8x8) matches the digits network, for 2000 steps; the wider
# digits network doubles the width (4x the weights) for 1000 steps. The step counts of the last two are
# what the shared 2-core machine allowed (see docs/study.md), not what convergence needs.
NETWORKS: dict[str, StudyNetwork] = {
    "digits": StudyNetwork("digits", "digits, PF width 64", {}),
    "photos": StudyNetwork("photos-labeled", "photos 32x32, PF width 64, 4x4 patches", {"patch_size": 4, "steps": 2000}),
    "digits-wide": StudyNetwork("digits", "digits, PF width 128", {"hidden_size": 128, "num_heads": 4, "steps": 1000}),
    # The control for digits-wide: the digits network at the same 1000 steps (the same seed and data order, so
    # its weights are those of the digits run's step-1000 checkpoint).
    "digits-1000": StudyNetwork("digits", "digits, PF width 64, 1000 steps", {"steps": 1000}),
}

# Samplers compared at equal NFE. inverted-look-ahead and spread-look-ahead live in the study's registry.
SAMPLERS = ("euler-pf", "look-ahead", "random-look-ahead", "inverted-look-ahead", "spread-look-ahead")

TINY: dict[str, Any] = dict(steps=6, num_samples=20, seeds=2, nfe=(8,), mechanism_images=8, mechanism_times=(0.3, 0.7),
                            p_values=(0.4,), context_ratios=(1.4,), picture_images=4,
                            train_options=dict(batch_size=16, depth=1, hidden_size=32, num_heads=2, log_every=2, val_every=3,
                                               val_size=32, ckpt_every=0, sample_every=0, warmup_steps=1, ema_decay=0.0,
                                               lr=3e-3))


@dataclass(frozen=True)
class StudySettings:
    """Everything the study depends on; the defaults fit about 40 single-thread CPU minutes."""

    steps: int = 3000  # training steps of the digits network (photos and digits-wide: their own, see NETWORKS)
    num_samples: int = 500  # images per (network, sampler, seed) row
    seeds: int = 3
    nfe: tuple[int, ...] = (16,)
    networks: tuple[str, ...] = tuple(NETWORKS)
    samplers: tuple[str, ...] = SAMPLERS
    # the mechanism (question 3)
    mechanism_images: int = 256  # held-out images per time
    mechanism_times: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    p_values: tuple[float, ...] = (0.2, 0.4, 0.6)  # certain fractions tried (context_ratio 1.4)
    context_ratios: tuple[float, ...] = (1.2, 1.4, 2.0)  # tried at p_frac = 0.4
    picture_images: int = 8  # held-out images in the mask pictures
    eval_batch_size: int = 250
    tiny: bool = False
    train_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "num_samples", "seeds", "mechanism_images", "picture_images", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if self.num_samples < 10:
            raise ConfigError(f"--num-samples {self.num_samples}: the metrics need at least 10 images per row")
        if not self.nfe or min(self.nfe) < 4:
            raise ConfigError(f"--nfe {self.nfe!r}: give budgets of at least 4 network evaluations, e.g. 16")
        unknown = [n for n in self.networks if n not in NETWORKS]
        if unknown or not self.networks:
            raise ConfigError(f"unknown network(s) {unknown or '(none given)'}; choose from: {', '.join(NETWORKS)}")
        if any(not 0 < p < 1 for p in self.p_values) or any(r < 1 for r in self.context_ratios):
            raise ConfigError("p_frac values must lie in (0, 1) and context ratios must be at least 1")
        if any(not 0 < t < 1 for t in self.mechanism_times):
            raise ConfigError(f"mechanism times {self.mechanism_times!r} must lie in (0, 1)")
        object.__setattr__(self, "nfe", tuple(sorted(set(self.nfe))))
        object.__setattr__(self, "networks", tuple(dict.fromkeys(self.networks)))

    @classmethod
    def create(cls, tiny: bool = False, **values: Any) -> StudySettings:
        base = dict(TINY, tiny=True) if tiny else {}
        return cls(**{**base, **{k: v for k, v in values.items() if v is not None}})

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide a row's numbers (seeds, budgets, networks and samplers only add rows)."""
        keep = ("steps", "num_samples", "mechanism_images", "mechanism_times", "picture_images", "train_options")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in keep)}  # as JSON reads back

    def train_config(self, network: str, out: Path):
        spec = NETWORKS[network]
        values = {"steps": self.steps, **spec.overrides, **self.train_options}
        if self.tiny:  # the tiny run keeps its tiny size and steps for every network
            values.update(self.train_options, steps=self.steps)
        return resolve_config("digits", out=str(out / "runs" / network), data=spec.data, model="PF-XS/2", seed=0, **values)

    def command(self, out: Path) -> str:
        parts = ["patchforcing", "study", "--out", str(out)] + (["--tiny"] if self.tiny else [])
        parts += ["--steps", str(self.steps), "--num-samples", str(self.num_samples), "--seeds", str(self.seeds),
                  "--nfe", ",".join(map(str, self.nfe))]
        if self.networks != tuple(NETWORKS):
            parts += ["--networks", ",".join(self.networks)]
        return " ".join(parts)


def row_key(network: str, sampler: str, budget: int, seed: int) -> str:
    return f"{network}|{sampler}|nfe{budget}|seed{seed}"


def grid_path(network: str, sampler: str, budget: int) -> str:
    """Where the sample grid of a row lives, relative to the study folder."""
    return f"study/samples/{network}_{sampler}_nfe{budget}.png"
