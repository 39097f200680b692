"""When does difficulty-aware ordering help? The study behind ``docs/study.md``: ``run_study(out)``.

    patchforcing study --out study                 # the committed scale, about 40 CPU minutes
    patchforcing study --out /tmp/s --tiny         # seconds: a smoke test of the whole pipeline

Three Patch Forcing networks (ltg): the bench's digits network, a small network on 32x32 crops of the
bundled photographs, and a wider digits network. For each, four questions get numbers:

1. samples at one equal NFE budget with euler-pf, look-ahead, random-look-ahead, inverted-look-ahead
   (the hardest patches run ahead) and the study's own sampler ``spread-look-ahead``, over seeds;
2. the mechanism, "context helps": on held-out data, per time, the predicted and realised error of
   the patches left behind, before and after the others are advanced (``study_mechanism``);
3. which patches the difficulty mask advances (background vs strokes or texture), counted and drawn.

Writes into ``out``: ``runs/<network>/`` (training runs; a finished one is reused), ``results.json``
(every row, cached so that a rerun continues), ``study.md``, the figures under ``study/`` and
``run.lock`` (held by the one study running there).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchforcing.errors import ConfigError
from patchforcing.runs import RunFolder
from patchforcing.streams import EVAL_SEED_STRIDE


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
    context_ratios: tuple[float, ...] = (1.2, 1.4, 2.0)  # tried at p = 0.4
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
            raise ConfigError("p values must lie in (0, 1) and context ratios must be at least 1")
        if any(not 0 < t < 1 for t in self.mechanism_times):
            raise ConfigError(f"mechanism times {self.mechanism_times!r} must lie in (0, 1)")
        object.__setattr__(self, "nfe", tuple(sorted(set(self.nfe))))
        object.__setattr__(self, "networks", tuple(dict.fromkeys(self.networks)))

    @classmethod
    def create(cls, tiny: bool = False, **values: Any) -> "StudySettings":
        base = dict(TINY, tiny=True) if tiny else {}
        return cls(**{**base, **{k: v for k, v in values.items() if v is not None}})

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide a row's numbers (seeds, budgets, networks and samplers only add rows)."""
        keep = ("steps", "num_samples", "mechanism_images", "mechanism_times", "picture_images", "train_options")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in keep)}  # as JSON reads back

    def train_config(self, network: str, out: Path):
        from patchforcing.training import resolve_config

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


def sample_metrics(data: str, images, labels) -> dict[str, Any]:
    """FID, precision, recall (and accuracy on digits) in the data set's feature space."""
    from patchforcing.evaluation.digits import digits_metrics
    from patchforcing.evaluation.photos import photos_metrics

    metrics = digits_metrics(images, labels) if data == "digits" else photos_metrics(images)
    return {k: float(metrics[k]) if metrics.get(k) is not None else None for k in ("fid", "precision", "recall", "accuracy")}


def evaluate_study_row(model, data: str, *, sampler: str, nfe: int, num_samples: int, seed: int, batch_size: int):
    """Generate ``num_samples`` images within ``nfe`` network calls and score them (seeded as the bench)."""
    from patchforcing.evaluation.generate import generate_images
    from patchforcing.sampling import SamplingPlan

    plan = SamplingPlan.from_nfe(sampler, nfe)
    t0 = time.perf_counter()
    _, images, labels, info = generate_images(model, plan, num_samples=num_samples, seed=seed * EVAL_SEED_STRIDE,
                                              batch_size=batch_size)
    seconds = time.perf_counter() - t0
    row = {**sample_metrics(data, images, labels), "nfe": int(info["nfe"] or plan.nfe), "steps": plan.steps,
           "seconds": seconds}
    return row, images, labels


def held_out(network: str, count: int):
    """The first ``count`` held-out images of a network's data set and their labels (None if unconditional)."""
    from patchforcing.data import load_dataset

    data = load_dataset(NETWORKS[network].data, split="test")
    labels = data.labels[:count] if data.num_classes else None
    return data.images[:count], labels


def mechanism_configs(settings: StudySettings) -> list[tuple[float, float]]:
    """(p, context_ratio) pairs: every p at rho 1.4 and every rho at p 0.4 (each pair once)."""
    pairs = [(p, 1.4) for p in settings.p_values] + [(0.4, r) for r in settings.context_ratios]
    return list(dict.fromkeys(pairs))


def run_study(out: str | Path, settings: StudySettings | None = None, *, log=None, command: str | None = None) -> dict[str, Any]:
    """Train (or reuse) the networks, evaluate every row and the mechanism (or read them back), write the report.

    Args:
        out: the study folder.
        settings: a StudySettings (default: ``StudySettings()``).
        log: where progress lines go (``print`` by default).
        command: the command line to record (default: the equivalent ``patchforcing study`` command).
    Returns:
        The contents of ``results.json``.

    Raises:
        RunFolderError: another study runs in ``out`` (one per folder: both would rewrite ``results.json``).
    """
    from patchforcing.report.common import say
    from patchforcing.runtime import own_folder

    log = log or say
    with own_folder(out, log=log):
        return _study(Path(out), settings or StudySettings(), log, command)


