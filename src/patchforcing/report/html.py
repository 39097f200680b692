"""``index.html`` of the demo: one self-contained page (inline CSS, no scripts, no fonts from
elsewhere) whose pictures are files next to it, linked by relative paths."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from patchforcing.report.common import fmt, machine_line
from patchforcing.runs import atomic_write

# What each sampler does, in a sentence or three (docs/method.md §5).
SAMPLER_TEXT = {
    "euler": "Plain Euler with one global time per image: every patch is denoised in lock-step. "
             "The integrator of ordinary diffusion transformers.",
    "euler-pf": "The same Euler steps with the time passed per patch (all patches equal). Equal to <i>euler</i> up "
                "to rounding: the reference the adaptive samplers must beat at the same NFE.",
    "dual-loop": "Each outer step the difficulty head marks the easiest 40&nbsp;% of patches. Those take the whole "
                 "step at once; the hard ones take 4 small steps, seeing the easy ones already ahead as context. "
                 "4 network calls per outer step, so fewer outer steps at the same NFE.",
    "look-ahead": "Each step the easiest 40&nbsp;% of patches are pushed ahead to time 1.4&nbsp;t (a cleaner guess of "
                  "them), and the hard patches are predicted again with that cleaner context. 2 network calls per "
                  "step (1 while t &le; 0.05).",
    "random-dual-loop": "Ablation: dual-loop, but the patches that run ahead are chosen at random instead of by "
                        "difficulty. The paper finds random masks worse than plain Euler.",
    "random-look-ahead": "Ablation: look-ahead with a random mask instead of the difficulty mask.",
}

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d1d1f;
     max-width:1080px;margin:0 auto;padding:24px 20px 60px;background:#fbfbfd}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.lead{color:#444;margin:4px 0 16px} .small{font-size:13px;color:#555}
table{border-collapse:collapse;margin:8px 0 4px;font-size:14px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:right} th{background:#f1f1f4}
td:first-child,th:first-child{text-align:left} tr.best td{font-weight:600;background:#eef7ee}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:14px}
.card{background:#fff;border:1px solid #e2e2e6;border-radius:8px;padding:10px 12px}
.card h3{margin:0 0 4px;font-size:16px} .card p{margin:4px 0 8px;font-size:13px;color:#444}
img.pix{image-rendering:pixelated;max-width:100%;height:auto;display:block}
code,pre{background:#f1f1f4;border-radius:4px;padding:1px 4px;font-size:13px} pre{padding:8px 10px;overflow-x:auto}
.legend span{display:inline-block;width:120px;height:10px;vertical-align:middle;margin:0 6px;
  background:linear-gradient(90deg,#440154,#3b528b,#21918c,#5ec962,#fde725)}
"""


