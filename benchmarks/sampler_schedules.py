"""Time-grid schedules and second-order samplers at equal NFE on digits: writes ``docs/samplers.md``.

    # the bench's networks (``patchforcing bench --out bench`` trains them); about 50 CPU minutes (estimate)
    python benchmarks/sampler_schedules.py --pf-run bench/runs/pf-ltg --sit-run bench/runs/sit-uniform --out sched
    python benchmarks/sampler_schedules.py --tiny --out /tmp/sched       # seconds: tiny untrained networks

1. Tuning (once, then frozen in ``OUT/tuning.json``): the shift ``S`` of ``shift:S`` from
   ``--shifts`` and the ``RHO`` of ``edm:RHO`` from ``--rhos`` are each chosen by the lowest mean
   FID of the Patch Forcing network with ``--tune-samplers`` at the two smallest budgets, on the
   held-out evaluation seed ``HELD_OUT_SEED`` (never one of the measured seeds).
2. Measurement: every sampler x schedule (uniform, the frozen shift, the frozen edm) x budget x
   seed; the Patch Forcing network with ``PF_SAMPLERS``, the SiT baseline with Euler and Heun on the same
   schedules. One JSON row per (network, sampler, schedule, budget, seed) in ``OUT/rows``; a rerun
   of the same command skips the finished rows (resume).
3. Report: tables (FID, precision, recall; mean +- std over seeds), the rule below, the NFE each
   configuration needs to reach look-ahead's NFE-16 FID, and a FID-vs-NFE plot.

The rule (fixed before the run): a sampler or schedule becomes public only if it beats the paper's
best (look-ahead, uniform) at equal NFE on both data sets at two of the three budgets, in most
paired seeds (same seed = same noise and labels). This script measures digits; its verdict is the
digits half of the rule.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line  # noqa: E402
from patchforcing.errors import ConfigError  # noqa: E402
from patchforcing.evaluation.evaluate import evaluate_model  # noqa: E402
from patchforcing.report.common import fmt, machine_info, mean_std, parse_ints  # noqa: E402
from patchforcing.report.plots import PALETTE, panel_plot  # noqa: E402
from patchforcing.runs import atomic_write_text, newest_step  # noqa: E402
from patchforcing.sampling import SamplingPlan  # noqa: E402
from patchforcing.streams import EVAL_SEED_STRIDE  # noqa: E402

PF_SAMPLERS = ("euler-pf", "dual-loop", "look-ahead", "heun-pf", "look-ahead-heun", "corrected-look-ahead")
SIT_SAMPLERS = ("euler", "heun")
BASELINE = ("look-ahead", "uniform")  # the paper's best sampler on the paper's grid
TARGET_BUDGET = 16  # "reach look-ahead's NFE-16 FID"
HELD_OUT_SEED = 9  # tuning seed; the measured seeds are 0 .. seeds - 1
SHIFTS, RHOS = (1.5, 2.0, 3.0), (3.0, 5.0, 7.0)
TUNE_SAMPLERS = ("look-ahead", "heun-pf")
TINY = dict(num_samples=12, seeds=1, nfe=(4, 8), shifts=(1.5, 3.0), rhos=(3.0, 7.0), batch_size=16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pf-run", help="the Patch Forcing digits network (run folder or checkpoint), e.g. bench/runs/pf-ltg")
    ap.add_argument("--sit-run", help="the SiT digits baseline (run folder or checkpoint), e.g. bench/runs/sit-uniform")
    ap.add_argument("--out", required=True, help="folder of the cached rows, tuning.json and the plot")
    ap.add_argument("--doc", help="the report (default docs/samplers.md; OUT/samplers.md with --tiny)")
    ap.add_argument("--nfe", default=None, help="budgets, e.g. 8,16,32")
    ap.add_argument("--seeds", type=int, default=None, help="evaluation seeds per row (default 3)")
    ap.add_argument("--num-samples", type=int, default=None, help="images per row (default 1000)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--tiny", action="store_true", help="tiny untrained networks and a few images: a smoke test")
    args = ap.parse_args(argv)
    base = dict(TINY) if args.tiny else dict(num_samples=1000, seeds=3, nfe=(8, 16, 32), shifts=SHIFTS, rhos=RHOS)
    args.nfe = tuple(sorted(set(parse_ints(args.nfe, "nfe")))) if args.nfe else base["nfe"]
    args.seeds = args.seeds or base["seeds"]
    args.num_samples = args.num_samples or base["num_samples"]
    args.batch_size = base.get("batch_size", args.batch_size)
    args.shifts, args.rhos = base["shifts"], base["rhos"]
    if not args.tiny and not (args.pf_run and args.sit_run):
        raise ConfigError("pass --pf-run PATH and --sit-run PATH (the bench's runs/pf-ltg and runs/sit-uniform), or --tiny")
    if len(args.nfe) < 2:
        raise ConfigError("--nfe needs at least two budgets (the tuning uses the two smallest)")
    args.doc = Path(args.doc or (Path(args.out) / "samplers.md" if args.tiny else "docs/samplers.md"))
    return args


# --- networks ---------------------------------------------------------------------------------------
def tiny_network(kind: str) -> torch.nn.Module:
    """A 1-block width-32 network of digits' shape with seeded random weights (untrained)."""
    torch.manual_seed(0)
    net = pf.create_model("PF-XS/2" if kind == "pf" else "SiT-XS/2", depth=1, hidden_size=32, num_heads=2,
                          input_size=16, in_channels=1, num_classes=10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def load_networks(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, str]]:
    """``{"pf": (model, identity), "sit": (model, identity)}``; the identity goes into every row."""
    if args.tiny:
        return {"pf": (tiny_network("pf"), "tiny-pf"), "sit": (tiny_network("sit"), "tiny-sit")}
    nets = {}
    for name, path in (("pf", args.pf_run), ("sit", args.sit_run)):
        model = pf.load_model(path)
        step = newest_step(path) if Path(path).is_dir() else None
        nets[name] = (model, f"{Path(path).resolve()}@{step}")
    if not nets["pf"][0].config.has_difficulty_head or nets["sit"][0].config.has_difficulty_head:
        raise ConfigError("--pf-run must be a Patch Forcing network and --sit-run a SiT network; are they swapped?")
    return nets


