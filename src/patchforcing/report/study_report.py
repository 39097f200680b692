"""Tables, figures and the automatic verdicts of ``patchforcing study`` (``study.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patchforcing.report.common import fmt, machine_line, mean_over_seeds, mean_std
from patchforcing.report.plots import panel_plot
from patchforcing.report.study_mechanism import MASK_KINDS, summarize
from patchforcing.report.study_settings import NETWORKS, grid_path

METRICS = ("fid", "precision", "recall", "accuracy")
NEW = "spread-look-ahead"
RIVALS = ("euler-pf", "look-ahead", "random-look-ahead")  # the samplers the new one must beat
KIND_STYLE = {"difficulty": "#1f77b4", "random": "#d62728", "inverted": "#2ca02c", "spread": "#ff7f0e"}
# Paired claims read on every network: (a, b, text) means "a has a lower FID than b".
CLAIMS = (
    ("look-ahead", "euler-pf", "look-ahead beats euler-pf"),
    ("look-ahead", "random-look-ahead", "the difficulty mask beats a random mask (look-ahead)"),
    ("look-ahead", "inverted-look-ahead", "easiest-first beats hardest-first (look-ahead)"),
    ("random-look-ahead", "euler-pf", "random-look-ahead beats euler-pf"),
)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (network, sampler, budget), in first-seen order."""
    return mean_over_seeds(rows, (*METRICS, "seconds"))


def _fids(rows: list[dict], network: str, sampler: str, budget: int) -> dict[int, float]:
    return {r["seed"]: r["fid"] for r in rows if (r["network"], r["sampler"], r["budget"]) == (network, sampler, budget)}


def compare(rows: list[dict], network: str, budget: int, a: str, b: str) -> dict[str, Any] | None:
    """Paired comparison of two samplers' FID over the seeds they share (None if one is missing)."""
    fa, fb = _fids(rows, network, a, budget), _fids(rows, network, b, budget)
    seeds = sorted(set(fa) & set(fb))
    if not seeds:
        return None
    ma, mb = mean_std([fa[s] for s in seeds])[0], mean_std([fb[s] for s in seeds])[0]
    return {"a": a, "b": b, "fid_a": ma, "fid_b": mb, "holds": ma < mb, "seeds_won": sum(fa[s] < fb[s] for s in seeds),
            "seeds": len(seeds)}


def verdict(summary: list[dict], rows: list[dict], settings) -> dict[str, Any]:
    """The paired claims per network and budget, and whether the new sampler earns a registry place.

    The new sampler WINS on a network at a budget when its mean FID is below that of every rival and
    it beats the best rival in a majority of the paired seeds; it wins a DATA SET when it wins on every
    network trained on it, at every budget. It is kept in the public registry only if it wins at least
    two data sets (several networks on one data set count once).
    """
    claims, wins = [], {}
    for network in settings.networks:
        for budget in settings.nfe:
            for a, b, text in CLAIMS:
                c = compare(rows, network, budget, a, b)
                if c:
                    claims.append({**c, "network": network, "budget": budget, "text": text})
            rivals = [compare(rows, network, budget, NEW, r) for r in RIVALS]
            if all(rivals):
                best = min(rivals, key=lambda c: c["fid_b"])
                won = all(c["holds"] for c in rivals) and best["seeds_won"] * 2 > best["seeds"]
                wins.setdefault(network, []).append({"budget": budget, "wins": won, "best_rival": best["b"],
                                                     "fid_new": best["fid_a"], "fid_best_rival": best["fid_b"],
                                                     "seeds_won": best["seeds_won"], "seeds": best["seeds"]})
    networks_won = [n for n, ws in wins.items() if all(w["wins"] for w in ws)]
    datasets = {NETWORKS[n].data: [] for n in wins}
    for n in wins:
        datasets[NETWORKS[n].data].append(n in networks_won)
    data_won = [d for d, won in datasets.items() if all(won)]
    return {"claims": claims, "new_sampler": wins, "networks_won": networks_won, "data_sets_won": data_won,
            "keep_in_registry": len(data_won) >= 2}


def _mechanism(results: dict[str, Any], network: str) -> dict[tuple, dict[str, float]]:
    return summarize(results["mechanism"][network]["context"], lambda r: (r["kind"], r["p"], r["context_ratio"], r["context"]))


