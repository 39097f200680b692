"""The demo: train the default Patch Forcing network on digits, compare every sampler at one equal
NFE budget, and write a report to look at: ``run_demo(out)``.

    patchforcing demo --out demo          # about 5 minutes on a 2-core CPU; then open demo/index.html
    patchforcing demo --out /tmp/d --tiny # seconds: a smoke test of the whole pipeline

Writes into ``out``::

    run/                 the training run (the ``digits`` preset; a finished run is reused)
    index.html           the report (self-contained HTML + the local files below)
    samples/<sampler>.png, animations/<sampler>.gif, training_curve.png
    results.json         metrics per sampler, calibration, settings, machine (finished rows are reused)
    run.lock             held by the one demo running here (the training holds run/run.lock)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchforcing.checkpoints import load_model
from patchforcing.data import load_dataset
from patchforcing.errors import ConfigError
from patchforcing.evaluation.calibration import difficulty_calibration
from patchforcing.report import animation, html
from patchforcing.report.common import (
    RowCache,
    SamplingSettings,
    class_ordered,
    evaluate_row,
    machine_info,
    min_budget,
    read_metrics,
    say,
    train_or_reuse,
    training_facts,
)
from patchforcing.report.plots import training_curve
from patchforcing.runs import newest_step
from patchforcing.runtime import own_folder
from patchforcing.sampling import PAPER_SAMPLERS, SAMPLERS
from patchforcing.training import resolve_config
from patchforcing.viz import save_image_grid

ANIMATED = ("look-ahead", "dual-loop", "euler-pf")  # adaptive samplers, and plain Euler to compare with

# A seconds-long configuration for tests: a 1-block, width-32 network, a few steps, few samples.
TINY: dict[str, Any] = dict(steps=6, num_samples=20, nfe=8, animation_samples=3,
                            train_options=dict(batch_size=16, depth=1, hidden_size=32, num_heads=2, log_every=2,
                                               val_every=3, val_size=32, ckpt_every=0, sample_every=0,
                                               warmup_steps=1, ema_decay=0.0, lr=3e-3))


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo depends on besides the ``digits`` training preset."""

    steps: int | None = None  # training steps; None: the digits preset's
    num_samples: int = 1000  # images per sampler for the metrics (~15-20 s per 1,000 at NFE 32): keeps make demo < 10 min
    nfe: int = 32  # the equal-compute budget every sampler gets (network evaluations per image)
    animation_samples: int = 6  # digits shown in each animation
    samplers: tuple[str, ...] = tuple(PAPER_SAMPLERS)
    eval_batch_size: int = 250  # images per sampling batch (does not change the images)
    tiny: bool = False
    train_options: dict = field(default_factory=dict)  # extra TrainConfig fields (the tiny run's network and intervals)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)  # sampler options, guidance and time grid of every row

    def __post_init__(self) -> None:
        for name in ("num_samples", "nfe", "animation_samples", "eval_batch_size") + (("steps",) if self.steps is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if self.num_samples < 10:
            raise ConfigError(f"--num-samples {self.num_samples}: the metrics need at least 10 images per sampler")
        unknown = [s for s in self.samplers if s not in SAMPLERS]
        if unknown or not self.samplers:
            raise ConfigError(f"unknown sampler(s) {unknown or '(none given)'}; choose from: {', '.join(SAMPLERS)}")
        if isinstance(self.sampling, dict):
            object.__setattr__(self, "sampling", SamplingSettings(**self.sampling))
        self.sampling.check(self.samplers)
        smallest = min_budget(self.samplers)
        if self.nfe < smallest:
            raise ConfigError(f"--nfe {self.nfe} is below {smallest}, the smallest budget every sampler fits "
                              f"(one step of each); use {smallest} or more")

    @classmethod
    def create(cls, tiny: bool = False, **values: Any) -> DemoSettings:
        """Defaults (or the tiny ones), then ``values`` (None means: keep the default)."""
        base = dict(TINY, tiny=True) if tiny else {}
        return cls(**{**base, **{k: v for k, v in values.items() if v is not None}})

    def train_config(self, out: Path):
        steps = {"steps": self.steps} if self.steps is not None else {}
        return resolve_config("digits", out=str(out / "run"), **steps, **self.train_options)

    def command(self, out: Path) -> str:
        parts = ["patchforcing", "demo", "--out", str(out)] + (["--tiny"] if self.tiny else [])
        parts += (["--steps", str(self.steps)] if self.steps is not None else [])
        parts += ["--num-samples", str(self.num_samples), "--nfe", str(self.nfe)]
        parts += ["--samplers", ",".join(self.samplers)] if self.samplers != tuple(PAPER_SAMPLERS) else []
        return " ".join(parts + self.sampling.argv())


def run_demo(out: str | Path = "demo", settings: DemoSettings | None = None, *, log=say) -> dict[str, Any]:
    """Train (or reuse) the network, sample with every sampler, write ``index.html``.

    Returns:
        The contents of ``results.json`` plus ``index`` (the report's path) and ``minutes``.

    Raises:
        RunFolderError: another demo runs in ``out`` (one per folder; the training locks ``run/``).
    """
    with own_folder(out, log=log):
        return _demo(Path(out), settings or DemoSettings(), log)


def _demo(out: Path, settings: DemoSettings, log) -> dict[str, Any]:
    t0 = time.perf_counter()
    config = settings.train_config(out)
    trained = train_or_reuse(config, log)
    model = load_model(out / "run")
    fingerprint = {"steps": config.steps, "checkpoint_step": newest_step(out / "run"), "num_samples": settings.num_samples,
                   "nfe": settings.nfe, "train_options": settings.train_options, **settings.sampling.fingerprint()}
    cache = RowCache(out / "results.json", fingerprint, log)
    for sampler in settings.samplers:
        if sampler in cache.rows:
            continue
        row, images, labels = evaluate_row(model, sampler=sampler, nfe=settings.nfe, num_samples=settings.num_samples,
                                           plan=settings.sampling.plan(sampler, settings.nfe),
                                           seed=0, batch_size=settings.eval_batch_size)
        save_image_grid(class_ordered(images, labels), out / "samples" / f"{sampler}.png", ncols=10, scale=3)
        cache.put(sampler, {"sampler": sampler, **row, "grid": f"samples/{sampler}.png"})
        log(f"{sampler}: NFE {row['nfe']} ({row['steps']} steps), FID {row['fid']:.2f}, precision {row['precision']:.3f}, "
            f"recall {row['recall']:.3f}, accuracy {row['accuracy']:.3f}, {row['sec_per_1000']:.0f} s per 1,000 images")
    calibration = _calibration(model)
    curve = training_curve(out / "training_curve.png", *read_metrics(out / "run"), title="training on digits")
    animations = {}
    for sampler in [s for s in ANIMATED if s in settings.samplers]:
        frames, final, info = animation.record(model, sampler, settings.nfe, settings.animation_samples,
                                               plan=settings.sampling.plan(sampler, settings.nfe))
        gif = animation.trajectory_gif(frames, final, out / "animations" / f"{sampler}.gif", title=sampler)
        animations[sampler] = {"path": f"animations/{gif.name}", "frames": len(frames) + 1, "nfe": info["nfe"], "steps": info["steps"]}
    facts = training_facts(out / "run")
    facts.update(wall_minutes=None if trained["reused"] else trained["wall_minutes"], reused=trained["reused"],
                 model=config.model, timesteps=config.timestep_name, batch_size=config.batch_size,
                 parameters=sum(p.numel() for p in model.parameters()), model_config=model.config.to_dict())
    results = {
        "settings": dataclasses.asdict(settings), "command": settings.command(out), "run": (out / "run").as_posix(),
        "machine": machine_info(),
        "training": facts, "rows": [cache.rows[s] for s in settings.samplers], "calibration": calibration,
        "animations": animations, "training_curve": curve.name,
    }
    results["minutes"] = (time.perf_counter() - t0) / 60
    index = html.write_demo_page(out, results)
    cache.save(**results)
    results["index"] = str(index)
    log(f"open {index.resolve()}  ({results['minutes']:.1f} min)")
    return results


def _calibration(model) -> list[dict[str, float]]:
    """Difficulty-head calibration on the held-out digits (correlations per time)."""
    test = load_dataset("digits", split="test")
    return difficulty_calibration(model, test.images, labels=test.labels)
