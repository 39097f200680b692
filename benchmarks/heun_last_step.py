"""Heun's last step, and the ``edm:RHO`` grid against the Karras grid of k-diffusion and EDM.

Writes the section "Heun's last step" of ``docs/samplers.md`` (replacing it, the rest of the page
untouched) and prints it:

1. The grids (exact, no network): this project's ``edm:RHO`` grid of S steps and the S-step
   Karras grid (``k_diffusion.sampling.get_sigmas_karras(S, 0.002, 80, RHO)`` with its trailing
   sigma = 0, in t = 1 / (1 + sigma)): the largest difference in t, and where.
2. An analytic field (exact, no network): Gaussian data ``N(mu, s^2)`` per pixel, whose flow-matching
   velocity and ODE solution are known in closed form; the error at t = 1 of Heun with the Euler last
   step (EDM) and with the corrected last step (SiT), and of Euler, at S = 32.
3. Networks at equal NFE (8 and 16, where the last step is longest): ``heun-pf`` on the Patch Forcing
   networks, ``heun`` on the SiT one, each with ``correct_last`` 0 and 1, on the uniform grid and
   on ``edm:3``, over seeds (``look-ahead-heun`` takes the same option; it is not measured here).
   Digits are scored in the digit classifier's features, photos in the photo features of
   ``evaluation/photos.py`` (the rows of ``benchmarks/sampler_schedules.py``).

    OMP_NUM_THREADS=1 python benchmarks/heun_last_step.py --digits-run demo/run \
        --photos-pf-run docs_runs/photos-pf --photos-sit-run docs_runs/photos-sit --out docs_runs/heun
    python benchmarks/heun_last_step.py --exact-only          # parts 1 and 2 (a second)

Rows are cached in ``OUT/rows`` (a rerun of the same command resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line  # noqa: E402
from patchforcing.evaluation.evaluate import evaluate_model  # noqa: E402
from patchforcing.models import ModelOutput  # noqa: E402
from patchforcing.report.common import machine_info, mean_std  # noqa: E402
from patchforcing.runs import atomic_write_text, newest_step  # noqa: E402
from patchforcing.sampling import SamplingPlan, time_grid  # noqa: E402
from patchforcing.sampling.schedules import EDM_SIGMA_MAX, EDM_SIGMA_MIN  # noqa: E402
from patchforcing.streams import EVAL_SEED_STRIDE  # noqa: E402
from sampler_schedules import score_photos  # noqa: E402

SECTION = "## Heun's last step"
BUDGETS = (8, 16)
SCHEDULES = ("uniform", "edm:3")
PF_SAMPLERS, SIT_SAMPLERS = ("heun-pf",), ("heun",)


# --- 1. the grids ---------------------------------------------------------------------------------------
def karras_times(steps: int, rho: float) -> torch.Tensor:
    """k-diffusion's / EDM's S-step grid in t: S sigmas from sigma_max to sigma_min (rho-ramp), then sigma = 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    hi, lo = EDM_SIGMA_MAX ** (1 / rho), EDM_SIGMA_MIN ** (1 / rho)
    sigmas = torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])
    return 1 / (1 + sigmas)


def grid_comparison(steps: int = 32, rho: float = 7.0) -> dict[str, Any]:
    ours = time_grid(steps, f"edm:{rho:g}").double()
    peer = karras_times(steps, rho)
    diff = (ours - peer).abs()
    k = int(diff.argmax())
    ramp = karras_times(steps + 1, rho)  # the (S + 1)-point ramp whose interior this project keeps
    interior = float((ours[1:-1] - ramp[1:-2]).abs().max())  # ramp: S + 1 points, then the appended t = 1
    return {"steps": steps, "rho": rho, "max_diff": float(diff.max()), "at": k, "ours_at": float(ours[k]), "peer_at": float(peer[k]),
            "ours_first": float(ours[1]), "peer_first": float(peer[0]), "interior_vs_ramp": interior}


# --- 2. an analytic field ---------------------------------------------------------------------------------
class GaussianField(torch.nn.Module):
    """``v(x, t) = E[x1 - x0 | x_t]`` for ``x1 ~ N(mu, s^2)``, ``x0 ~ N(0, 1)`` per pixel; the ODE maps x0 to mu + s x0."""

    def __init__(self, mu: float = 0.5, s: float = 0.1):
        super().__init__()
        self.config = pf.create_model("PF-XS/2", depth=1, hidden_size=32, num_heads=2, input_size=8, in_channels=3,
                                      num_classes=0).config
        self.mu, self.s = mu, s

    def forward(self, x, t, y=None):
        if t.ndim == 2:  # (B, N) per-patch times, all equal here
            t = t[:, 0]
        t = t[:, None, None, None]
        var = t**2 * self.s**2 + (1 - t) ** 2
        v = self.mu + (x - t * self.mu) * (t * self.s**2 - (1 - t)) / var
        return ModelOutput(v, torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=x.dtype))