# --- rows ---------------------------------------------------------------------------------------------
def row_path(out: Path, network: str, sampler: str, schedule: str, budget: int, seed: int) -> Path:
    return out / "rows" / f"{network}__{sampler}__{schedule.replace(':', '-')}__nfe{budget}__seed{seed}.json"


def get_row(out: Path, nets: dict, args: argparse.Namespace, network: str, sampler: str, schedule: str,
            budget: int, seed: int) -> dict[str, Any]:
    """The cached row, or a fresh evaluation written to its file (``evaluate_model``, digits metrics)."""
    path = row_path(out, network, sampler, schedule, budget, seed)
    model, identity = nets[network]
    fingerprint = {"network_id": identity, "num_samples": args.num_samples}
    if path.exists():
        row = json.loads(path.read_text())
        if all(row.get(k) == v for k, v in fingerprint.items()):
            return row
    plan = SamplingPlan.from_nfe(sampler, budget, schedule=schedule)  # the most steps whose exact NFE fits
    result = evaluate_model(model, plan, num_samples=args.num_samples, seed=seed * EVAL_SEED_STRIDE,
                            batch_size=args.batch_size)
    row = {"network": network, "sampler": sampler, "schedule": schedule, "budget": budget, "seed": seed, **fingerprint,
           **{k: result[k] for k in ("fid", "precision", "recall", "accuracy", "nfe", "steps", "seconds", "plan")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(row, indent=1) + "\n")
    print(f"{network} {sampler} {schedule} NFE {row['nfe']}/{budget} seed {seed}: FID {row['fid']:.3f} ({row['seconds']:.1f} s)",
          flush=True)
    return row


def tune(out: Path, nets: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Choose S and RHO on the held-out seed (read back from ``tuning.json`` once chosen: frozen)."""
    path = out / "tuning.json"
    if path.exists():
        return json.loads(path.read_text())
    budgets = args.nfe[:2]
    scores: dict[str, float] = {}
    for schedule in [f"shift:{s:g}" for s in args.shifts] + [f"edm:{r:g}" for r in args.rhos]:
        fids = [get_row(out, nets, args, "pf", s, schedule, b, HELD_OUT_SEED)["fid"] for s in TUNE_SAMPLERS for b in budgets]
        scores[schedule] = statistics.fmean(fids)
    best = {kind: min((s for s in scores if s.startswith(kind)), key=scores.get) for kind in ("shift", "edm")}
    doc = {"seed": HELD_OUT_SEED, "samplers": list(TUNE_SAMPLERS), "budgets": list(budgets), "mean_fid": scores,
           "shift": best["shift"], "edm": best["edm"]}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return doc


# --- analysis -----------------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> dict[tuple, dict[str, Any]]:
    """Mean and std over seeds per (network, sampler, schedule, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["network"], r["sampler"], r["schedule"], r["budget"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        entry: dict[str, Any] = {"nfe": rs[0]["nfe"], "seeds": len(rs), "fids": {r["seed"]: r["fid"] for r in rs}}
        for m in ("fid", "precision", "recall", "accuracy"):
            entry[m], entry[f"{m}_std"] = mean_std([r.get(m) for r in rs])
        out[key] = entry
    return out


def verdict(summary: dict, sampler: str, schedule: str, budgets: tuple[int, ...]) -> tuple[int, list[str]]:
    """Budgets at which (sampler, schedule) beats (look-ahead, uniform): lower mean FID and a lower
    FID in most paired seeds. Returns (budgets won, one note per budget)."""
    won, notes = 0, []
    for b in budgets:
        mine, base = summary.get(("pf", sampler, schedule, b)), summary.get(("pf", *BASELINE, b))
        if mine is None or base is None or mine["fid"] is None or base["fid"] is None:
            notes.append(f"{b}: n/a")
            continue
        paired = [s for s in mine["fids"] if s in base["fids"]]
        wins = sum(mine["fids"][s] < base["fids"][s] for s in paired)
        ok = mine["fid"] < base["fid"] and wins * 2 > len(paired)
        won += ok
        notes.append(f"{b}: {'win' if ok else 'no'} ({wins}/{len(paired)} seeds)")
    return won, notes


def nfe_to_reach(summary: dict, network: str, sampler: str, schedule: str, budgets: tuple[int, ...], target: float | None) -> str:
    """The NFE at which the mean FID first reaches ``target`` (interpolated in log NFE between budgets)."""
    pts = [(summary[k]["nfe"], summary[k]["fid"]) for b in budgets if (k := (network, sampler, schedule, b)) in summary
           and summary[k]["fid"] is not None]
    if target is None or not pts:
        return "n/a"
    if pts[0][1] <= target:
        return f"<= {pts[0][0]}"
    for (n0, f0), (n1, f1) in zip(pts, pts[1:], strict=False):
        if f1 <= target:
            frac = (f0 - target) / (f0 - f1)
            return f"~{math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))):.0f}"
    return f"> {pts[-1][0]}"


# --- report -------------------------------------------------------------------------------------------
def write_report(args, rows, tuning, schedules, plot_name: str, cpu_minutes: float) -> None:
    summary = summarize(rows)
    budgets = args.nfe
    target_budget = TARGET_BUDGET if TARGET_BUDGET in budgets else budgets[-1]
    base = summary.get(("pf", *BASELINE, target_budget))
    target = base["fid"] if base else None
    need = min(2, len(budgets))
    lines = ["# Samplers: time-grid schedules and second-order steps at equal NFE (digits)", "",
             "Every configuration gets the same budget of network evaluations per image (NFE); the number in "
             "brackets is the NFE actually used (a sampler takes the most outer steps that fit). FID, precision and "
             f"recall in the digit classifier's features, {args.num_samples} images per seed, mean ± std over "
             f"{args.seeds} seeds (the same noise and labels for every configuration of a seed). Method: `docs/method.md`.", "",
             f"Schedules chosen on the held-out seed {tuning['seed']} by the mean FID of {', '.join(tuning['samplers'])} at NFE "
             f"{', '.join(map(str, tuning['budgets']))}, then frozen: **{tuning['shift']}** and **{tuning['edm']}** "
             f"(candidates: {', '.join(f'{k} {v:.3f}' for k, v in tuning['mean_fid'].items())}).", ""]
    for network, samplers, title in (("pf", PF_SAMPLERS, "Patch Forcing network"), ("sit", SIT_SAMPLERS, "SiT baseline")):
        lines += [f"## {title}", "", "| sampler | schedule | " + " | ".join(f"FID @ {b}" for b in budgets)
                  + " | " + " | ".join(f"prec / rec @ {b}" for b in budgets) + " |",
                  "|---|---|" + "---:|" * (2 * len(budgets))]
        for sampler in samplers:
            for schedule in schedules:
                cells, pr = [], []
                for b in budgets:
                    e = summary.get((network, sampler, schedule, b))
                    cells.append("n/a" if e is None else f"{fmt(e['fid'], 2, e['fid_std'])} ({e['nfe']})")
                    pr.append("n/a" if e is None else f"{fmt(e['precision'], 3)} / {fmt(e['recall'], 3)}")
                lines.append(f"| {sampler} | {schedule} | " + " | ".join(cells) + " | " + " | ".join(pr) + " |")
        lines.append("")
    lines += [f"## The rule and the NFE to reach look-ahead's NFE-{target_budget} FID", "",
              f"Target: look-ahead on the uniform grid at NFE {target_budget}, FID {fmt(target)}. A configuration passes "
              f"the digits half of the rule when it wins at {need} of the {len(budgets)} budgets (lower mean FID and lower "
              "FID in most paired seeds). Nothing becomes public on digits alone: the photos half is not measured here.", "",
              "| sampler | schedule | budgets won | digits half | per budget | NFE to reach the target |",
              "|---|---|---:|---|---|---:|"]
    for sampler in PF_SAMPLERS:
        for schedule in schedules:
            if (sampler, schedule) == BASELINE:
                continue
            won, notes = verdict(summary, sampler, schedule, budgets)
            lines.append(f"| {sampler} | {schedule} | {won} of {len(budgets)} | {'passes' if won >= need else 'fails'} | "
                         f"{'; '.join(notes)} | "
                         f"{nfe_to_reach(summary, 'pf', sampler, schedule, budgets, target)} |")
    lines += ["", f"![FID against NFE]({plot_name})", "",
              f"Command: `{command_line()}`. Sampling and metrics of the rows made by this invocation: "
              f"{cpu_minutes:.1f} CPU min; summed over every row in the cache: "
              f"{sum(r['seconds'] for r in rows) / 60:.1f} min. Machine: {machine_info()['cpu']}, "
              f"{torch.get_num_threads()} torch thread(s).", ""]
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.doc, "\n".join(lines))


def plot(path: Path, rows: list[dict], schedules: list[str]) -> Path:
    """One panel per schedule: FID (mean over seeds) against the NFE used, one line per sampler."""
    summary = summarize(rows)
    panels = []
    for schedule in schedules:
        series = []
        for i, (network, sampler) in enumerate([("sit", s) for s in SIT_SAMPLERS] + [("pf", s) for s in PF_SAMPLERS]):
            pts = sorted((e["nfe"], e["fid"], e["fid_std"]) for (n, s, sc, _), e in summary.items()
                         if (n, s, sc) == (network, sampler, schedule))
            style = {"color": PALETTE[i % len(PALETTE)], "linestyle": "--" if network == "sit" else "-"}
            series.append((f"{network} / {sampler}", [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], style))
        panels.append((schedule, series))
    return panel_plot(path, panels, xlabel="NFE per image", ylabel="FID (lower is better)", logy=True,
                      suptitle="FID against NFE on digits, per time-grid schedule")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        nets = load_networks(args)
        t0 = time.process_time()
        tuning = tune(out, nets, args)
        schedules = ["uniform", tuning["shift"], tuning["edm"]]
        todo = [(n, s, sc, b, k) for n, samplers in (("pf", PF_SAMPLERS), ("sit", SIT_SAMPLERS)) for s in samplers
                for sc in schedules for b in args.nfe for k in range(args.seeds)]
        rows = [get_row(out, nets, args, *key) for key in todo]
        plot_path = plot(args.doc.parent / "samplers" / "fid_vs_nfe.png", rows, schedules)
        write_report(args, rows, tuning, schedules, os.path.relpath(plot_path, args.doc.parent),
                     (time.process_time() - t0) / 60)
        print(f"wrote {args.doc} and {plot_path}")
        return 0
    except pf.PatchForcingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