def plot_all(out: Path, results: dict[str, Any], settings) -> dict[str, str]:
    """One figure per network: per time, the relative change of the uncertain patches' realised and
    predicted error and of the step error, per mask kind (p_frac = 0.4, context_ratio = 1.4)."""
    figures = {}
    for network in settings.networks:
        rows = [r for r in results["mechanism"][network]["context"]
                if r["p"] == 0.4 and r["context_ratio"] == 1.4 and r["context"] == "predicted"]
        panels = []
        for field, title in (("uncertain_real", "realised error, uncertain patches"),
                             ("uncertain_pred", "predicted error, uncertain patches"), ("step", "step error, all patches")):
            series = []
            for kind in MASK_KINDS:
                rs = [r for r in rows if r["kind"] == kind]
                if rs:
                    ys = [100 * (r[f"{field}_after"] / r[f"{field}_before"] - 1) for r in rs]
                    series.append((kind, [r["t"] for r in rs], ys, None, {"color": KIND_STYLE[kind], "marker": "o"}))
                oracle = [r for r in results["mechanism"][network]["context"] if r["kind"] == kind and r["p"] == 0.4
                          and r["context_ratio"] == 1.4 and r["context"] == "oracle"]
                if oracle and field == "uncertain_real":  # the same, with the certain patches on the true path
                    ys = [100 * (r[f"{field}_after"] / r[f"{field}_before"] - 1) for r in oracle]
                    series.append((f"{kind}, true-path context", [r["t"] for r in oracle], ys, None,
                                   {"color": KIND_STYLE[kind], "linestyle": "--"}))
            panels.append((title, series))
        path = panel_plot(out / f"study/context_{network}.png", panels, xlabel="t", ylabel="change after look-ahead (%)",
                          suptitle=f"{network}: the certain 40% run ahead to 1.4 t")
        figures[network] = str(path.relative_to(out))
    return figures