def write_demo_page(out: Path, results: dict[str, Any]) -> Path:
    """Render ``out/index.html`` from the demo's results (paths in it are relative to ``out``)."""
    body = [_header(results), _metrics(results), _grids(results), _animations(results),
            _training(results), _calibration(results), _reproduce(results)]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>Patch Forcing demo</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return atomic_write(out / "index.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def _header(r: dict[str, Any]) -> str:
    t, s = r["training"], r["settings"]
    cfg = t["model_config"]
    if t.get("reused"):
        took = f" (its training took {t['train_seconds'] / 60:.1f} min)" if t.get("train_seconds") else ""
        trained = f"reused a finished run{took}"
    else:
        trained = f"trained in {fmt(t.get('wall_minutes'), 1)} min"
    return (
        "<h1>Patch Forcing on digits</h1>"
        "<p class=\"lead\">A diffusion transformer in which <b>every image patch has its own diffusion time</b>, a small "
        "<b>difficulty head</b> predicts how uncertain each pixel is, and <b>adaptive samplers</b> let easy patches run "
        "ahead so that they give context to the hard ones. All samplers below get the <b>same compute</b>: "
        f"{s['nfe']} network evaluations per image.</p>"
        f"<p class=\"small\">Network {escape(t['model'])} (depth {cfg['depth']}, width {cfg['hidden_size']}, patch "
        f"{cfg['patch_size']}, {t['parameters']:,} parameters), timesteps <code>{escape(t['timesteps'])}</code>, "
        f"{t.get('steps')} steps of batch {t['batch_size']}: {trained}. Report made in {r['minutes']:.1f} min on "
        f"{escape(machine_line(r['machine']))}.</p>"
    )


def _metrics(r: dict[str, Any]) -> str:
    rows = r["rows"]
    fids = [x["fid"] for x in rows if x["fid"] is not None]
    best = min(fids) if fids else None
    out = [f"<h2>Samplers at equal compute (NFE {r['settings']['nfe']})</h2>",
           f"<p class=\"small\">{r['settings']['num_samples']:,} images per sampler, one class-balanced set of labels and "
           "noise shared by all samplers. Metrics in the feature space of the digit classifier shipped with the package, "
           "against the 1,500 training digits: FID (lower is better), improved precision and recall (k&nbsp;=&nbsp;3) and "
           "the class accuracy of the generated digits. The best FID is highlighted.</p>",
           "<table><tr><th>sampler</th><th>outer steps</th><th>NFE</th><th>FID ↓</th><th>precision ↑</th>"
           "<th>recall ↑</th><th>accuracy ↑</th><th>s / 1,000 images</th></tr>"]
    for x in rows:
        cls = " class=\"best\"" if best is not None and x["fid"] == best else ""
        out.append(f"<tr{cls}><td>{escape(x['sampler'])}</td><td>{x['steps']}</td><td>{x['nfe']}</td><td>{fmt(x['fid'])}</td>"
                   f"<td>{fmt(x['precision'], 3)}</td><td>{fmt(x['recall'], 3)}</td><td>{fmt(x['accuracy'], 3)}</td>"
                   f"<td>{fmt(x['sec_per_1000'], 0)}</td></tr>")
    out.append("</table>")
    out.append(f"<p class=\"small\">{_observations(rows, r['settings']['num_samples'])}</p>")
    return "\n".join(out)


def compare_fid(a: float, b: float, verbs: tuple[str, str, str]) -> str:
    """``verbs`` = (lower, equal, higher) chosen by the two FIDs as the table prints them (two
    decimals), followed by both numbers: a sentence never calls 3.58 against 3.58 a gain."""
    shown_a, shown_b = f"{a:.2f}", f"{b:.2f}"
    if shown_a == shown_b:
        return f"{verbs[1]} (both {shown_a})"
    return f"{verbs[0] if a < b else verbs[2]} ({shown_a} vs {shown_b})"


def _observations(rows: list[dict[str, Any]], num_samples: int) -> str:
    """An automatic sentence or two on the paper's orderings in this one table, from its numbers."""
    fid = {x["sampler"]: x["fid"] for x in rows if x["fid"] is not None}
    said = []
    for name in ("dual-loop", "look-ahead"):
        if name in fid and "euler-pf" in fid:
            said.append(f"{name} " + compare_fid(fid[name], fid["euler-pf"], ("improves on euler-pf", "ties with euler-pf",
                                                                              "does worse than euler-pf")))
        if name in fid and f"random-{name}" in fid:
            said.append(f"for {name} the difficulty mask " + compare_fid(
                fid[name], fid[f"random-{name}"], ("beats a random mask", "ties with a random mask", "loses to a random mask")))
    if not said:
        return ""
    return ("In this table " + "; ".join(said) + ". One seed of " + f"{num_samples:,}" + " images: differences of a few "
            "tenths of FID are within sampling noise. <code>patchforcing bench</code> repeats the comparison over seeds, "
            "budgets and training distributions.")


def _grids(r: dict[str, Any]) -> str:
    out = ["<h2>Samples</h2>", "<p class=\"small\">One column per class (0 to 9), the same noise in every grid: differences "
           "between grids come from the sampler alone.</p>", "<div class=\"cards\">"]
    for x in r["rows"]:
        out.append(f"<div class=\"card\"><h3>{escape(x['sampler'])}</h3><p>{SAMPLER_TEXT.get(x['sampler'], '')}</p>"
                   f"<img class=\"pix\" src=\"{escape(x['grid'])}\" alt=\"samples of {escape(x['sampler'])}\">"
                   f"<p>FID {fmt(x['fid'])}, accuracy {fmt(x['accuracy'], 3)}</p></div>")
    out.append("</div>")
    return "\n".join(out)


def _animations(r: dict[str, Any]) -> str:
    if not r["animations"]:
        return ""
    out = ["<h2>Watching adaptive sampling</h2>",
           "<p>One frame per sampler step (per inner step for dual-loop). Each digit shows four panels: <b>image</b> (the "
           "current sample, pure noise at the start), <b>prediction</b> (the clean digit the network predicts from it, "
           "x + (1&nbsp;&minus;&nbsp;t)&nbsp;v; drawn for display, not counted in the NFE), <b>difficulty</b> (the head's "
           "predicted variance per pixel, relative within a frame) and <b>patch time</b> (each patch's diffusion time).</p>"
           "<p class=\"legend small\">colours: dark blue <span></span> yellow. Difficulty: easy &rarr; hard. "
           "Patch time: noise (t&nbsp;=&nbsp;0) &rarr; clean (t&nbsp;=&nbsp;1).</p>"
           "<p class=\"small\">How to read them: with <i>euler-pf</i> the time map is one flat colour that brightens "
           "evenly. With <i>look-ahead</i> the easy patches (dark in the difficulty map: mostly the empty background) "
           "light up in the time map: they are pushed ahead as context while the strokes are predicted. With "
           "<i>dual-loop</i> the easy patches jump a whole step and the inner frames show the hard patches catching "
           "up.</p>", "<div class=\"cards\">"]
    for name, a in r["animations"].items():
        out.append(f"<div class=\"card\"><h3>{escape(name)}</h3><p>{a['steps']} outer steps, NFE {a['nfe']}, "
                   f"{a['frames']} frames</p><img class=\"pix\" src=\"{escape(a['path'])}\" alt=\"{escape(name)} trajectory\"></div>")
    out.append("</div>")
    return "\n".join(out)


def _training(r: dict[str, Any]) -> str:
    t = r["training"]
    return ("<h2>Training</h2>"
            f"<p class=\"small\">Final training loss {fmt(t.get('final_loss'), 4)}, validation loss {fmt(t.get('val_loss'), 4)} "
            "(EMA network, 8 time segments of held-out digits; it tracks sample quality). Training ran at "
            f"{fmt(t.get('images_per_sec'), 0)} images/s: the images of the run's log (<code>run/metrics.jsonl</code>) over "
            "the seconds they took, validation and checkpoints left out, the figure its summary line prints.</p>"
            f"<img src=\"{escape(r['training_curve'])}\" alt=\"training and validation loss against step\" style=\"max-width:100%\">")


def _calibration(r: dict[str, Any]) -> str:
    out = ["<h2>Is the difficulty head right?</h2>",
           "<p class=\"small\">At each time t, noised held-out digits go through the network; per patch we compare the "
           "predicted log-variance with the squared velocity error the network actually made. Positive correlations mean "
           "the head ranks patches by their real difficulty, which is what the adaptive samplers rely on (the paper: "
           "R&nbsp;=&nbsp;0.52 at t&nbsp;=&nbsp;0.6, 0.11 at t&nbsp;=&nbsp;0.2 on ImageNet).</p>",
           "<table><tr><th>t</th><th>Spearman</th><th>Pearson</th><th>Pearson (log error)</th><th>patches</th></tr>"]
    for c in r["calibration"]:
        out.append(f"<tr><td>{c['t']:.1f}</td><td>{fmt(c['spearman'], 3)}</td><td>{fmt(c['pearson'], 3)}</td>"
                   f"<td>{fmt(c['pearson_log'], 3)}</td><td>{c['num_patches']:,}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _reproduce(r: dict[str, Any]) -> str:
    run = r.get("run", "run")  # the run folder as the command names it (demo/run for --out demo)
    return ("<h2>Reproduce</h2>"
            f"<pre>{escape(r['command'])}</pre>"
            f"<p class=\"small\">Running it again, from the same folder, reuses the trained network in <code>{escape(run)}</code> "
            "and the finished metric rows in <code>results.json</code>. The numbers are also in <code>results.json</code>; "
            f"load the network with <code>patchforcing.load_model(\"{escape(run)}\")</code>.</p>")
