"""Time-grid schedules and second-order samplers at equal NFE on digits and photos: writes ``docs/samplers.md``.

    # digits: the bench's networks (``patchforcing bench --out bench --networks sit-uniform,pf-ltg``);
    # photos: the study's photos network and its SiT twin (the two ``patchforcing train`` commands in
    # docs/samplers.md). About 45 CPU minutes for digits and 25 for photos, cached rows resume.
    python benchmarks/sampler_schedules.py --pf-run bench/runs/pf-ltg --sit-run bench/runs/sit-uniform \
        --photos-pf-run photos/runs/pf --photos-sit-run photos/runs/sit --out sched
    python benchmarks/sampler_schedules.py --tiny --out /tmp/sched       # seconds: tiny untrained networks

1. Tuning (once, then frozen in ``OUT/tuning.json`` and used for both data sets): the shift ``ALPHA``
   of ``shift:ALPHA`` from ``SHIFTS`` and the ``RHO`` of ``edm:RHO`` from ``RHOS`` are each chosen by
   the lowest mean FID of the digits Patch Forcing network with ``TUNE_SAMPLERS`` at the two
   smallest budgets, on the held-out evaluation seed ``HELD_OUT_SEED`` (never one of the measured seeds).
2. Measurement, per data set: every sampler x schedule (uniform, the frozen shift, the frozen edm)
   x budget x seed; the Patch Forcing network with ``PF_SAMPLERS``, the SiT baseline with Euler and
   Heun on the same schedules. Digits are scored in the digit classifier's features (1000 images
   per row), photos in the study's photo features (``evaluation/photos.py``, 500 images per row).
   One JSON row per (network, sampler, schedule, budget, seed) in ``OUT/rows``; a rerun of the
   same command skips the finished rows (resume). ``--photos-pf-early CKPT[,CKPT...]`` adds
   euler-pf and look-ahead rows (uniform grid) of earlier checkpoints of the photos network: does
   training longer change whether look-ahead pays?
3. Report: tables (FID, precision, recall; mean +- std over seeds), the rule below, the NFE each
   configuration needs to reach look-ahead's NFE-16 FID, and a FID-vs-NFE plot.

The rule (fixed before the run): a sampler or schedule becomes public only if it beats the paper's
best (look-ahead, uniform) at equal NFE on both data sets at two of the three budgets, in most
paired seeds (same seed = same noise and labels). Without the photos networks the report gives
the digits half only.
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
from patchforcing.evaluation.generate import generate_images  # noqa: E402
from patchforcing.evaluation.photos import photos_metrics  # noqa: E402
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
TINY = dict(num_samples=12, photos_num_samples=12, seeds=1, nfe=(4, 8), shifts=(1.5, 3.0), rhos=(3.0, 7.0), batch_size=16)
EARLY_SAMPLERS = ("euler-pf", "look-ahead")  # the rows of --photos-pf-early (uniform grid)
EARLY = "photos-pf-early"  # network keys photos-pf-early1, photos-pf-early2, ... (one per --photos-pf-early checkpoint)
# network key -> data set; the digits keys stay "pf" and "sit" (the names of the rows cached before photos existed)
DATASET = {"pf": "digits", "sit": "digits", "photos-pf": "photos", "photos-sit": "photos"}


def dataset_of(network: str) -> str:
    return "photos" if network.startswith(EARLY) else DATASET[network]
PF_KEY = {"digits": "pf", "photos": "photos-pf"}
SIT_KEY = {"digits": "sit", "photos": "photos-sit"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pf-run", help="the Patch Forcing digits network (run folder or checkpoint), e.g. bench/runs/pf-ltg")
    ap.add_argument("--sit-run", help="the SiT digits baseline (run folder or checkpoint), e.g. bench/runs/sit-uniform")
    ap.add_argument("--photos-pf-run", help="the Patch Forcing photos network (run folder or checkpoint), e.g. photos/runs/pf")
    ap.add_argument("--photos-sit-run", help="the SiT photos baseline (run folder or checkpoint), e.g. photos/runs/sit")
    ap.add_argument("--photos-pf-early", help="earlier checkpoints of the photos Patch Forcing network, comma-separated "
                    "(euler-pf and look-ahead rows on the uniform grid)")
    ap.add_argument("--out", required=True, help="folder of the cached rows, tuning.json and the plot")
    ap.add_argument("--doc", help="the report (default docs/samplers.md; OUT/samplers.md with --tiny)")
    ap.add_argument("--nfe", default=None, help="budgets, e.g. 8,16,32")
    ap.add_argument("--seeds", type=int, default=None, help="evaluation seeds per row (default 3)")
    ap.add_argument("--num-samples", type=int, default=None, help="images per digits row (default 1000)")
    ap.add_argument("--photos-num-samples", type=int, default=None, help="images per photos row (default 500)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--tiny", action="store_true", help="tiny untrained networks and a few images: a smoke test")
    args = ap.parse_args(argv)
    base = dict(TINY) if args.tiny else dict(num_samples=1000, photos_num_samples=500, seeds=3, nfe=(8, 16, 32), shifts=SHIFTS,
                                             rhos=RHOS)
    args.nfe = tuple(sorted(set(parse_ints(args.nfe, "nfe")))) if args.nfe else base["nfe"]
    args.seeds = args.seeds or base["seeds"]
    args.num_samples = args.num_samples or base["num_samples"]
    args.photos_num_samples = args.photos_num_samples or base["photos_num_samples"]
    args.batch_size = base.get("batch_size", args.batch_size)
    args.shifts, args.rhos = base["shifts"], base["rhos"]
    if not args.tiny and not (args.pf_run and args.sit_run):
        raise ConfigError("pass --pf-run PATH and --sit-run PATH (the bench's runs/pf-ltg and runs/sit-uniform), or --tiny")
    if not args.tiny and bool(args.photos_pf_run) != bool(args.photos_sit_run):
        raise ConfigError("pass both --photos-pf-run and --photos-sit-run (the photos networks), or neither")
    if args.photos_pf_early and not args.photos_pf_run:
        raise ConfigError("--photos-pf-early compares with --photos-pf-run; pass that too")
    if len(args.nfe) < 2:
        raise ConfigError("--nfe needs at least two budgets (the tuning uses the two smallest)")
    args.doc = Path(args.doc or (Path(args.out) / "samplers.md" if args.tiny else "docs/samplers.md"))
    return args


# --- networks ---------------------------------------------------------------------------------------
def tiny_network(kind: str, data: str = "digits") -> torch.nn.Module:
    """A 1-block width-32 network of the data set's shape with seeded random weights (untrained)."""
    torch.manual_seed(0)
    shape = dict(input_size=16, in_channels=1, num_classes=10) if data == "digits" else \
        dict(input_size=32, in_channels=3, num_classes=8, patch_size=4)
    net = pf.create_model("PF-XS/2" if kind == "pf" else "SiT-XS/2", depth=1, hidden_size=32, num_heads=2, **shape)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def load_networks(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, str, str]]:
    """``{key: (model, identity, label)}`` for the networks given: the identity (resolved path @ step)
    goes into every row, the label (the path as given on the command line) into the report."""
    if args.tiny:
        kinds = {"pf": ("pf", "digits"), "sit": ("sit", "digits"), "photos-pf": ("pf", "photos"), "photos-sit": ("sit", "photos")}
        return {key: (tiny_network(*kind), f"tiny-{key}", f"tiny-{key}") for key, kind in kinds.items()}
    nets = {}
    flags = {"pf": ("--pf-run", args.pf_run), "sit": ("--sit-run", args.sit_run),
             "photos-pf": ("--photos-pf-run", args.photos_pf_run), "photos-sit": ("--photos-sit-run", args.photos_sit_run)}
    early = [p for p in (args.photos_pf_early or "").split(",") if p]
    flags.update({f"{EARLY}{i}": ("--photos-pf-early", p) for i, p in enumerate(early, start=1)})
    for name, (flag, path) in flags.items():
        if not path:
            continue
        model = pf.load_model(path)
        step = newest_step(path) if Path(path).is_dir() else None
        nets[name] = (model, f"{Path(path).resolve()}@{step}", path if step is None else f"{path} (step {step})")
        wants_pf = not name.endswith("sit")
        if model.config.has_difficulty_head != wants_pf:
            raise ConfigError(f"{flag} must be a {'Patch Forcing' if wants_pf else 'SiT'} network; are --*-pf-run and --*-sit-run swapped?")
        channels = model.config.in_channels
        if (dataset_of(name) == "digits") != (channels == 1):
            raise ConfigError(f"{path} has {channels} input channel(s), which does not fit the {dataset_of(name)} data; check {flag}")
    return nets