def _study(out: Path, settings: StudySettings, log, command: str | None) -> dict[str, Any]:
    from patchforcing import load_model
    from patchforcing.report import study_report
    from patchforcing.report.common import RowCache, class_ordered, machine_info, training_facts
    from patchforcing.report.study_mechanism import context_effect, mask_composition, mask_picture
    from patchforcing.viz import grid, save_image_grid

    wall0, cpu0 = time.perf_counter(), time.process_time()
    cache = RowCache(out / "results.json", settings.fingerprint(), log)
    training: dict[str, Any] = dict(cache.doc.get("training") or {})
    for name in settings.networks:
        config = settings.train_config(name, out)
        summary = _train_or_reuse(config, log)
        previous = training.get(name, {})
        training[name] = {**training_facts(out / "runs" / name), "data": NETWORKS[name].data, "label": NETWORKS[name].label,
                          **_network_size(out / "runs" / name),
                          "wall_minutes": previous.get("wall_minutes") if summary["reused"] else summary["wall_minutes"]}
        cache.save(training=training)
    rows_todo = [(n, s, b, k) for n in settings.networks for s in settings.samplers for b in settings.nfe for k in range(settings.seeds)]
    for name in settings.networks:
        model = load_model(out / "runs" / name)
        data = "digits" if NETWORKS[name].data == "digits" else "photos"
        for network, sampler, budget, seed in [r for r in rows_todo if r[0] == name and row_key(*r) not in cache.rows]:
            c0 = time.process_time()
            row, images, labels = evaluate_study_row(model, data, sampler=sampler, nfe=budget, num_samples=settings.num_samples,
                                                     seed=seed, batch_size=settings.eval_batch_size)
            if seed == 0:
                shown = class_ordered(images, labels) if data == "digits" else images[:100]
                save_image_grid(shown, out / grid_path(network, sampler, budget), ncols=10, scale=3 if data == "digits" else 2)
            cache.put(row_key(network, sampler, budget, seed), {"network": network, "sampler": sampler, "budget": budget,
                                                                "seed": seed, **row, "cpu_seconds": time.process_time() - c0})
            log(f"{network} {sampler} NFE {row['nfe']}/{budget} seed {seed}: FID {row['fid']:.2f} precision "
                f"{row['precision']:.3f} recall {row['recall']:.3f} ({row['seconds']:.0f} s)")
        key = f"mechanism|{name}"
        if key not in cache.rows:
            c0 = time.process_time()
            x1, labels = held_out(name, settings.mechanism_images)
            effect = context_effect(model, x1, labels, times=settings.mechanism_times, configs=mechanism_configs(settings))
            composition = mask_composition(model, x1, labels, data, times=settings.mechanism_times)
            cache.put(key, {"context": effect, "composition": composition, "cpu_seconds": time.process_time() - c0})
            log(f"{name}: mechanism measured on {x1.shape[0]} held-out images ({time.process_time() - c0:.0f} CPU s)")
        x1, labels = held_out(name, settings.picture_images)
        tiles = mask_picture(model, x1, labels, times=(0.3, 0.6))
        grid(tiles, ncols=2, pad=2, scale=4 if data == "digits" else 3).save(_mkdir(out / f"study/masks_{name}.png"))
    results = {
        "settings": dataclasses.asdict(settings), "command": command or settings.command(out), "argv": sys.argv,
        "machine": machine_info(), "training": {n: training[n] for n in settings.networks},
        "rows": [cache.rows[row_key(*r)] for r in rows_todo],
        "mechanism": {n: cache.rows[f"mechanism|{n}"] for n in settings.networks},
        "minutes_this_run": (time.perf_counter() - wall0) / 60, "cpu_minutes_this_run": (time.process_time() - cpu0) / 60,
    }
    results["summary"] = study_report.aggregate(results["rows"])
    results["verdict"] = study_report.verdict(results["summary"], results["rows"], settings)
    results["figures"] = study_report.plot_all(out, results, settings)
    cache.save(**results)
    study_report.write_markdown(out, results, settings)
    log(f"wrote {out / 'study.md'} ({results['minutes_this_run']:.1f} min, {results['cpu_minutes_this_run']:.1f} CPU min)")
    return results


def _train_or_reuse(config, log) -> dict[str, Any]:
    """A run whose newest checkpoint is its last step is loaded as it is (the trainer is not started,
    so a run written by an older version of the package stays usable); any other run trains or resumes."""
    from patchforcing.report.common import newest_step, train_or_reuse

    if newest_step(Path(config.out)) == config.steps:
        log(f"reusing the finished run {config.out} ({config.steps} steps)")
        return {"reused": True, "wall_minutes": None}
    return train_or_reuse(config, log)


def _network_size(run_dir: Path) -> dict[str, Any]:
    """Depth, width and patch size of a trained network, read from its run's ``config.json``."""
    import json

    model = json.loads(RunFolder(run_dir).config.read_text()).get("model_config") or {}
    return {k: model.get(k) for k in ("depth", "hidden_size", "patch_size")}


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
