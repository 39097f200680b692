"""The bench's settings: its four networks (``NETWORKS``), the seconds-long ``TINY`` values,
:class:`BenchSettings`, and the names of its rows and sample grids. Read by ``bench`` (which runs
them) and ``bench_report`` (which writes the tables)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchforcing.errors import ConfigError
from patchforcing.models import PRESETS as MODEL_PRESETS
from patchforcing.report.common import SamplingSettings, min_budget
from patchforcing.sampling import PAPER_SAMPLERS
from patchforcing.training import resolve_config

# Per network kind, every one of the paper's samplers it can run (the registry says which need per-patch time).
PF_SAMPLERS = tuple(n for n, s in PAPER_SAMPLERS.items() if s.needs_per_patch_time)
SIT_SAMPLERS = tuple(n for n, s in PAPER_SAMPLERS.items() if not s.needs_per_patch_time)


@dataclass(frozen=True)
class Network:
    model: str  # network preset; size fields come from the settings
    timesteps: str  # training timestep distribution (docs/method.md)
    samplers: tuple[str, ...]
    label: str


NETWORKS: dict[str, Network] = {
    "sit-uniform": Network("SiT-XS/2", "uniform", SIT_SAMPLERS, "SiT, global t (uniform)"),
    "pf-ltg": Network("PF-XS/2", "ltg", PF_SAMPLERS, "Patch Forcing, ltg"),
    "pf-uniform-patch": Network("PF-XS/2", "uniform-patch", PF_SAMPLERS, "Patch Forcing, uniform-patch (ablation)"),
    "pf-srm": Network("PF-XS/2", "srm", PF_SAMPLERS, "Patch Forcing, srm (ablation)"),
}

# A seconds-long configuration for tests: a 1-block, width-32 network, a few steps, few samples.
TINY: dict[str, Any] = dict(steps=6, batch_size=16, num_samples=20, seeds=2, nfe=(4, 8), depth=1, hidden_size=32, num_heads=2,
                            train_options=dict(log_every=2, val_every=3, val_size=32, ckpt_every=0, sample_every=0, warmup_steps=1,
                                               ema_decay=0.0, lr=3e-3))


@dataclass(frozen=True)
class BenchSettings:
    """Everything a bench depends on. The defaults fit about an hour on a 2-core CPU."""

    # Training: None means the `digits` training preset's value (the demo network), so that the
    # Patch Forcing ltg network here is the network the demo trains.
    steps: int | None = None  # optimizer steps per network
    batch_size: int | None = None
    depth: int | None = None  # network size, the same for all networks
    hidden_size: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    # Evaluation
    num_samples: int = 1000  # images per row (FID of 1,000 digits is biased upwards, but equally for all rows)
    seeds: int = 3  # evaluation seeds per (network, sampler, budget): the tables give mean and std
    nfe: tuple[int, ...] = (16, 32)  # equal-compute budgets (network evaluations per image)
    train_seed: int = 0  # the same initial weights, data order and noise for every network
    networks: tuple[str, ...] = tuple(NETWORKS)
    eval_batch_size: int = 250  # images per sampling batch (does not change the images)
    tiny: bool = False  # started from the TINY settings (recorded for the command line)
    train_options: dict = field(default_factory=dict)  # extra TrainConfig fields (the tiny run's intervals)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)  # sampler options, guidance and time grid of every row

    def __post_init__(self) -> None:
        self._fill_from_preset()
        names = ("batch_size", "num_samples", "seeds", "depth", "hidden_size", "num_heads", "patch_size", "eval_batch_size")
        for name in names + ("steps",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if self.num_samples < 10:
            raise ConfigError(f"--num-samples {self.num_samples}: the metrics need at least 10 images per row")
        if not self.nfe or any(not isinstance(n, int) or n < 1 for n in self.nfe):
            raise ConfigError(f"--nfe {self.nfe!r}: give one or more budgets, each a whole number of at least 1 (e.g. 16,32)")
        unknown = [n for n in self.networks if n not in NETWORKS]
        if unknown or not self.networks:
            raise ConfigError(f"unknown network(s) {unknown or '(none given)'}; choose from: {', '.join(NETWORKS)}")
        smallest = min_budget(s for n in self.networks for s in NETWORKS[n].samplers)
        if min(self.nfe) < smallest:
            raise ConfigError(f"--nfe {min(self.nfe)} is below {smallest}, the smallest budget every sampler fits "
                              f"(one step of each); use {smallest} or more")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ConfigError(f"--hidden-size {self.hidden_size} must be divisible by 4 and by --num-heads {self.num_heads}")
        if 16 % self.patch_size:
            raise ConfigError(f"--patch-size {self.patch_size} must divide the digits' 16 pixels (1, 2, 4, 8 or 16)")
        if isinstance(self.sampling, dict):
            object.__setattr__(self, "sampling", SamplingSettings(**self.sampling))
        self.sampling.check({s for n in self.networks for s in NETWORKS[n].samplers})
        object.__setattr__(self, "nfe", tuple(sorted(set(self.nfe))))  # "16,32,16" is (16, 32)
        object.__setattr__(self, "networks", tuple(dict.fromkeys(self.networks)))

    @classmethod
    def create(cls, tiny: bool = False, **values: Any) -> BenchSettings:
        """Defaults (or the tiny ones), then ``values`` (None means: keep the default)."""
        base = dict(TINY, tiny=True) if tiny else {}
        return cls(**{**base, **{k: v for k, v in values.items() if v is not None}})

    def _fill_from_preset(self) -> None:
        """Replace the None training fields by the `digits` preset's values (explicit ones for every
        network: a SiT model would otherwise drop the preset's PF size overrides)."""
        base = resolve_config("digits")
        preset = MODEL_PRESETS[base.model]
        defaults = {"steps": base.steps, "batch_size": base.batch_size, "depth": base.depth or preset["depth"],
                    "hidden_size": base.hidden_size or preset["hidden_size"], "num_heads": base.num_heads or preset["num_heads"],
                    "patch_size": base.patch_size or preset["patch_size"]}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide a row's numbers (seeds, budgets and networks only add rows)."""
        keep = ("batch_size", "num_samples", "depth", "hidden_size", "num_heads", "patch_size", "train_seed", "train_options")
        return {"steps": self.steps, **{k: getattr(self, k) for k in keep}, **self.sampling.fingerprint()}

    def train_config(self, network: str, out: Path):
        spec = NETWORKS[network]
        return resolve_config("digits", out=str(out / "runs" / network), model=spec.model, timesteps=spec.timesteps,
                              steps=self.steps, batch_size=self.batch_size, depth=self.depth, hidden_size=self.hidden_size,
                              num_heads=self.num_heads, patch_size=self.patch_size, seed=self.train_seed, **self.train_options)

    def command(self, out: Path) -> str:
        """The ``patchforcing bench`` command line that reproduces these settings."""
        parts = ["patchforcing", "bench", "--out", str(out)] + (["--tiny"] if self.tiny else [])
        parts += ["--steps", str(self.steps), "--batch-size", str(self.batch_size), "--num-samples", str(self.num_samples),
                  "--seeds", str(self.seeds), "--nfe", ",".join(map(str, self.nfe)), "--depth", str(self.depth),
                  "--hidden-size", str(self.hidden_size), "--num-heads", str(self.num_heads), "--patch-size", str(self.patch_size),
                  "--train-seed", str(self.train_seed)]
        if self.networks != tuple(NETWORKS):
            parts += ["--networks", ",".join(self.networks)]
        return " ".join(parts + self.sampling.argv())

    def rows(self) -> list[tuple[str, str, int, int]]:
        """(network, sampler, budget, seed) of every evaluation row, in the order they run."""
        return [(n, s, b, k) for n in self.networks for s in NETWORKS[n].samplers for b in self.nfe for k in range(self.seeds)]


def row_key(network: str, sampler: str, budget: int, seed: int) -> str:
    return f"{network}|{sampler}|nfe{budget}|seed{seed}"


def grid_path(network: str, sampler: str, budget: int) -> str:
    """Where the sample grid of a row lives, relative to the bench folder."""
    return f"samples/{network}_{sampler}_nfe{budget}.png"