def field_errors(steps: int = 32) -> list[dict[str, Any]]:
    net = GaussianField()
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = net.mu + net.s * x0
    rows = []
    for schedule in ("uniform", "edm:7"):
        for sampler, options in (("euler-pf", {}), ("heun-pf", {"correct_last": 0}), ("heun-pf", {"correct_last": 1})):
            x, info = pf.sample(net, x0, sampler=sampler, steps=steps, schedule=schedule, return_info=True, **options)
            rows.append({"sampler": sampler, **options, "schedule": schedule, "steps": steps, "nfe": info["nfe"],
                         "error": float((x - exact).abs().max())})
    return rows


# --- 3. networks ---------------------------------------------------------------------------------------------
def row(out: Path, network: str, model, identity: str, photos: bool, sampler: str, correct: int, schedule: str, budget: int,
        seed: int, num_samples: int) -> dict[str, Any]:
    path = out / "rows" / f"{network}__{sampler}__c{correct}__{schedule.replace(':', '-')}__nfe{budget}__seed{seed}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("network_id") == identity and cached.get("num_samples") == num_samples:
            return cached
    plan = SamplingPlan.from_nfe(sampler, budget, schedule=schedule, correct_last=correct)  # the most steps that fit
    t0 = time.perf_counter()
    if photos:
        result = score_photos(model, plan, num_samples, seed * EVAL_SEED_STRIDE, 250)
    else:
        result = evaluate_model(model, plan, num_samples=num_samples, seed=seed * EVAL_SEED_STRIDE, batch_size=250)
    entry = {"network": network, "network_id": identity, "num_samples": num_samples, "sampler": sampler, "correct_last": correct,
             "schedule": schedule, "budget": budget, "seed": seed, "steps": plan.steps, "nfe": plan.nfe,
             **{k: float(result[k]) for k in ("fid", "precision", "recall")}, "seconds": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entry, indent=1) + "\n")
    print(f"{network} {sampler} correct_last={correct} {schedule} NFE {plan.nfe}/{budget} seed {seed}: FID {entry['fid']:.3f} "
          f"({entry['seconds']:.1f} s)", flush=True)
    return entry


def network_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, str]]:
    nets = {"digits": (args.digits_run, False, PF_SAMPLERS, args.num_samples),
            "photos-pf": (args.photos_pf_run, True, PF_SAMPLERS, args.photos_num_samples),
            "photos-sit": (args.photos_sit_run, True, SIT_SAMPLERS, args.photos_num_samples)}
    rows, labels = [], {}
    for network, (path, photos, samplers, n) in nets.items():
        if not path:
            continue
        model = pf.load_model(path)
        step = newest_step(path) if Path(path).is_dir() else None
        identity, labels[network] = f"{Path(path).resolve()}@{step}", path if step is None else f"{path} (step {step})"
        for sampler in samplers:
            for schedule in SCHEDULES:
                for budget in args.nfe:
                    for seed in range(args.seeds):
                        for correct in (0, 1):
                            rows.append(row(Path(args.out), network, model, identity, photos, sampler, correct, schedule, budget,
                                            seed, n))
    return rows, labels


# --- the section -------------------------------------------------------------------------------------------
def section(grids: dict[str, Any], field: list[dict[str, Any]], rows: list[dict[str, Any]], labels: dict[str, str],
            args: argparse.Namespace) -> str:
    g = grids
    lines = [SECTION, "",
             "Written by `benchmarks/heun_last_step.py`. The variants are defined in "
             "[the method §5.12](method.md#512-second-order-steps), the grids in [§5.10](method.md#510-time-grids).", "",
             f"**The grids.** `edm:{g['rho']:g}` with S = {g['steps']} steps and the {g['steps']}-step Karras grid of k-diffusion "
             f"and EDM differ by up to {g['max_diff']:.3f} in t (at point {g['at']}: {g['ours_at']:.4f} here, {g['peer_at']:.4f} "
             f"there). Karras's first point is sigma_max (t = {g['peer_first']:.4f}); here the first step starts at t = 0 and ends "
             f"at t = {g['ours_first']:.4f}. This project builds {g['steps'] + 1} ramp points, puts t = 0 in place of sigma_max and "
             "drops sigma_min: its interior points t_1 .. t_(S-1) are points 1 .. S-1 of the Karras grid of S + 1 steps (largest "
             f"difference {g['interior_vs_ramp']:.1e}, float32 rounding), not of the S-step one.", "",
             "**An analytic field.** Gaussian data N(0.5, 0.1^2) per pixel, whose flow-matching velocity and ODE solution are "
             "known in closed form; the largest error at t = 1 over 4 x 3 x 8 x 8 values (float64):", "",
             "| sampler | last step | schedule | S | NFE | max error |", "|---|---|---|---:|---:|---:|"]
    for r in field:
        last = "-" if r["sampler"] == "euler-pf" else ("corrected (SiT)" if r.get("correct_last") else "Euler (EDM)")
        lines.append(f"| {r['sampler']} | {last} | {r['schedule']} | {r['steps']} | {r['nfe']} | {r['error']:.2e} |")
    if rows:
        lines += ["", f"**Networks at equal NFE.** FID (mean ± std over {args.seeds} seeds; the same noise and labels in both "
                  "columns of a seed) with the Euler last step and with the corrected one; in brackets the NFE used. "
                  + steps_sentence(rows) + " Networks: " + ", ".join(f"{k}: `{v}`" for k, v in labels.items()) + ". Digits: "
                  f"{args.num_samples} images per row in the digit classifier's features; photos: {args.photos_num_samples} "
                  "images per row in the photo features.", ""]
        lines += ["| network | sampler | schedule | " + " | ".join(f"Euler last @ {b} | corrected @ {b}" for b in args.nfe) + " |",
                  "|---|---|---|" + "---:|" * (2 * len(args.nfe))]
        for network in labels:
            for sampler in sorted({r["sampler"] for r in rows if r["network"] == network}):
                for schedule in SCHEDULES:
                    cells = []
                    for b in args.nfe:
                        for c in (0, 1):
                            sel = [r for r in rows if (r["network"], r["sampler"], r["schedule"], r["budget"], r["correct_last"])
                                   == (network, sampler, schedule, b, c)]
                            mean, std = mean_std([r["fid"] for r in sel])
                            cells.append(f"{mean:.2f} ± {std:.2f} ({sel[0]['nfe']})" if sel else "n/a")
                    lines.append(f"| {network} | {sampler} | {schedule} | " + " | ".join(cells) + " |")
        lines += ["", reading(rows, args)]
    lines += ["", f"Command: `{command_line()}`. Machine: {machine_info()['cpu']}, {torch.get_num_threads()} torch thread(s); "
              f"sampling and metrics of every row: {sum(r['seconds'] for r in rows) / 60:.1f} CPU min.", ""]
    return "\n".join(lines)


