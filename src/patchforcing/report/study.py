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
from pathlib import Path
from typing import Any

from patchforcing.checkpoints import load_model
from patchforcing.data import load_dataset
from patchforcing.evaluation.digits import digits_metrics
from patchforcing.evaluation.generate import generate_images
from patchforcing.evaluation.photos import photos_metrics
from patchforcing.json_files import read_json
from patchforcing.report import study_report
from patchforcing.report.common import RowCache, class_ordered, machine_info, newest_step, say, train_or_reuse, training_facts
from patchforcing.report.study_mechanism import context_effect, mask_composition, mask_picture
from patchforcing.report.study_settings import (
    NETWORKS,
    SAMPLERS,
    TINY,
    StudyNetwork,
    StudySettings,
    grid_path,
    row_key,
)
from patchforcing.runs import RunFolder
from patchforcing.runtime import own_folder
from patchforcing.sampling import SamplingPlan
from patchforcing.streams import EVAL_SEED_STRIDE
from patchforcing.viz import grid, save_image_grid

__all__ = ["NETWORKS", "SAMPLERS", "TINY", "StudyNetwork", "StudySettings", "grid_path", "row_key", "run_study"]


def sample_metrics(data: str, images, labels) -> dict[str, Any]:
    """FID, precision, recall (and accuracy on digits) in the data set's feature space."""
    metrics = digits_metrics(images, labels) if data == "digits" else photos_metrics(images)
    return {k: float(metrics[k]) if metrics.get(k) is not None else None for k in ("fid", "precision", "recall", "accuracy")}


def evaluate_study_row(model, data: str, *, sampler: str, nfe: int, num_samples: int, seed: int, batch_size: int):
    """Generate ``num_samples`` images within ``nfe`` network calls and score them (seeded as the bench)."""
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
    log = log or say
    with own_folder(out, log=log):
        return _study(Path(out), settings or StudySettings(), log, command)


def _study(out: Path, settings: StudySettings, log, command: str | None) -> dict[str, Any]:
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
    if newest_step(Path(config.out)) == config.steps:
        log(f"reusing the finished run {config.out} ({config.steps} steps)")
        return {"reused": True, "wall_minutes": None}
    return train_or_reuse(config, log)


def _network_size(run_dir: Path) -> dict[str, Any]:
    """Depth, width and patch size of a trained network, read from its run's ``config.json``."""
    model = read_json(RunFolder(run_dir).config).get("model_config") or {}
    return {k: model.get(k) for k in ("depth", "hidden_size", "patch_size")}


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