def write_markdown(out: Path, results: dict[str, Any], settings) -> Path:
    """``study.md``: command, samples table, claims, mechanism tables, mask composition, figures."""
    lines = ["# Study tables (generated by `patchforcing study`)", "", "```bash", results["command"], "```", "",
             f"This run took {results['minutes_this_run']:.1f} min ({results['cpu_minutes_this_run']:.1f} CPU min; "
             "reused trainings and cached rows are not redone). Summed over every invocation that filled the cache: "
             f"sampling and metrics {_cpu_minutes(results):.1f} CPU min; training "
             f"{sum((t.get('train_seconds') or 0) for t in results['training'].values()) / 60:.1f} min (wall).", "",
             "## Networks", "",
             "| network | data | depth | width | patch | steps | final loss | val loss | training min (wall) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, t in results["training"].items():
        lines.append(f"| {n} | {t['data']} | {t['depth']} | {t['hidden_size']} | {t['patch_size']} | {t['steps']} | "
                     f"{fmt(t.get('final_loss'), 4)} | {fmt(t.get('val_loss'), 4)} | "
                     f"{fmt((t.get('train_seconds') or 0) / 60 if t.get('train_seconds') else None, 1)} |")
    for budget in settings.nfe:
        lines += ["", f"## Samples at an NFE budget of {budget}", "",
                  "| network | sampler | NFE (steps) | FID ↓ | precision ↑ | recall ↑ | accuracy ↑ | grid |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for e in results["summary"]:
            if e["budget"] == budget:
                lines.append(f"| {e['network']} | {e['sampler']} | {e['nfe']} ({e['steps']}) | {fmt(e['fid'], 2, e['fid_std'])} | "
                             f"{fmt(e['precision'], 3, e['precision_std'])} | {fmt(e['recall'], 3, e['recall_std'])} | "
                             f"{fmt(e['accuracy'], 3, e['accuracy_std'])} | [grid]({grid_path(e['network'], e['sampler'], budget)}) |")
    lines += ["", "## Paired claims (FID, same noise and labels per seed)", ""]
    for c in results["verdict"]["claims"]:
        lines.append(f"- {c['network']}, NFE {c['budget']}: {c['text']}: **{'holds' if c['holds'] else 'does NOT hold'}** "
                     f"({c['seeds_won']} of {c['seeds']} seeds); {fmt(c['fid_a'])} ({c['a']}) vs {fmt(c['fid_b'])} ({c['b']})")
    lines += ["", f"## {NEW} against the best rival", ""]
    for network, ws in results["verdict"]["new_sampler"].items():
        for w in ws:
            lines.append(f"- {network}, NFE {w['budget']}: **{'wins' if w['wins'] else 'does not win'}**; FID {fmt(w['fid_new'])} "
                         f"vs {fmt(w['fid_best_rival'])} ({w['best_rival']}), better in {w['seeds_won']} of {w['seeds']} seeds")
    keep = results["verdict"]["keep_in_registry"]
    lines += ["", f"Networks won: {', '.join(results['verdict']['networks_won']) or 'none'}; data sets won (every network "
              f"trained on it): {', '.join(results['verdict']['data_sets_won']) or 'none'}. The rule (win at least two data "
              f"sets) says: **{'register it' if keep else 'keep it out of the public registry'}**."]
    lines += _mechanism_tables(results, settings) + _composition_table(results, settings)
    lines += ["", "## Figures", ""]
    for network, path in results["figures"].items():
        lines += [f"![context effect, {network}]({path})", "", f"![masks, {network}](study/masks_{network}.png)", ""]
    lines += ["## Machine", "", machine_line(results["machine"]), ""]
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cpu_minutes(results: dict[str, Any]) -> float:
    """CPU minutes of every sampling row and mechanism measurement, whichever run computed them."""
    rows = [r.get("cpu_seconds") or 0 for r in results["rows"]]
    mech = [m.get("cpu_seconds") or 0 for m in results["mechanism"].values()]
    return (sum(rows) + sum(mech)) / 60


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _mechanism_tables(results: dict[str, Any], settings) -> list[str]:
    lines = ["", "## Mechanism: does advancing the certain patches help the others? (p_frac 0.4, context ratio 1.4)", "",
             "Mean over the times; change = after / before - 1 (negative: the error falls). `oracle`: the certain "
             "patches advanced along the true path instead of the predicted velocity.", "",
             "| network | mask | context | uncertain realised | uncertain predicted | step error (all patches) | "
             "error of certain patches / uncertain |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for network in settings.networks:
        m = _mechanism(results, network)
        for (kind, p, rho, source), v in m.items():
            if p == 0.4 and rho == 1.4:
                lines.append(f"| {network} | {kind} | {source} | {_pct(v['uncertain_real_change'])} | "
                             f"{_pct(v['uncertain_pred_change'])} | {_pct(v['step_change'])} | "
                             f"{v['certain_real'] / v['uncertain_real_before']:.2f} |")
    lines += ["", "### Step-error change for several p and context ratios (predicted context)", "",
              "| network | p_frac | context ratio | " + " | ".join(MASK_KINDS) + " |", "| --- | --- | --- |" + " --- |" * len(MASK_KINDS)]
    for network in settings.networks:
        m = _mechanism(results, network)
        pairs = sorted({(k[1], k[2]) for k in m})
        for p, rho in pairs:
            cells = [_pct(m[(kind, p, rho, "predicted")]["step_change"]) if (kind, p, rho, "predicted") in m else "n/a"
                     for kind in MASK_KINDS]
            lines.append(f"| {network} | {p} | {rho} | " + " | ".join(cells) + " |")
    return lines


def _composition_table(results: dict[str, Any], settings) -> list[str]:
    lines = ["", "## Which patches run ahead? (p_frac 0.4)", "",
             "Share of the certain patches that hold content (digits: a stroke pixel; photos: texture above the "
             "median), mean over the times; `all patches` is the share among all patches.", "",
             "| network | all patches | " + " | ".join(MASK_KINDS) + " |", "| --- | --- |" + " --- |" * len(MASK_KINDS)]
    for network in settings.networks:
        rows = results["mechanism"][network]["composition"]
        base = mean_std([r["busy_base"] for r in rows])[0]
        cells = [fmt(mean_std([r["busy_share"] for r in rows if r["kind"] == k])[0], 2) for k in MASK_KINDS]
        lines.append(f"| {network} | {fmt(base, 2)} | " + " | ".join(cells) + " |")
    return lines
