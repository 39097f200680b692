"""REPA and guidance beyond CFG on the bundled digits: the numbers of docs/repa_guidance.md.

    OMP_NUM_THREADS=1 python benchmarks/repa_guidance.py --out runs/repa_guidance

1. Trains two digits networks with the same seed, data order and steps, one without REPA and
   one with REPA on the shipped ``digits-cnn`` encoder (``patchforcing train --preset digits``).
   Rerunning resumes or skips finished runs.
2. REPA: FID / precision / recall / accuracy at equal NFE for ``euler-pf`` and ``look-ahead``
   over ``--seeds`` sampling seeds, and a learning curve (validation loss from metrics.jsonl,
   euler-pf FID at every checkpoint).
3. Guidance on the network without REPA at ``--nfe``: none, CFG, CFG within an interval, and
   autoguidance with the run's early checkpoint (``--weak-step``) as the weak network.

Writes ``OUT/results.json`` and ``OUT/results.md`` (the tables of the doc).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from patchforcing import load_model
from patchforcing.evaluation.digits import digits_metrics
from patchforcing.evaluation.generate import generate_images
from patchforcing.runs import checkpoint_path, list_checkpoints
from patchforcing.sampling import SamplingPlan
from patchforcing.streams import EVAL_SEED_STRIDE as SEED_STRIDE
from patchforcing.training import resolve_config, train

METRICS = ("fid", "precision", "recall", "accuracy")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/repa_guidance")
    p.add_argument("--steps", type=int, default=1500, help="training steps of both networks")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--repa-depth", type=int, default=1, help="block whose tokens REPA aligns")
    p.add_argument("--repa-projector-dim", type=int, default=256)
    p.add_argument("--repa-weight", type=float, default=0.5)
    p.add_argument("--nfe", type=int, default=32)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--interval", default="0.25,0.75", help="guidance interval LO,HI")
    p.add_argument("--weak-step", type=int, default=500, help="checkpoint of the same run used as the weak network")
    p.add_argument("--tables-only", action="store_true", help="rewrite OUT/results.md from OUT/results.json and stop")
    return p.parse_args()


def train_runs(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    common = dict(steps=args.steps, ckpt_every=args.ckpt_every, keep_checkpoints=100, val_every=args.ckpt_every,
                  sample_every=0, log_every=50, device="cpu")
    runs = {"no REPA": out / "base",
            "REPA": out / "repa"}
    extra = {"no REPA": {}, "REPA": dict(repa_encoder="digits-cnn", repa_depth=args.repa_depth,
                                          repa_projector_dim=args.repa_projector_dim, repa_weight=args.repa_weight)}
    for name, folder in runs.items():
        t0 = time.perf_counter()
        summary = train(resolve_config("digits", out=str(folder), **common, **extra[name]))
        print(f"[train] {name}: {summary['steps_run']} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return runs


def score(model, sampler: str, nfe: int, num_samples: int, seed: int, guide_model=None, **guidance: Any) -> dict[str, Any]:
    plan = SamplingPlan.from_keywords(sampler=sampler, nfe=nfe, **guidance)
    steps = plan.steps
    t0 = time.perf_counter()
    _, images, labels, info = generate_images(model, plan, num_samples=num_samples, seed=seed * SEED_STRIDE,
                                              batch_size=500, guide_model=guide_model)
    metrics = digits_metrics(images, labels)
    row = {k: float(metrics[k]) for k in METRICS if k in metrics}
    row.update(nfe=info["nfe"], guide_nfe=info.get("guide_nfe", 0), steps=steps, seconds=time.perf_counter() - t0)
    return row


def over_seeds(model, sampler: str, args: argparse.Namespace, **guidance: Any) -> dict[str, Any]:
    rows = [score(model, sampler, args.nfe, args.num_samples, s, **guidance) for s in range(args.seeds)]
    out = {"nfe": rows[0]["nfe"], "guide_nfe": rows[0]["guide_nfe"], "steps": rows[0]["steps"], "seeds": len(rows)}
    for k in METRICS:
        values = [r[k] for r in rows]
        out[k] = statistics.mean(values)
        out[k + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["seconds"] = sum(r["seconds"] for r in rows)
    return out


def learning_curve(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    val = {m["step"]: m["val_loss"] for m in lines if "val_loss" in m}
    repa = {m["step"]: m["repa_loss"] for m in lines if "repa_loss" in m}
    curve = []
    for ckpt in list_checkpoints(folder):
        step = int(ckpt.stem.split("-")[1])
        row = score(load_model(ckpt), "euler-pf", args.nfe, args.num_samples, 0)
        curve.append({"step": step, "val_loss": val.get(step), "repa_loss": repa.get(step), "fid": row["fid"]})
    return curve


def fmt(row: dict[str, Any], k: str) -> str:
    std = row.get(k + "_std")
    return f"{row[k]:.3f}" + (f" ± {std:.3f}" if row.get("seeds", 1) > 1 and std is not None else "")


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    out = [f"## REPA at NFE {args.nfe} ({args.seeds} sampling seeds x {args.num_samples} images, mean ± std)", "",
           "| network | sampler | steps | NFE | FID | precision | recall | accuracy |", "|---|---|---|---|---|---|---|---|"]
    for key, row in results["repa"].items():
        net, sampler = key.split(" / ")
        out.append(f"| {net} | {sampler} | {row['steps']} | {row['nfe']} | " + " | ".join(fmt(row, k) for k in METRICS) + " |")
    out += ["", "## Learning curve (EMA network; euler-pf FID at NFE 32, seed 0)", "",
            "| network | step | val loss | REPA loss (train) | FID |", "|---|---|---|---|---|"]
    for net, curve in results["curve"].items():
        for r in curve:
            val = "n/a" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
            rl = "n/a" if r["repa_loss"] is None else f"{r['repa_loss']:.3f}"
            out.append(f"| {net} | {r['step']} | {val} | {rl} | {r['fid']:.3f} |")
    out += ["", f"## Guidance at NFE {args.nfe} (network without REPA; {args.seeds} seeds x {args.num_samples} images)", "",
            "| guidance | sampler | NFE (main) | weak NFE | FID | precision | recall | accuracy |", "|---|---|---|---|---|---|---|---|"]
    for key, row in results["guidance"].items():
        name, sampler = key.split(" / ")
        out.append(f"| {name} | {sampler} | {row['nfe']} | {row['guide_nfe']} | " + " | ".join(fmt(row, k) for k in METRICS) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    args = parse()
    out = Path(args.out)
    if args.tables_only:
        results = json.loads((out / "results.json").read_text())
        (out / "results.md").write_text(markdown(results, argparse.Namespace(**results["args"])))
        return
    t_all = time.perf_counter()
    runs = train_runs(args, out)
    results: dict[str, Any] = {"args": vars(args), "repa": {}, "curve": {}, "guidance": {}}
    final = {name: load_model(folder) for name, folder in runs.items()}
    for name, model in final.items():
        for sampler in ("euler-pf", "look-ahead"):
            results["repa"][f"{name} / {sampler}"] = over_seeds(model, sampler, args)
            print(f"[repa] {name} / {sampler}: {results['repa'][f'{name} / {sampler}']}", flush=True)
    for name, folder in runs.items():
        results["curve"][name] = learning_curve(folder, args)
    base = final["no REPA"]
    weak = load_model(checkpoint_path(runs["no REPA"], args.weak_step))
    lo, hi = (float(v) for v in args.interval.split(","))
    w = args.cfg_scale
    settings = {
        "none": {},
        f"CFG w={w:g}": dict(cfg_scale=w),
        f"CFG w={w:g}, interval [{lo:g}, {hi:g}]": dict(cfg_scale=w, guidance_interval=(lo, hi)),
        f"autoguidance w={w:g} (weak: step {args.weak_step})": dict(cfg_scale=w, guide_model=weak),
    }
    for name, guidance in settings.items():
        for sampler in ("euler-pf", "look-ahead"):
            results["guidance"][f"{name} / {sampler}"] = over_seeds(base, sampler, args, **guidance)
            print(f"[guidance] {name} / {sampler}: {results['guidance'][f'{name} / {sampler}']}", flush=True)
    results["seconds_total"] = time.perf_counter() - t_all
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results, args))
    print(markdown(results, args))
    print(f"total {results['seconds_total'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
