"""Where patch-level time pays: Patch Forcing against its global-time SiT twin, one factor at a time.

Writes the tables of ``docs/where_it_pays.md`` (rules at the top of that page). Three phases, each
resumable (rerun the same command; finished runs and rows are skipped):

    # 1. train the networks (one process at a time, single-threaded; about 5 CPU minutes per
    #    2,000 photos steps at width 64); --only NAME[,NAME] trains a subset
    OMP_NUM_THREADS=1 python benchmarks/where_it_pays.py train --runs pays/runs
    # 2. sample and score every row (one JSON file a row under OUT/rows)
    OMP_NUM_THREADS=1 python benchmarks/where_it_pays.py score --runs pays/runs --out pays
    # 3. the report: tables, plots and the rule's verdicts, into docs/where_it_pays/
    python benchmarks/where_it_pays.py report --out pays --docs docs/where_it_pays

The runs (``RUNS``): every network has the same data, seed, batch, optimizer and EMA as the photos
networks of docs/samplers.md; a run differs from its baseline in the factor its name says.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line  # noqa: E402
from patchforcing.evaluation.evaluate import evaluate_model  # noqa: E402
from patchforcing.evaluation.generate import generate_images  # noqa: E402
from patchforcing.evaluation.photos import FEATURES, photos_metrics  # noqa: E402
from patchforcing.report.common import fmt, machine_info, mean_std  # noqa: E402
from patchforcing.runs import atomic_write_text, newest_checkpoint  # noqa: E402
from patchforcing.sampling import SamplingPlan  # noqa: E402
from patchforcing.streams import EVAL_SEED_STRIDE  # noqa: E402

# The photos networks of docs/samplers.md: PF-XS/2 narrowed to depth 2, width 64, 2 heads (the digits
# preset's narrowing) on the 32x32 photos-labeled crops.
BASE = ["--data", "photos-labeled", "--seed", "0", "--val-every", "500", "--sample-every", "0",
        "--ckpt-every", "250", "--keep-checkpoints", "100", "--log-every", "50"]
# The paper's ltg (cleanest patch at loc 0.7), pinned: the digits preset these runs start from trains with
# loc 0 since this page's finding; the loc-0 runs say so with --timestep-options loc=0.0, which wins.
PAPER_LTG = ["--ltg-loc", "0.7"]
PF = ["--model", "PF-XS/2", *PAPER_LTG]
SIT = ["--model", "SiT-XS/2", "--timesteps", "uniform", "--depth", "2", "--hidden-size", "64", "--num-heads", "2"]
P4, P2 = ["--patch-size", "4"], ["--patch-size", "2"]
DIGITS = ["--data", "digits", *PAPER_LTG]  # the last --data wins: the digits preset's own network and data

# name -> (flags, steps); listed in the order they train
RUNS: dict[str, tuple[list[str], int]] = {
    "p4-pf-ltg": (PF + P4, 2000),
    "p4-sit": (SIT + P4, 3000),  # 3,000: the SiT twin at equal training time as well as at equal steps
    "p4-pf-uniform": (PF + P4 + ["--timesteps", "uniform"], 2000),
    "p4-pf-ltg-std0.2": (PF + P4 + ["--timestep-options", "std=0.2"], 2000),
    "p4-pf-ltg-std0.05": (PF + P4 + ["--timestep-options", "std=0.05"], 2000),
    "p4-pf-ltg-head0": (PF + P4 + ["--uncertainty-weight", "0"], 2000),
    "p4-pf-logit-normal": (PF + P4 + ["--timesteps", "logit-normal"], 2000),
    "p4-pf-ltg-loc0": (PF + P4 + ["--timestep-options", "loc=0.0"], 2000),
    # training length for the chosen setting: copies of the 2,000- and 3,000-step runs, trained on
    # (their own names, so the rows of the 2,000-step networks never change meaning)
    "p4-pf-ltg-loc0-long": (PF + P4 + ["--timestep-options", "loc=0.0"], 4000),
    "p4-sit-long": (SIT + P4, 6000),
    # per-patch times whose marginal is uniform (a uniform centre, patches spread around it): the spread alone
    "p4-pf-gaussian": (PF + P4 + ["--timesteps", "gaussian"], 2000),
    "p2-pf-ltg": (PF + P2, 2000),
    "p2-sit": (SIT + P2, 2000),
    "p2-pf-ltg-std0.2": (PF + P2 + ["--timestep-options", "std=0.2"], 2000),
    "p2-pf-ltg-loc0": (PF + P2 + ["--timestep-options", "loc=0.0"], 2000),
    "p4w128-pf-ltg": (PF + P4 + ["--hidden-size", "128"], 2000),
    "p4w128-sit": (SIT + P4 + ["--hidden-size", "128"], 2000),
    "p4w128-pf-ltg-loc0": (PF + P4 + ["--hidden-size", "128", "--timestep-options", "loc=0.0"], 2000),
    "p4d4-pf-ltg": (PF + P4 + ["--depth", "4"], 2000),
    "p4d4-sit": (SIT + P4 + ["--depth", "4"], 2000),
    "p4d4-pf-ltg-loc0": (PF + P4 + ["--depth", "4", "--timestep-options", "loc=0.0"], 2000),
    # digits (the digits preset as it is, 16x16, 2x2 patches, 64 tokens): the default and the ltg candidates
    "digits-pf-ltg": (DIGITS, 3000),
    "digits-sit": (SIT + DIGITS + ["--patch-size", "2"], 3000),
    "digits-pf-ltg-std0.2": (DIGITS + ["--timestep-options", "std=0.2"], 3000),
    "digits-pf-ltg-std0.05": (DIGITS + ["--timestep-options", "std=0.05"], 3000),
    "digits-pf-ltg-loc0": (DIGITS + ["--timestep-options", "loc=0.0"], 3000),
}


def train(runs_dir: Path, only: list[str] | None, steps_override: dict[str, int]) -> None:
    """Train (or resume) every run in order, one ``patchforcing train`` process at a time."""
    exe = Path(sys.executable).with_name("patchforcing")
    for name, (flags, steps) in RUNS.items():
        if only and name not in only:
            continue
        steps = steps_override.get(name, steps)
        cmd = [str(exe), "train", *BASE, *flags, "--steps", str(steps), "--out", str(runs_dir / name)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


HELD_OUT_SEED = 9  # chooses the ltg parameters; never one of the evaluation seeds
EVAL_SEEDS = (0, 1, 2)
NUM_IMAGES = 500  # images per photos row
DIGITS_IMAGES = 1000  # images per digits row (as the bench)
PF_SAMPLERS, SIT_SAMPLERS = ("euler-pf", "look-ahead"), ("euler",)
SCHEDULES = ("uniform", "edm:3")
BUDGETS = (8, 16, 32)


def network_source(runs_dir: Path, network: str) -> tuple[str, Path]:
    """``NAME`` (the run's newest checkpoint) or ``NAME@STEP`` -> (run name, checkpoint file)."""
    name, _, step = network.partition("@")
    folder = runs_dir / name
    if not step:
        return name, newest_checkpoint(folder)
    return name, folder / "checkpoints" / f"step-{int(step):08d}.pt"


def row_path(out: Path, network: str, sampler: str, schedule: str, nfe: int, seed: int) -> Path:
    return out / "rows" / network.replace("@", "_at_") / f"{sampler}_{schedule.replace(':', '')}_{nfe}_{seed}.json"


def score_row(model: torch.nn.Module, sampler: str, schedule: str, nfe: int, seed: int, num_images: int) -> dict:
    """Sample ``num_images`` balanced-label images of one plan and score them: photos in both feature
    spaces (``hand``, ``classifier``), digits in the digit classifier's (``hand`` holds them, for one table code)."""
    plan = SamplingPlan.from_nfe(sampler, nfe, schedule=schedule)
    t0 = time.process_time()
    if model.config.in_channels == 1:  # digits: the bench's metrics, 1,000 images
        m = evaluate_model(model, plan, num_samples=DIGITS_IMAGES, seed=seed * EVAL_SEED_STRIDE, batch_size=250)
        return {"sampler": sampler, "schedule": schedule, "budget": nfe, "seed": seed, "num_images": DIGITS_IMAGES,
                "nfe": int(m["nfe"]), "steps": plan.steps, "cpu_seconds": time.process_time() - t0,
                "hand": {k: float(m[k]) for k in ("fid", "precision", "recall", "accuracy")}}
    _, images, _, info = generate_images(model, plan, num_samples=num_images, seed=seed * EVAL_SEED_STRIDE, batch_size=250)
    row = {"sampler": sampler, "schedule": schedule, "budget": nfe, "seed": seed, "num_images": num_images,
           "nfe": int(info["nfe"] or plan.nfe), "steps": plan.steps, "cpu_seconds": time.process_time() - t0}
    for space in FEATURES:
        m = photos_metrics(images, features=space)
        row[space] = {k: float(m[k]) for k in ("fid", "precision", "recall")}
    return row


def score(runs_dir: Path, out: Path, networks: list[str], samplers: list[str] | None, schedules: list[str],
          budgets: list[int], seeds: list[int], num_images: int) -> None:
    """Score every (network, sampler, schedule, budget, seed) row not already in ``out/rows``."""
    for network in networks:
        name, ckpt = network_source(runs_dir, network)
        model = pf.load_model(ckpt)
        kinds = samplers or (PF_SAMPLERS if model.config.has_difficulty_head else SIT_SAMPLERS)
        step = int(ckpt.stem.split("-")[-1]) if ckpt.stem.startswith("step-") else None
        for sampler in kinds:
            for schedule in schedules:
                for nfe in budgets:
                    for seed in seeds:
                        path = row_path(out, network, sampler, schedule, nfe, seed)
                        if path.exists():
                            continue
                        row = {"network": network, "run": name, "step": step,
                               **score_row(model, sampler, schedule, nfe, seed, num_images)}
                        path.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(path, json.dumps(row, indent=1) + "\n")
                        scores = " / ".join(f"{row[space]['fid']:.3f}" for space in FEATURES if space in row)
                        print(f"{network} {sampler} {schedule} nfe {nfe} seed {seed}: FID {scores} ({row['cpu_seconds']:.1f} CPU s)", flush=True)


def run_config(name: str):
    """The resolved training config of run ``name`` (its flags as ``resolve_config`` overrides)."""
    from patchforcing.training import resolve_config

    flags = BASE + RUNS[name][0]
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    return resolve_config("digits", **{k.lstrip("-").replace("-", "_"): v for k, v in pairs.items()})


def step_costs(names: list[str], rounds: int, steps: int) -> dict[str, float]:
    """CPU seconds per training step of each run's network, measured in interleaved rounds.

    A step is what every trainer step does with the batch: draw the times as the trainer draws them
    (one time per sample for SiT), the trainer's loss (``example_loss``) forward, the backward, gradient clipping and AdamW.
    Rounds alternate the runs (``benchmarks/common.py``), timed with ``time.process_time``.
    """
    from common import interleaved_times
    from patchforcing.data import load_dataset
    from patchforcing.loss import example_loss
    from patchforcing.models import PatchForcingTransformer
    from patchforcing.timesteps import timestep_distribution
    from patchforcing.training.config import network_config
    from patchforcing.training.example import draw_example

    fns = {}
    for name in names:
        cfg = run_config(name)
        data = load_dataset(cfg.data, resolution=cfg.resolution)
        mcfg = network_config(cfg, data)
        torch.manual_seed(0)
        net = PatchForcingTransformer(mcfg).train()
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
        g = torch.Generator().manual_seed(0)
        dist = timestep_distribution(cfg.timestep_name, **cfg.timestep_params())
        x1, labels = data.images[: cfg.batch_size], data.labels[: cfg.batch_size]

        def run(net=net, opt=opt, g=g, dist=dist, x1=x1, labels=labels, mcfg=mcfg, cfg=cfg):
            for _ in range(steps):
                ex = draw_example(x1, labels, g, timesteps=dist, num_patches=mcfg.num_patches, null_label=None, drop_prob=0,
                                  global_time=not mcfg.has_difficulty_head)
                loss = example_loss(net, ex, uncertainty_weight=cfg.uncertainty_weight, repa_weight=0.0)["loss"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)

        fns[name] = run
    times = interleaved_times(fns, repeats=rounds, warmup=1, clock=time.process_time)
    return {name: sorted(ts)[len(ts) // 2] / steps for name, ts in times.items()}


# --- tuning on the held-out seed ----------------------------------------------------------------------
LTG_CANDIDATES = ("p4-pf-ltg", "p4-pf-ltg-std0.2", "p4-pf-ltg-std0.05", "p4-pf-ltg-loc0")
TUNE_SAMPLERS = ("euler-pf", "look-ahead")


def load_rows(out: Path) -> dict[tuple, dict]:
    """Every scored row, keyed by (network, sampler, schedule, budget, seed)."""
    rows = {}
    for path in sorted((out / "rows").glob("*/*.json")):
        r = json.loads(path.read_text())
        rows[(r["network"], r["sampler"], r["schedule"], r["budget"], r["seed"])] = r
    return rows


def tune(out: Path) -> dict:
    """Choose the ``ltg`` setting on the held-out seed (mean FID of euler-pf and look-ahead at NFE 16 on
    the uniform grid, photo features) and freeze it in ``out/tuning.json``; a second call reads it back."""
    path = out / "tuning.json"
    if path.exists():
        return json.loads(path.read_text())
    rows = load_rows(out)
    scores = {}
    for name in LTG_CANDIDATES:
        fids = [rows.get((name, s, "uniform", 16, HELD_OUT_SEED)) for s in TUNE_SAMPLERS]
        if None in fids:
            raise SystemExit(f"score the held-out seed first: {name} lacks rows "
                             f"(score --networks {name} --samplers {','.join(TUNE_SAMPLERS)} --schedules uniform --nfe 16 --seeds {HELD_OUT_SEED})")
        scores[name] = sum(r["hand"]["fid"] for r in fids) / len(fids)
    best = min(scores, key=scores.get)
    record = {"chosen": best, "flags": RUNS[best][0], "held_out_seed": HELD_OUT_SEED, "mean_fid_at_16": scores,
              "samplers": list(TUNE_SAMPLERS), "command": command_line()}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


# --- the report ------------------------------------------------------------------------------------------
SPACES = {"hand": "colour-and-texture features", "classifier": "photo-classifier features"}
SIT_OF = {"euler-pf": "euler", "look-ahead": "euler"}  # the SiT row a Patch Forcing row is divided by


def fids(rows: dict, network: str, sampler: str, schedule: str, budget: int, space: str, seeds=EVAL_SEEDS) -> list[float] | None:
    """FID per seed, or None when a seed's row is missing."""
    out = [rows.get((network, sampler, schedule, budget, s)) for s in seeds]
    return None if None in out or any(space not in r for r in out) else [r[space]["fid"] for r in out]


def _cell(values: list[float] | None) -> str:
    if values is None:
        return "-"
    m, sd = mean_std(values)
    return fmt(m, 2, sd)


def factor_table(rows: dict, pf_nets: list[tuple[str, str]], sit: str, space: str, samplers=PF_SAMPLERS) -> list[str]:
    """Markdown: every Patch Forcing network x sampler x grid, FID per budget and its ratio to the SiT twin
    ``sit`` (euler on the same grid and budget); the SiT rows first."""
    head = "| network | sampler | grid | " + " | ".join(f"FID @ {b} | ÷ SiT" for b in BUDGETS) + " |"
    lines = [head, "|---|---|---|" + "---:|---:|" * len(BUDGETS)]
    for schedule in SCHEDULES:
        cells = [f"{_cell(fids(rows, sit, 'euler', schedule, b, space))} | 1" for b in BUDGETS]
        lines.append(f"| SiT twin `{sit}` | euler | {schedule} | " + " | ".join(cells) + " |")
    for label, net in pf_nets:
        for sampler in samplers:
            for schedule in SCHEDULES:
                cells = []
                for b in BUDGETS:
                    f, g = fids(rows, net, sampler, schedule, b, space), fids(rows, sit, SIT_OF[sampler], schedule, b, space)
                    ratio = "-" if f is None or g is None else f"{mean_std(f)[0] / mean_std(g)[0]:.2f}"
                    cells.append(f"{_cell(f)} | {ratio}")
                if any(c != "- | -" for c in cells):
                    lines.append(f"| {label} | {sampler} | {schedule} | " + " | ".join(cells) + " |")
    return lines


def gap_verdict(rows: dict, base: str, changed: str, sit: str, space: str = "hand") -> str:
    """The rule: does ``changed`` close at least half of base's gap to the SiT twin at NFE 16 (uniform
    grid, euler-pf against euler) in every evaluation seed?"""
    f0, f1, g = (fids(rows, n, smp, "uniform", 16, space) for n, smp in ((base, "euler-pf"), (changed, "euler-pf"), (sit, "euler")))
    if None in (f0, f1, g):
        return f"`{changed}`: not measured in all seeds"
    closed = [(a - b) / (a - c) if a != c else float("nan") for a, b, c in zip(f0, f1, g, strict=True)]
    ok = all(x >= 0.5 for x in closed)
    shares = ", ".join(f"{x:.0%}" for x in closed)
    return f"`{changed}` closes {shares} of the gap in seeds {', '.join(map(str, EVAL_SEEDS))}: **{'explains' if ok else 'does not explain'}** the gap"


def wins(rows: dict, new: str, old: str, sampler: str, schedule: str, space: str = "hand") -> tuple[int, str]:
    """Budgets at which ``new`` beats ``old`` (lower mean FID and lower FID in most paired seeds)."""
    won, parts = 0, []
    for b in BUDGETS:
        a, c = fids(rows, new, sampler, schedule, b, space), fids(rows, old, sampler, schedule, b, space)
        if a is None or c is None:
            parts.append(f"{b}: n/a")
            continue
        seeds_won = sum(x < y for x, y in zip(a, c, strict=True))
        ok = mean_std(a)[0] < mean_std(c)[0] and seeds_won * 2 > len(a)
        won += ok
        parts.append(f"{b}: {'win' if ok else 'no'} ({seeds_won}/{len(a)})")
    return won, "; ".join(parts)


def default_verdicts(out: Path, rows: dict) -> list[str]:
    """The rule for a new preset default: the chosen ``ltg`` setting against the default on photos and digits."""
    if not (out / "tuning.json").exists():
        return []
    chosen = json.loads((out / "tuning.json").read_text())["chosen"]
    if chosen == "p4-pf-ltg":
        return ["The held-out seed chose the default `ltg` setting: no candidate for a new default.", ""]
    digits = chosen.replace("p4-", "digits-")
    lines = [f"### A new default? `{chosen}` (chosen on the held-out seed) against the default", ""]
    lines += ["| data | sampler | grid | budgets won (per budget: won, seeds won) |", "|---|---|---|---|"]
    for data, new, old in (("photos", chosen, "p4-pf-ltg"), ("digits", digits, "digits-pf-ltg")):
        for sampler in PF_SAMPLERS:
            for schedule in SCHEDULES:
                won, detail = wins(rows, new, old, sampler, schedule)
                lines.append(f"| {data} | {sampler} | {schedule} | {won} of {len(BUDGETS)} ({detail}) |")
    return lines + [""]


BEGIN, END = "<!-- tables: begin (written by benchmarks/where_it_pays.py report) -->", "<!-- tables: end -->"


def equal_time_step(out: Path, pf_run: str, sit_run: str, pf_steps: int, every: int = 250) -> int | None:
    """The SiT checkpoint step closest to the training time of ``pf_steps`` Patch Forcing steps."""
    path = out / "step_costs.json"
    if not path.exists():
        return None
    cost = json.loads(path.read_text())["cpu_seconds_per_step"]
    if pf_run not in cost or sit_run not in cost:
        return None
    return int(round(pf_steps * cost[pf_run] / cost[sit_run] / every) * every)


def sections(out: Path, rows: dict) -> list[tuple[str, list[tuple[str, str]], str, tuple[str, ...]]]:
    """(title, Patch Forcing networks as (label, key), SiT twin key, samplers) per factor."""
    chosen = json.loads((out / "tuning.json").read_text())["chosen"] if (out / "tuning.json").exists() else None
    ltg = [(n, n) for n in LTG_CANDIDATES if (n, "euler-pf", "uniform", 16, EVAL_SEEDS[0]) in rows]
    dist = [("p4-pf-uniform", "p4-pf-uniform"), ("p4-pf-logit-normal", "p4-pf-logit-normal")] + ltg + [("p4-pf-gaussian", "p4-pf-gaussian")]
    per_patch = ltg + [("p4-pf-gaussian", "p4-pf-gaussian")]  # one time per patch: these cost more per step than SiT
    out_sections = [("The training-time distribution, 4x4 patches (64 tokens), 2,000 steps, equal steps", dist, "p4-sit@2000", PF_SAMPLERS)]
    k = equal_time_step(out, "p4-pf-ltg", "p4-sit", 2000)
    if k is not None:
        out_sections.append((f"The per-patch networks at equal training time: SiT trained on to step {k} (global-time networks cost "
                             "about what SiT costs per step, so equal steps is equal time for them)", per_patch, f"p4-sit@{k}", PF_SAMPLERS))
    out_sections += [
        ("The difficulty head: its loss weight at 0 (look-ahead needs the head and is left out)",
         [("p4-pf-ltg", "p4-pf-ltg"), ("p4-pf-ltg-head0", "p4-pf-ltg-head0")], "p4-sit@2000", ("euler-pf",)),
        ("Token count: 2x2 patches (256 tokens), 2,000 steps",
         [(n, n) for n in dict.fromkeys(("p2-pf-ltg",) + ((chosen.replace("p4", "p2"),) if chosen else ()))], "p2-sit", PF_SAMPLERS),
        ("Capacity: width 128 (4x4 patches, 2,000 steps)",
         [(n, n) for n in dict.fromkeys(("p4w128-pf-ltg",) + ((chosen.replace("p4", "p4w128"),) if chosen else ()))],
         "p4w128-sit", PF_SAMPLERS),
        ("Capacity: depth 4 (4x4 patches, 2,000 steps)",
         [(n, n) for n in dict.fromkeys(("p4d4-pf-ltg",) + ((chosen.replace("p4", "p4d4"),) if chosen else ()))],
         "p4d4-sit", PF_SAMPLERS),
        ("Training length: both networks at 1,000 steps", [("p4-pf-ltg@1000", "p4-pf-ltg@1000")], "p4-sit@1000", PF_SAMPLERS),
        ("Training length: the chosen setting (`loc = 0`) and SiT at 4,000 steps (equal steps)",
         [("p4-pf-ltg-loc0-long@4000", "p4-pf-ltg-loc0-long@4000")], "p4-sit-long@4000", PF_SAMPLERS),
        ("Training length: the chosen setting at 4,000 steps and SiT at 6,000 (about equal training time)",
         [("p4-pf-ltg-loc0-long@4000", "p4-pf-ltg-loc0-long@4000")], "p4-sit-long@6000", PF_SAMPLERS),
        ("Digits (16x16, 2x2 patches, 64 tokens), 3,000 steps: the default and the chosen setting",
         [(n, n) for n in ("digits-pf-ltg",) + ((chosen.replace("p4-", "digits-"),) if chosen and chosen != "p4-pf-ltg" else ())],
         "digits-sit", PF_SAMPLERS),
    ]
    return out_sections


MARGINAL_RUNS = ("p4-sit", "p4-pf-uniform", "p4-pf-logit-normal", "p4-pf-gaussian", "p4-pf-ltg", "p4-pf-ltg-std0.2",
                 "p4-pf-ltg-std0.05", "p4-pf-ltg-loc0")


def marginal_table(num_patches: int = 64, rows: int = 20000) -> list[str]:
    """What each run's timestep distribution trains on: the per-patch times' marginal and their spread in a sample."""
    from patchforcing.timesteps import timestep_distribution

    lines = ["| run | distribution | mean t | P(t < 0.2) | P(t > 0.8) | mean max - min within a sample |", "|---|---|---:|---:|---:|---:|"]
    for name in MARGINAL_RUNS:
        cfg = run_config(name)
        t = timestep_distribution(cfg.timestep_name, **cfg.timestep_params())(rows, num_patches, generator=torch.Generator().manual_seed(0))
        spread = (t.max(1).values - t.min(1).values).mean()
        label = cfg.timestep_name + (f" ({cfg.timestep_options})" if cfg.timestep_options else "")
        lines.append(f"| {name} | {label} | {t.mean():.3f} | {(t < 0.2).float().mean():.3f} | {(t > 0.8).float().mean():.3f} | {spread:.3f} |")
    return lines


PLOT_NETWORKS = ("p4-sit@2000", "p4-sit@3000", "p4-pf-ltg", "p4-pf-ltg-loc0", "p4-pf-uniform", "p4-pf-gaussian", "p4-pf-logit-normal")


def distribution_plot(rows: dict, path: Path) -> Path | None:
    """FID against NFE (euler-pf, or euler for SiT, uniform grid) of the 4x4 networks, one panel per feature space."""
    from patchforcing.report.plots import PALETTE, panel_plot

    panels = []
    for space, words in SPACES.items():
        series = []
        for i, net in enumerate(PLOT_NETWORKS):
            sampler = "euler" if "sit" in net else "euler-pf"
            points = [(b, fids(rows, net, sampler, "uniform", b, space)) for b in BUDGETS]
            points = [(b, mean_std(f)) for b, f in points if f is not None]
            if points:
                series.append((net, [b for b, _ in points], [m for _, (m, _) in points], [sd for _, (_, sd) in points],
                               {"color": PALETTE[i % len(PALETTE)], "linestyle": "--" if "sit" in net else "-", "marker": "o"}))
        if series:
            panels.append((words, series))
    if not panels:
        return None
    return panel_plot(path, panels, xlabel="NFE", ylabel="FID", logy=True, xticks=BUDGETS)


def report(out: Path, doc: Path) -> None:
    """Write every factor's tables (both feature spaces) and the rule's verdicts into ``doc`` between the markers."""
    rows = load_rows(out)
    lines = [BEGIN, ""]
    if (out / "step_costs.json").exists():
        costs = json.loads((out / "step_costs.json").read_text())
        lines += ["**Training cost** (CPU seconds per step of batch 64, one thread, interleaved rounds; "
                  f"`{costs['command']}`):", ""]
        lines += ["| run | CPU ms per step | images per CPU second |", "|---|---:|---:|"]
        lines += [f"| {n} | {c * 1000:.1f} | {64 / c:.0f} |" for n, c in costs["cpu_seconds_per_step"].items()]
        lines += [""]
    lines += ["**What each distribution trains on** (64 patches, 20,000 draws):", ""] + marginal_table() + [""]
    for title, pf_nets, sit, samplers in sections(out, rows):
        if not any((net, samplers[0], "uniform", 16, EVAL_SEEDS[0]) in rows for _, net in pf_nets):
            continue
        lines += [f"### {title}", ""]
        for space, words in SPACES.items():
            if not any(fids(rows, net, samplers[0], "uniform", 16, space) for _, net in pf_nets):
                continue
            words = "digit classifier's features" if pf_nets[0][1].startswith("digits") else words
            lines += [f"In the {words} (mean ± std over seeds {', '.join(map(str, EVAL_SEEDS))}; ÷ SiT: the ratio of mean FIDs):", ""]
            lines += factor_table(rows, pf_nets, sit, space, samplers) + [""]
        base = pf_nets[0][1] if pf_nets[0][1] == "p4-pf-ltg" else None
        if base is None and "p4-pf-ltg" in {n for _, n in pf_nets}:
            base = "p4-pf-ltg"
        if base:
            verdicts = [(gap_verdict(rows, base, n, sit, space), space) for _, n in pf_nets if n != base for space in SPACES]
            lines += [f"- {v} ({SPACES[space]})" for v, space in verdicts if "not measured" not in v] + [""]
    lines += default_verdicts(out, rows)
    plot = distribution_plot(rows, doc.with_suffix("") / "fid_vs_nfe.png")
    if plot is not None:
        lines += [f"![FID against NFE, euler-pf / euler on the uniform grid](where_it_pays/{plot.name})", ""]
    lines += [END]
    text = doc.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    atomic_write_text(doc, text)
    print(f"wrote {doc}")


def _csv(text: str) -> list[str]:
    return [p for p in text.split(",") if p]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="phase", required=True)
    t = sub.add_parser("train", help="train or resume the runs")
    t.add_argument("--runs", type=Path, default=Path("pays/runs"))
    t.add_argument("--only", default="", help="comma-separated run names (default: all)")
    t.add_argument("--steps", default="", help="NAME=STEPS pairs, comma-separated: train these runs on to STEPS")
    sc = sub.add_parser("score", help="sample and score rows (cached, resumable)")
    sc.add_argument("--runs", type=Path, default=Path("pays/runs"))
    sc.add_argument("--out", type=Path, default=Path("pays"))
    sc.add_argument("--networks", required=True, help="comma-separated NAME or NAME@STEP")
    sc.add_argument("--samplers", default="", help="default: euler-pf,look-ahead for Patch Forcing, euler for SiT")
    sc.add_argument("--schedules", default=",".join(SCHEDULES))
    sc.add_argument("--nfe", default=",".join(map(str, BUDGETS)))
    sc.add_argument("--seeds", default=",".join(map(str, EVAL_SEEDS)), help=f"evaluation seeds ({HELD_OUT_SEED}: the held-out one)")
    sc.add_argument("--num-images", type=int, default=NUM_IMAGES)
    th = sub.add_parser("cost", help="CPU seconds per training step of runs, interleaved rounds, one thread")
    th.add_argument("--names", default="p4-pf-ltg,p4-sit,p4-pf-uniform", help="comma-separated run names")
    th.add_argument("--rounds", type=int, default=5)
    th.add_argument("--steps", type=int, default=10, help="steps per round")
    th.add_argument("--out", type=Path, default=Path("pays"))
    tu = sub.add_parser("tune", help="choose the ltg setting on the held-out seed and freeze it")
    tu.add_argument("--out", type=Path, default=Path("pays"))
    rp = sub.add_parser("report", help="write the tables into the document")
    rp.add_argument("--out", type=Path, default=Path("pays"))
    rp.add_argument("--doc", type=Path, default=Path("docs/where_it_pays.md"))
    args = ap.parse_args(argv)
    if args.phase == "report":
        report(args.out, args.doc)
    if args.phase == "tune":
        print(json.dumps(tune(args.out), indent=1))
    if args.phase == "cost":
        torch.set_num_threads(1)
        costs = step_costs(_csv(args.names), args.rounds, args.steps)
        for name, sec in costs.items():
            print(f"{name}: {sec * 1000:.1f} CPU ms per step, {run_config(name).batch_size / sec:.0f} images per CPU second")
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"cpu_seconds_per_step": costs, "command": command_line(), "machine": machine_info()}
        atomic_write_text(args.out / "step_costs.json", json.dumps(record, indent=1) + "\n")
    if args.phase == "score":
        score(args.runs, args.out, _csv(args.networks), _csv(args.samplers) or None, _csv(args.schedules),
              [int(v) for v in _csv(args.nfe)], [int(v) for v in _csv(args.seeds)], args.num_images)
    if args.phase == "train":
        override = {k: int(v) for k, v in (p.split("=") for p in args.steps.split(",") if p)}
        train(args.runs, [n for n in args.only.split(",") if n] or None, override)


if __name__ == "__main__":
    main()
