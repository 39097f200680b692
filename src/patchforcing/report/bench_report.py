"""What ``run_bench`` writes besides ``results.json``: the automatic reading of the paper's
orderings, the FID-against-NFE plot and ``results.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patchforcing.report.bench_settings import NETWORKS
from patchforcing.report.common import fmt, machine_line
from patchforcing.report.plots import PALETTE, panel_plot
from patchforcing.runs import atomic_write

SAMPLER_COLORS = {"euler": "#000000", "euler-pf": PALETTE[0], "dual-loop": PALETTE[2], "look-ahead": PALETTE[1],
                  "random-dual-loop": PALETTE[4], "random-look-ahead": PALETTE[3]}
NETWORK_STYLES = {"sit-uniform": ("-", "s"), "pf-ltg": ("-", "o"), "pf-uniform-patch": ("--", "^"), "pf-srm": (":", "v")}

# The paper's orderings (docs/method.md §5.9), as (claim, left, relation, right): FID of left `relation` FID of right.
CLAIMS = (
    ("Patch Forcing (ltg) with Euler beats the SiT baseline with Euler", ("pf-ltg", "euler-pf"), "<", ("sit-uniform", "euler")),
    ("dual-loop beats Euler on the same Patch Forcing network", ("pf-ltg", "dual-loop"), "<", ("pf-ltg", "euler-pf")),
    ("look-ahead beats Euler on the same Patch Forcing network", ("pf-ltg", "look-ahead"), "<", ("pf-ltg", "euler-pf")),
    ("look-ahead beats dual-loop", ("pf-ltg", "look-ahead"), "<", ("pf-ltg", "dual-loop")),
    ("random masks are worse than plain Euler (dual-loop)", ("pf-ltg", "random-dual-loop"), ">", ("pf-ltg", "euler-pf")),
    ("random masks are worse than plain Euler (look-ahead)", ("pf-ltg", "random-look-ahead"), ">", ("pf-ltg", "euler-pf")),
    ("the difficulty mask beats a random mask (dual-loop)", ("pf-ltg", "dual-loop"), "<", ("pf-ltg", "random-dual-loop")),
    ("the difficulty mask beats a random mask (look-ahead)", ("pf-ltg", "look-ahead"), "<", ("pf-ltg", "random-look-ahead")),
    ("ltg trains a better network than uniform-patch (Euler)", ("pf-ltg", "euler-pf"), "<", ("pf-uniform-patch", "euler-pf")),
    ("ltg trains a better network than srm (Euler)", ("pf-ltg", "euler-pf"), "<", ("pf-srm", "euler-pf")),
)


def reading(summary: list[dict[str, Any]], rows: list[dict[str, Any]], settings) -> list[dict[str, Any]]:
    """Check each ordering of the paper at each budget.

    All samplers and networks share the evaluation seeds (the same noise and labels per seed), so
    each ordering is also checked seed by seed: ``wins`` of ``seeds`` is how many seeds agree with it.
    """
    found = {(s["network"], s["sampler"], s["budget"]): s for s in summary}
    per_seed = {(r["network"], r["sampler"], r["budget"], r["seed"]): r["fid"] for r in rows}
    out = []
    for budget in settings.nfe:
        for claim, left, rel, right in CLAIMS:
            a, b = found.get((*left, budget)), found.get((*right, budget))
            if a is None or b is None or a["fid"] is None or b["fid"] is None:
                continue
            pairs = [(per_seed[(*left, budget, k)], per_seed[(*right, budget, k)]) for k in range(settings.seeds)
                     if per_seed.get((*left, budget, k)) is not None and per_seed.get((*right, budget, k)) is not None]
            tie = abs(a["fid"] - b["fid"]) <= 1e-9 * max(1.0, abs(b["fid"]))
            holds = (a["fid"] < b["fid"] if rel == "<" else a["fid"] > b["fid"]) and not tie
            wins = sum((x < y if rel == "<" else x > y) for x, y in pairs)
            out.append({"budget": budget, "claim": claim, "holds": bool(holds), "tie": bool(tie), "wins": wins, "seeds": len(pairs),
                        "left": "/".join(left), "left_fid": a["fid"], "left_std": a["fid_std"],
                        "right": "/".join(right), "right_fid": b["fid"], "right_std": b["fid_std"]})
    return out


def plot_fid(out: Path, summary: list[dict[str, Any]], settings) -> str:
    """FID (mean over seeds, std as error bars) against the NFE actually used: one panel per Patch
    Forcing network, the SiT baseline's Euler line in every panel. Returns the written file's name."""
    def line(network: str, sampler: str, label: str) -> tuple:
        pts = sorted((s["nfe"], s["fid"], s["fid_std"]) for s in summary if s["network"] == network and s["sampler"] == sampler)
        linestyle, marker = NETWORK_STYLES.get(network, ("-", "o"))
        return (label, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                {"color": SAMPLER_COLORS.get(sampler), "linestyle": linestyle, "marker": marker})

    baseline = [line(n, "euler", f"{n} / euler") for n in settings.networks if NETWORKS[n].model.startswith("SiT")]
    panels = []
    for network in settings.networks:
        if not NETWORKS[network].model.startswith("SiT"):
            samplers = list(dict.fromkeys(s["sampler"] for s in summary if s["network"] == network))
            panels.append((f"{network}", baseline + [line(network, s, s) for s in samplers]))
    panels = panels or [("SiT", baseline)]
    path = panel_plot(out / "fid_vs_nfe.png", panels, xlabel="NFE per image", ylabel="FID (classifier features, lower is better)",
                      xticks=sorted({s["nfe"] for s in summary}), suptitle="FID against NFE on digits, equal compute per budget")
    return path.name


def write_markdown(out: Path, results: dict[str, Any], settings) -> Path:
    """``results.md``: reading, tables per budget, plot, training, settings, machine."""
    lines = [
        "# Patch Forcing bench: samplers at equal compute on digits",
        "",
        "Every network below has the same size and was trained with the same steps, batch, seed and data order; "
        "only the network kind (global-time SiT or per-patch-time Patch Forcing) and the training timestep "
        "distribution differ. Every sampler gets the same budget of network evaluations per image (NFE): the "
        "multi-evaluation samplers take fewer outer steps. Metrics are computed in the feature space of the digit "
        "classifier shipped with the package, against the 1,500 training digits: FID (lower is better), improved "
        "precision and recall (k = 3) and the class accuracy of the generated digits (the label asked for). "
        f"Each number is the mean ± std over {settings.seeds} evaluation seed(s) of {settings.num_samples} images "
        "(the std shows sampling noise only: each network is trained once).",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"This run took {results['minutes_this_run']:.1f} min (reused trainings and cached rows are not redone). In all, "
        f"training took {_training_minutes(results['training'])} and sampling {sum(r['seconds'] for r in results['rows']) / 60:.1f} min "
        "(the sum over the rows; metrics not counted).",
        "",
        "## Reading (automatic)",
        "",
        "The paper's orderings (docs/method.md §5.9; ImageNet-256: SiT-B/2 33.0 > PF-B/2 Euler 27.9 > dual-loop 26.0 > "
        "look-ahead 24.2 FID, and random masks worse than Euler) checked on these numbers: first on the mean "
        "over seeds, then seed by seed (every sampler and network sees the same noise and labels for a given seed, so "
        "a seed-by-seed comparison is paired).",
        "",
    ]
    lines += _reading_lines(results["reading"])
    for budget in settings.nfe:
        lines += ["", f"## Results at an NFE budget of {budget}", "", _table(results, budget)]
    lines += ["", "## FID against NFE", "", f"![FID against NFE]({results['plot']})", ""]
    lines += ["## Training", "", _training_table(results["training"]), ""]
    lines += ["## Settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | `{v}` |" for k, v in results["settings"].items()]
    lines += ["", "Training uses the `digits` preset of `patchforcing train` for everything not listed here.",
              "", "## Machine", "", machine_line(results["machine"]), ""]
    path = out / "results.md"
    return atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines)))


def _reading_lines(claims: list[dict[str, Any]]) -> list[str]:
    if not claims:
        return ["(not enough rows to check any ordering)"]
    lines = []
    for budget in sorted({c["budget"] for c in claims}):
        cs = [c for c in claims if c["budget"] == budget]
        every = sum(c["holds"] and c["wins"] == c["seeds"] > 1 for c in cs)
        lines.append(f"At NFE {budget}: {sum(c['holds'] for c in cs)} of {len(cs)} orderings hold on the mean FID "
                     f"({every} of them in every seed).")
        lines.append("")
        for c in cs:
            verdict = "tie" if c["tie"] else ("holds" if c["holds"] else "does NOT hold")
            lines.append(f"- {c['claim']}: **{verdict}** (in {c['wins']} of {c['seeds']} seeds); FID "
                         f"{fmt(c['left_fid'], 2, c['left_std'])} ({c['left']}) vs {fmt(c['right_fid'], 2, c['right_std'])} ({c['right']})")
        lines.append("")
    return lines


def _table(results: dict[str, Any], budget: int) -> str:
    head = ("| network | sampler | NFE (outer steps) | FID ↓ | precision ↑ | recall ↑ | accuracy ↑ | s / 1,000 images | samples |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for s in results["summary"]:
        if s["budget"] != budget:
            continue
        grid = f"[grid]({s['grid']})" if s.get("grid") else ""
        rows.append(f"| {NETWORKS[s['network']].label} | {s['sampler']} | {s['nfe']} ({s['steps']}) | {fmt(s['fid'], 2, s['fid_std'])} | "
                    f"{fmt(s['precision'], 3, s['precision_std'])} | {fmt(s['recall'], 3, s['recall_std'])} | "
                    f"{fmt(s['accuracy'], 3, s['accuracy_std'])} | {fmt(s['sec_per_1000'], 0)} | {grid} |")
    return "\n".join([head, *rows])


def _training_minutes(training: dict[str, Any]) -> str:
    minutes = [_minutes(t) for t in training.values()]
    return "n/a" if any(m is None for m in minutes) else f"{sum(minutes):.1f} min"


def _minutes(t: dict[str, Any]) -> float | None:
    return t.get("wall_minutes") or (t["train_seconds"] / 60 if t.get("train_seconds") else None)


def _training_table(training: dict[str, Any]) -> str:
    rows = ["| network | model | timesteps | steps | final loss | val loss | images/s | training min |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, t in training.items():
        minutes = _minutes(t)
        rows.append(f"| {name} | {t['model']} | {t['timesteps']} | {t.get('steps')} | {fmt(t.get('final_loss'), 4)} | "
                    f"{fmt(t.get('val_loss'), 4)} | {fmt(t.get('images_per_sec'), 0)} | {fmt(minutes, 1)} |")
    return "\n".join(rows)