def label(nets: dict, network: str) -> str:
    return nets[network][2]


def datasets(nets: dict) -> list[str]:
    """The data sets measured in this run (digits first)."""
    return [d for d in ("digits", "photos") if PF_KEY[d] in nets]


# --- rows ---------------------------------------------------------------------------------------------
def row_path(out: Path, network: str, sampler: str, schedule: str, budget: int, seed: int) -> Path:
    return out / "rows" / f"{network}__{sampler}__{schedule.replace(':', '-')}__nfe{budget}__seed{seed}.json"


def score_photos(model: torch.nn.Module, plan: SamplingPlan, num_samples: int, seed: int, batch_size: int) -> dict[str, Any]:
    """The study's photos row (balanced labels, ``generate_images``, photo features) on any plan."""
    t0 = time.perf_counter()
    _, images, _, info = generate_images(model, plan, num_samples=num_samples, seed=seed, batch_size=batch_size)
    metrics = photos_metrics(images)
    return {"fid": float(metrics["fid"]), "precision": float(metrics["precision"]), "recall": float(metrics["recall"]),
            "accuracy": None, "nfe": int(info["nfe"] or plan.nfe), "steps": plan.steps, "seconds": time.perf_counter() - t0,
            "plan": plan.to_json()}


def get_row(out: Path, nets: dict, args: argparse.Namespace, network: str, sampler: str, schedule: str,
            budget: int, seed: int) -> dict[str, Any]:
    """The cached row, or a fresh evaluation written to its file (digits: ``evaluate_model``; photos: ``score_photos``)."""
    path = row_path(out, network, sampler, schedule, budget, seed)
    model, identity, _ = nets[network]
    photos = dataset_of(network) == "photos"
    fingerprint = {"network_id": identity, "num_samples": args.photos_num_samples if photos else args.num_samples}
    if path.exists():
        row = json.loads(path.read_text())
        if all(row.get(k) == v for k, v in fingerprint.items()):
            return row
    plan = SamplingPlan.from_nfe(sampler, budget, schedule=schedule)  # the most steps whose exact NFE fits
    if photos:
        result = score_photos(model, plan, fingerprint["num_samples"], seed * EVAL_SEED_STRIDE, args.batch_size)
    else:
        result = evaluate_model(model, plan, num_samples=args.num_samples, seed=seed * EVAL_SEED_STRIDE, batch_size=args.batch_size)
    row = {"network": network, "sampler": sampler, "schedule": schedule, "budget": budget, "seed": seed, **fingerprint,
           **{k: result[k] for k in ("fid", "precision", "recall", "accuracy", "nfe", "steps", "seconds", "plan")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(row, indent=1) + "\n")
    print(f"{network} {sampler} {schedule} NFE {row['nfe']}/{budget} seed {seed}: FID {row['fid']:.3f} ({row['seconds']:.1f} s)",
          flush=True)
    return row


def tune(out: Path, nets: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Choose S and RHO on the held-out seed with the digits network (read back from ``tuning.json`` once chosen: frozen)."""
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


def early_networks(nets: dict) -> list[str]:
    return [n for n in nets if n.startswith(EARLY)]


def planned_rows(nets: dict, args: argparse.Namespace, schedules: list[str]) -> list[tuple]:
    """Every measured (network, sampler, schedule, budget, seed) of this run."""
    todo = []
    for data in datasets(nets):
        for network, samplers in ((PF_KEY[data], PF_SAMPLERS), (SIT_KEY[data], SIT_SAMPLERS)):
            todo += [(network, s, sc, b, k) for s in samplers for sc in schedules for b in args.nfe for k in range(args.seeds)]
    for network in early_networks(nets):
        todo += [(network, s, "uniform", b, k) for s in EARLY_SAMPLERS for b in args.nfe for k in range(args.seeds)]
    return todo


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


def verdict(summary: dict, network: str, sampler: str, schedule: str, budgets: tuple[int, ...],
            baseline: tuple[str, str] = BASELINE) -> tuple[int, list[str]]:
    """Budgets at which (sampler, schedule) beats ``baseline`` on ``network``: lower mean FID and a
    lower FID in most paired seeds. Returns (budgets won, one note per budget)."""
    won, notes = 0, []
    for b in budgets:
        mine, base = summary.get((network, sampler, schedule, b)), summary.get((network, *baseline, b))
        if mine is None or base is None or mine["fid"] is None or base["fid"] is None:
            notes.append(f"{b}: n/a")
            continue
        paired = [s for s in mine["fids"] if s in base["fids"]]
        wins = sum(mine["fids"][s] < base["fids"][s] for s in paired)
        ok = mine["fid"] < base["fid"] and wins * 2 > len(paired)
        won += ok
        notes.append(f"{b}: {'win' if ok else 'no'} ({wins}/{len(paired)})")
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


def target_fid(summary: dict, data: str, budgets: tuple[int, ...]) -> tuple[int, float | None]:
    """(budget, FID) of look-ahead on the uniform grid at NFE 16 (or the largest budget) on ``data``."""
    budget = TARGET_BUDGET if TARGET_BUDGET in budgets else budgets[-1]
    base = summary.get((PF_KEY[data], *BASELINE, budget))
    return budget, (base["fid"] if base else None)


def rule(summary: dict, measured: list[str], budgets: tuple[int, ...], schedules: list[str]) -> list[dict[str, Any]]:
    """Per (sampler, schedule) other than the baseline: budgets won per data set and the verdict
    (public only if it wins at 2 of the 3 budgets on every data set, and both data sets were measured)."""
    need = min(2, len(budgets))
    out = []
    for sampler in PF_SAMPLERS:
        for schedule in schedules:
            if (sampler, schedule) == BASELINE:
                continue
            entry: dict[str, Any] = {"sampler": sampler, "schedule": schedule, "halves": {}}
            for data in measured:
                won, notes = verdict(summary, PF_KEY[data], sampler, schedule, budgets)
                budget, target = target_fid(summary, data, budgets)
                entry["halves"][data] = {"won": won, "passes": won >= need, "notes": notes,
                                         "reach": nfe_to_reach(summary, PF_KEY[data], sampler, schedule, budgets, target)}
            entry["public"] = set(measured) == {"digits", "photos"} and all(h["passes"] for h in entry["halves"].values())
            entry["ratio"] = mean_ratio(summary, measured, sampler, schedule, budgets)
            out.append(entry)
    return out


def mean_ratio(summary: dict, measured: list[str], sampler: str, schedule: str, budgets: tuple[int, ...]) -> float | None:
    """Mean over data sets and budgets of FID / the baseline's FID at the same budget (the tie-break
    among configurations that pass the rule: the lowest becomes the recommended one)."""
    ratios = []
    for data in measured:
        for b in budgets:
            mine, base = summary.get((PF_KEY[data], sampler, schedule, b)), summary.get((PF_KEY[data], *BASELINE, b))
            if mine is None or base is None or mine["fid"] is None or not base["fid"]:
                return None
            ratios.append(mine["fid"] / base["fid"])
    return statistics.fmean(ratios)


def kept_reading(doc: Path) -> list[str]:
    """The hand-written ``## Reading`` section of the existing report (kept when the tables are rewritten)."""
    if not doc.exists():
        return []
    text = doc.read_text()
    start = text.find("\n## Reading")
    if start < 0:
        return []
    ends = [i for i in (text.find("\n## ", start + 1), text.find("\nCommand: `", start + 1)) if i >= 0]
    return text[start + 1:min(ends, default=len(text))].rstrip("\n").split("\n") + [""]


def kept_section(doc: Path, heading: str) -> list[str]:
    """A section other scripts write into the page (``## Heun's last step``, ``benchmarks/heun_last_step.py``),
    kept as it is when this script rewrites the page."""
    text = doc.read_text() if doc.exists() else ""
    start = text.find("\n" + heading)
    if start < 0:
        return []
    end = text.find("\n## ", start + 1)
    return text[start + 1:end if end >= 0 else len(text)].rstrip("\n").split("\n") + [""]


# --- report -------------------------------------------------------------------------------------------
DATA_TEXT = {"digits": ("digits", "the digit classifier's features", "num_samples"),
             "photos": ("photos (32x32 crops, 8 classes)", "the photo features of `evaluation/photos.py` (colour layout and "
                        "texture; they compare samplers with each other, not with published numbers)", "photos_num_samples")}


def network_table(summary: dict, network: str, samplers: tuple[str, ...], schedules: list[str], budgets: tuple[int, ...]) -> list[str]:
    lines = ["| sampler | schedule | " + " | ".join(f"FID @ {b}" for b in budgets) + " | "
             + " | ".join(f"prec / rec @ {b}" for b in budgets) + " |", "|---|---|" + "---:|" * (2 * len(budgets))]
    for sampler in samplers:
        for schedule in schedules:
            if not any((network, sampler, schedule, b) in summary for b in budgets):
                continue
            cells, pr = [], []
            for b in budgets:
                e = summary.get((network, sampler, schedule, b))
                cells.append("n/a" if e is None else f"{fmt(e['fid'], 2, e['fid_std'])} ({e['nfe']})")
                pr.append("n/a" if e is None else f"{fmt(e['precision'], 3)} / {fmt(e['recall'], 3)}")
            lines.append(f"| {sampler} | {schedule} | " + " | ".join(cells) + " | " + " | ".join(pr) + " |")
    return lines + [""]


def write_report(args, rows, tuning, schedules, measured: list[str], nets: dict, plot_names: dict[str, str], cpu_minutes: float) -> None:
    summary = summarize(rows)
    budgets = args.nfe
    need = min(2, len(budgets))
    lines = ["# Samplers: time-grid schedules and second-order steps at equal NFE", "",
             "Every configuration gets the same budget of network evaluations per image (NFE); the number in "
             "brackets is the NFE actually used (a sampler takes the most outer steps that fit). FID, precision and "
             f"recall, mean ± std over {args.seeds} seeds (the same noise and labels for every configuration of a seed). "
             "Method: `docs/method.md`.", "",
             f"Schedules chosen on the held-out seed {tuning['seed']} with the digits network by the mean FID of "
             f"{', '.join(tuning['samplers'])} at NFE {', '.join(map(str, tuning['budgets']))}, then frozen for both data sets: "
             f"**{tuning['shift']}** and **{tuning['edm']}** "
             f"(candidates: {', '.join(f'{k} {v:.3f}' for k, v in tuning['mean_fid'].items())}).", ""]
    for data in measured:
        name, space, count = DATA_TEXT[data]
        lines += [f"## {name[0].upper() + name[1:]}", "",
                  f"{getattr(args, count)} images per seed, scored in {space}. Networks: `{label(nets, PF_KEY[data])}` and "
                  f"`{label(nets, SIT_KEY[data])}`.", "",
                  "### Patch Forcing network", "", *network_table(summary, PF_KEY[data], PF_SAMPLERS, schedules, budgets),
                  "### SiT baseline", "", *network_table(summary, SIT_KEY[data], SIT_SAMPLERS, schedules, budgets),
                  f"![FID against NFE on {data}]({plot_names[data]})", ""]
    if early_networks(nets):
        compared = early_networks(nets) + ["photos-pf"]
        lines += ["## Photos: does training longer make look-ahead pay?", "",
                  "euler-pf and look-ahead on the uniform grid, on earlier checkpoints of the same photos network and on the one "
                  "measured above.", ""]
        for network in compared:
            lines += [f"`{label(nets, network)}`:", "", *network_table(summary, network, EARLY_SAMPLERS, ["uniform"], budgets)]
        for network in compared:
            won, notes = verdict(summary, network, "look-ahead", "uniform", budgets, baseline=("euler-pf", "uniform"))
            lines.append(f"- `{label(nets, network)}`: look-ahead beats euler-pf at {won} of {len(budgets)} budgets "
                         f"({'; '.join(notes)}, seeds won).")
        lines.append("")
    halves = " and ".join(measured)
    targets = "; ".join(f"{d}: FID {fmt(target_fid(summary, d, budgets)[1])}" for d in measured)
    lines += ["## The rule, and the NFE to reach look-ahead's NFE-16 FID", "",
              f"A configuration becomes public only if it beats look-ahead on the uniform grid at equal NFE at {need} of the "
              f"{len(budgets)} budgets (lower mean FID and a lower FID in most paired seeds) on digits **and** on photos. "
              f"Measured here: {halves}." + ("" if len(measured) == 2 else " The photos half is not measured, so nothing can pass.")
              + f" Target for the last columns: look-ahead, uniform, at NFE {target_fid(summary, measured[0], budgets)[0]} "
              f"({targets}).", "",
              "| sampler | schedule | " + " | ".join(f"{d}: won (per budget, seeds won)" for d in measured) + " | verdict | "
              + " | ".join(f"{d}: NFE to reach the target" for d in measured) + " | mean FID / baseline |",
              "|---|---|" + "---|" * len(measured) + "---|" + "---:|" * (len(measured) + 1)]
    entries = rule(summary, measured, budgets, schedules)
    for entry in entries:
        h = entry["halves"]
        lines.append(f"| {entry['sampler']} | {entry['schedule']} | "
                     + " | ".join(f"{h[d]['won']} of {len(budgets)} ({'; '.join(h[d]['notes'])})" for d in measured)
                     + f" | {'**public**' if entry['public'] else 'study only'} | " + " | ".join(h[d]["reach"] for d in measured)
                     + f" | {fmt(entry['ratio'], 3)} |")
    passed = sorted((e for e in entries if e["public"] and e["ratio"] is not None), key=lambda e: e["ratio"])
    lines += ["", "Passing the rule: " + (", ".join(f"{e['sampler']} on {e['schedule']}" for e in passed) or "nothing") + ". "
              + (f"Recommended (the lowest mean FID / baseline among them, over both data sets and the {len(budgets)} budgets): "
                 f"**{passed[0]['sampler']} on {passed[0]['schedule']}** ({passed[0]['ratio']:.3f})." if passed else ""), ""]
    lines += kept_reading(args.doc)
    lines += [f"Command: `{command_line()}`. Sampling and metrics of the rows made by this invocation: "
              f"{cpu_minutes:.1f} CPU min; summed over every row in the cache: "
              + ", ".join(f"{d} {sum(r['seconds'] for r in rows if dataset_of(r['network']) == d) / 60:.1f} min" for d in measured)
              + f". Machine: {machine_info()['cpu']}, {torch.get_num_threads()} torch thread(s).", ""]
    lines += kept_section(args.doc, "## Heun's last step")
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.doc, "\n".join(lines))