def steps_sentence(rows: list[dict[str, Any]]) -> str:
    """Whether the two variants took the same outer steps at each budget (the corrector of the last step
    costs one evaluation, which a budget may or may not hold), from the rows."""
    steps = {(r["budget"], r["correct_last"]): r["steps"] for r in rows}
    same = [b for b in sorted({b for b, _ in steps}) if steps.get((b, 0)) == steps.get((b, 1))]
    if len(same) == len({b for b, _ in steps}):
        return ("At every budget both variants take the same outer steps ("
                + ", ".join(f"{steps[(b, 0)]} at {b}" for b in same) + "); the corrected one spends one more evaluation.")
    return "At some budgets the corrected variant takes one outer step fewer, its last corrector costing one evaluation."


def reading(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """From the numbers: in how many (network, sampler, schedule, budget) cells, and in how many paired seeds,
    the corrected step has the lower FID."""
    wins = total = seed_wins = seed_total = 0
    for key in {(r["network"], r["sampler"], r["schedule"], r["budget"]) for r in rows}:
        fids = [{r["seed"]: r["fid"] for r in rows if (r["network"], r["sampler"], r["schedule"], r["budget"]) == key
                 and r["correct_last"] == c} for c in (0, 1)]
        means = [mean_std(list(f.values()))[0] for f in fids]
        if not any(m is None or math.isnan(m) for m in means):
            total += 1
            wins += means[1] < means[0]
        for seed in set(fids[0]) & set(fids[1]):
            seed_total += 1
            seed_wins += fids[1][seed] < fids[0][seed]
    return (f"The corrected last step has the lower mean FID in {wins} of {total} (network, sampler, grid, budget) cells "
            f"of this table, and the lower FID in {seed_wins} of {seed_total} paired seeds.")


def write_section(doc: Path, text: str) -> None:
    """Replace (or append) the section in ``doc``; the rest of the page is left as it is."""
    page = doc.read_text() if doc.exists() else ""
    start = page.find("\n" + SECTION)
    if start >= 0:
        end = page.find("\n## ", start + 1)
        page = page[:start + 1] + text + ("\n" + page[end + 1:] if end >= 0 else "")
    else:
        page = page.rstrip("\n") + "\n\n" + text
    atomic_write_text(doc, page if page.endswith("\n") else page + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits-run", help="a Patch Forcing digits network, e.g. demo/run")
    ap.add_argument("--photos-pf-run", help="the Patch Forcing photos network, e.g. docs_runs/photos-pf")
    ap.add_argument("--photos-sit-run", help="its SiT twin, e.g. docs_runs/photos-sit")
    ap.add_argument("--out", default="docs_runs/heun", help="folder of the cached rows")
    ap.add_argument("--doc", default="docs/samplers.md", help="the page whose section this writes")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--num-samples", type=int, default=500, help="images per digits row")
    ap.add_argument("--photos-num-samples", type=int, default=250, help="images per photos row")
    ap.add_argument("--nfe", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--exact-only", action="store_true", help="only the grids and the analytic field; print, write nothing")
    args = ap.parse_args(argv)
    args.nfe = tuple(int(b) for b in args.nfe.split(","))
    grids, field = grid_comparison(), field_errors()
    if args.exact_only:
        print(section(grids, field, [], {}, args))
        return
    rows, labels = network_rows(args)
    text = section(grids, field, rows, labels, args)
    write_section(Path(args.doc), text)
    print(text)


if __name__ == "__main__":
    main()
