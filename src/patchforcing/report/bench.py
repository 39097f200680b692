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
from pathlib import Path
from typing import Any

from patchforcing.checkpoints import load_model
from patchforcing.report import bench_report
from patchforcing.report.bench_settings import NETWORKS, TINY, BenchSettings, Network, grid_path, row_key
from patchforcing.report.common import (
    METRICS,
    RowCache,
    class_ordered,
    evaluate_row,
    machine_info,
    mean_over_seeds,
    say,
    train_or_reuse,
    training_facts,
)
from patchforcing.runtime import own_folder
from patchforcing.viz import save_image_grid

__all__ = ["NETWORKS", "TINY", "BenchSettings", "Network", "aggregate", "grid_path", "row_key", "run_bench"]

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
    with own_folder(out, log=log):
        return _bench(Path(out), settings or BenchSettings(), log, command)


def _bench(out: Path, settings: BenchSettings, log, command: str | None) -> dict[str, Any]:
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