def plot(path: Path, rows: list[dict], schedules: list[str], data: str) -> Path:
    """One panel per schedule: FID (mean over seeds) against the NFE used, one line per sampler."""
    summary = summarize(rows)
    panels = []
    for schedule in schedules:
        series = []
        for i, (network, sampler) in enumerate([(SIT_KEY[data], s) for s in SIT_SAMPLERS] + [(PF_KEY[data], s) for s in PF_SAMPLERS]):
            pts = sorted((e["nfe"], e["fid"], e["fid_std"]) for (n, s, sc, _), e in summary.items()
                         if (n, s, sc) == (network, sampler, schedule))
            sit = network == SIT_KEY[data]
            style = {"color": PALETTE[i % len(PALETTE)], "linestyle": "--" if sit else "-"}
            series.append((f"{'sit' if sit else 'pf'} / {sampler}", [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], style))
        panels.append((schedule, series))
    return panel_plot(path, panels, xlabel="NFE per image", ylabel="FID (lower is better)", logy=True,
                      suptitle=f"FID against NFE on {data}, per time-grid schedule")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        nets = load_networks(args)
        t0 = time.process_time()
        tuning = tune(out, nets, args)
        schedules = ["uniform", tuning["shift"], tuning["edm"]]
        rows = [get_row(out, nets, args, *key) for key in planned_rows(nets, args, schedules)]
        measured = datasets(nets)
        plots = {d: plot(args.doc.parent / "samplers" / ("fid_vs_nfe.png" if d == "digits" else f"fid_vs_nfe_{d}.png"), rows,
                         schedules, d) for d in measured}
        write_report(args, rows, tuning, schedules, measured, nets, {d: os.path.relpath(p, args.doc.parent) for d, p in plots.items()},
                     (time.process_time() - t0) / 60)
        print(f"wrote {args.doc} and {', '.join(map(str, plots.values()))}")
        return 0
    except pf.PatchForcingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
