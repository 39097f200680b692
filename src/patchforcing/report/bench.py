"""The equal-compute benchmark of the paper (docs/method.md, samplers) at a scale a 2-core CPU trains: ``run_bench(out)``.

    patchforcing bench --out bench                 # the default settings, about an hour on 2 CPU cores
    patchforcing bench --out /tmp/b --tiny         # seconds: a smoke test of the whole pipeline

Four networks with matched compute (same size, steps, batch, seed and data order) on ``digits``:
the global-time SiT baseline (``uniform`` t), Patch Forcing with ``ltg`` (the paper's), and the
ablations Patch Forcing with ``uniform-patch`` and with ``srm``. Every network is sampled at equal
NFE budgets (Euler for SiT; euler-pf, dual-loop, look-ahead and the random-mask ablations for
Patch Forcing), over several evaluation seeds. Writes into ``out``::

    runs/<network>/         the training runs (a finished run is reused, a shorter one resumed)
    results.json            settings, machine, training facts, every row, the aggregates, the reading
    results.md              the tables, the exact command and an automatic reading of the orderings
    fid_vs_nfe.png          FID against NFE, one line per network and sampler
    samples/*.png           one grid per (network, sampler, budget), evaluation seed 0
    run.lock                held by the one bench running here (each training holds runs/<network>/run.lock)

An interrupted bench resumes: finished rows are read back from ``results.json``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchforcing.errors import ConfigError
from patchforcing.sampling import SAMPLERS
from patchforcing.report.common import (
    METRICS,
    RowCache,
    SamplingSettings,
    min_budget,
    class_ordered,
    evaluate_row,
    machine_info,
    mean_over_seeds,
    say,
    train_or_reuse,
    training_facts,
)

# Per network kind, every public sampler it can run (the registry says which need per-patch time).
PF_SAMPLERS = tuple(n for n, s in SAMPLERS.items() if s.needs_per_patch_time)
SIT_SAMPLERS = tuple(n for n, s in SAMPLERS.items() if not s.needs_per_patch_time)


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
    def create(cls, tiny: bool = False, **values: Any) -> "BenchSettings":
        """Defaults (or the tiny ones), then ``values`` (None means: keep the default)."""
        base = dict(TINY, tiny=True) if tiny else {}
        return cls(**{**base, **{k: v for k, v in values.items() if v is not None}})

    def _fill_from_preset(self) -> None:
        """Replace the None training fields by the `digits` preset's values (explicit ones for every
        network: a SiT model would otherwise drop the preset's PF size overrides)."""
        from patchforcing.models import PRESETS as MODEL_PRESETS
        from patchforcing.training import resolve_config

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
        from patchforcing.training import resolve_config

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


def run_bench(out: str | Path, settings: BenchSettings | None = None, *, log=say, command: str | None = None) -> dict[str, Any]:
    """Train (or reuse) the networks, evaluate every row (or read it back), write the reports.

    Args:
        out: the bench folder.
        settings: a BenchSettings (default: ``BenchSettings()``).
        log: where progress lines go (``print`` by default).
        command: the command line to record (default: the equivalent ``patchforcing bench`` command).
    Returns:
        The contents of ``results.json`` (``rows``, ``summary``, ``reading``, ``training``, ...).

    Raises:
        RunFolderError: another bench runs in ``out`` (one per folder; each training locks its own
            ``runs/<network>`` folder).
    """
    from patchforcing.runtime import own_folder

    with own_folder(out, log=log):
        return _bench(Path(out), settings or BenchSettings(), log, command)


def _bench(out: Path, settings: BenchSettings, log, command: str | None) -> dict[str, Any]:
    from patchforcing import load_model
    from patchforcing.report import bench_report
    from patchforcing.viz import save_image_grid

    t0 = time.perf_counter()
    cache = RowCache(out / "results.json", settings.fingerprint(), log)
    training: dict[str, Any] = dict(cache.doc.get("training") or {})
    for name in settings.networks:  # train first: an early failure costs no sampling time
        summary = train_or_reuse(settings.train_config(name, out), log)
        previous = training.get(name, {})
        fresh = not summary["reused"]
        training[name] = {**training_facts(out / "runs" / name), "model": NETWORKS[name].model, "timesteps": NETWORKS[name].timesteps,
                          "wall_minutes": summary["wall_minutes"] if fresh else previous.get("wall_minutes"), "reused": summary["reused"]}
        cache.save(training=training)
    todo = [r for r in settings.rows() if row_key(*r) not in cache.rows]
    log(f"{len(settings.rows()) - len(todo)} of {len(settings.rows())} evaluation rows already done; {len(todo)} to go")
    models: dict[str, Any] = {}
    started, done = time.perf_counter(), 0
    for network, sampler, budget, seed in todo:
        if network not in models:
            models.clear()
            models[network] = load_model(out / "runs" / network)
        row, images, labels = evaluate_row(models[network], sampler=sampler, nfe=budget, num_samples=settings.num_samples,
                                           plan=settings.sampling.plan(sampler, budget),
                                           seed=seed, batch_size=settings.eval_batch_size)
        if seed == 0:
            save_image_grid(class_ordered(images, labels), out / grid_path(network, sampler, budget), ncols=10, scale=3)
        cache.put(row_key(network, sampler, budget, seed), {"network": network, "sampler": sampler, "budget": budget, "seed": seed, **row})
        done += 1
        eta = (time.perf_counter() - started) / done * (len(todo) - done) / 60
        log(f"[{done}/{len(todo)}] {network} {sampler} NFE {row['nfe']}/{budget} seed {seed}: FID {row['fid']:.2f}, "
            f"precision {row['precision']:.3f}, recall {row['recall']:.3f}, accuracy {row['accuracy']:.3f} "
            f"({row['seconds']:.0f} s; about {eta:.1f} min left)")
    rows = [cache.rows[row_key(*r)] for r in settings.rows()]
    summary = aggregate(rows)
    results = {
        "settings": dataclasses.asdict(settings), "command": command or settings.command(out), "argv": sys.argv,
        "machine": machine_info(), "training": {n: training[n] for n in settings.networks}, "rows": rows,
        "summary": summary, "reading": bench_report.reading(summary, rows, settings),
        "minutes_this_run": (time.perf_counter() - t0) / 60,
    }
    results["plot"] = bench_report.plot_fid(out, summary, settings)
    cache.save(**results)
    bench_report.write_markdown(out, results, settings)
    results["minutes_this_run"] = (time.perf_counter() - t0) / 60
    log(f"wrote {out / 'results.md'} ({results['minutes_this_run']:.1f} min)")
    return results


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (network, sampler, budget), in first-seen order, with its grid."""
    return mean_over_seeds(rows, (*METRICS, "sec_per_1000"), grid=grid_path)
