"""``patchforcing bench`` and ``patchforcing demo`` end to end on tiny settings (seconds), plus the
pieces that decide what the reports say (the reading of the paper's orderings, the plot fallback)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from patchforcing import runs
from patchforcing.cli import main
from patchforcing.errors import ConfigError
from patchforcing.report import BenchSettings, DemoSettings, run_bench, run_demo
from patchforcing.report.bench_report import reading
from patchforcing.report.plots import line_plot
from patchforcing.sampling import PAPER_SAMPLERS, steps_for_nfe

METRICS = ("fid", "precision", "recall", "accuracy")


def _checkpoint_mtimes(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("checkpoints/step-*.pt"))}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny networks run as fast on one thread, and a busy machine cannot stall two threads' barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    settings = BenchSettings.create(tiny=True)
    lines: list[str] = []
    t0 = time.perf_counter()
    results = run_bench(out, settings, log=lines.append)
    return out, settings, results, lines, time.perf_counter() - t0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    settings = DemoSettings.create(tiny=True)
    lines: list[str] = []
    results = run_demo(out, settings, log=lines.append)
    return out, settings, results, lines


# --- bench ------------------------------------------------------------------------------------------
def test_bench_has_every_row_with_numeric_metrics(bench):
    out, settings, _, _, _ = bench
    doc = json.loads((out / "results.json").read_text())
    expected = {(n, s, b, k) for n, s, b, k in settings.rows()}
    assert len(expected) == (1 + 3 * 5) * len(settings.nfe) * settings.seeds
    assert {(r["network"], r["sampler"], r["budget"], r["seed"]) for r in doc["rows"]} == expected
    for r in doc["rows"]:
        for m in METRICS:
            assert isinstance(r[m], float) and math.isfinite(r[m]), (r, m)
        assert 1 <= r["nfe"] <= r["budget"]  # equal compute: never over the budget
    assert len(doc["summary"]) == len(expected) // settings.seeds
    assert all(s["seeds"] == settings.seeds and s["fid_std"] is not None for s in doc["summary"])
    assert doc["reading"] and doc["machine"]["cpu_count"] >= 1
    assert set(doc["training"]) == set(settings.networks)
    assert doc["training"]["pf-ltg"]["steps"] == settings.steps


def test_bench_markdown_links_exist(bench):
    out, settings, results, _, _ = bench
    text = (out / "results.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "fid_vs_nfe.png" in links and any(link.startswith("samples/") for link in links)
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), link
        assert (out / link).is_file(), link
    assert results["command"] in text and "patchforcing bench" in text
    assert "## Reading (automatic)" in text and "## Machine" in text and "## Settings" in text
    for budget in settings.nfe:
        assert f"NFE budget of {budget}" in text


def test_bench_rerun_reuses_networks_and_rows(bench, tmp_path):
    out, settings, _, _, first_seconds = bench
    copy = tmp_path / "bench"
    shutil.copytree(out, copy)
    before = _checkpoint_mtimes(copy)
    # Drop two finished rows, as if the bench had been interrupted: only those are redone.
    doc = json.loads((copy / "results.json").read_text())
    for key in list(doc["cache"])[-2:]:
        del doc["cache"][key]
    (copy / "results.json").write_text(json.dumps(doc))
    stale = [copy / ".results.json.pf-tmp-k1x2ab3c", copy / "runs" / "pf-ltg" / "checkpoints" / ".step-00000009.pt.pf-tmp-zz9zz9zz"]
    for path in stale:  # left by killed writes: the bench cleans its folder, each training its own
        path.write_bytes(b"half a file")
    lines: list[str] = []
    run_bench(copy, settings, log=lines.append)
    assert not any(p.exists() for p in stale)
    assert any("removed 1 temporary file(s) of interrupted writes" in line for line in lines)
    assert _checkpoint_mtimes(copy) == before  # no network was retrained
    assert sum("reusing the finished run" in line for line in lines) == len(settings.networks)
    total = len(settings.rows())
    assert any(f"{total - 2} of {total} evaluation rows already done; 2 to go" in line for line in lines)
    assert json.loads((copy / "results.json").read_text())["training"]["pf-ltg"]["reused"] is True


def test_bench_cli_subset_reuses_and_rejects_bad_options(bench, tmp_path, capsys):
    out, _, _, _, _ = bench
    copy = tmp_path / "bench"
    shutil.copytree(out, copy)
    before = _checkpoint_mtimes(copy)
    assert main(["bench", "--out", str(copy), "--tiny", "--seeds", "1", "--nfe", "4", "--networks", "sit-uniform,pf-ltg"]) == 0
    assert _checkpoint_mtimes(copy) == before
    doc = json.loads((copy / "results.json").read_text())
    assert len(doc["rows"]) == 1 + 5 and {r["seed"] for r in doc["rows"]} == {0}
    assert doc["command"].startswith("patchforcing bench")
    capsys.readouterr()
    # Fewer steps than the finished runs: a clear error, not a retraining.
    assert main(["bench", "--out", str(copy), "--tiny", "--steps", "3"]) == 1
    assert "more than the 3 asked for" in capsys.readouterr().err
    # Another network size in the same folder: the trainer refuses with its own message.
    assert main(["bench", "--out", str(copy), "--tiny", "--hidden-size", "64"]) == 1
    assert "another network" in capsys.readouterr().err
    assert main(["bench", "--out", str(copy), "--tiny", "--networks", "pf-nope"]) == 1
    assert "unknown network" in capsys.readouterr().err
    assert _checkpoint_mtimes(copy) == before


def test_bench_and_demo_hold_their_folder_only_while_they_run(bench, demo, tmp_path, capsys):
    bench_out, settings = bench[0], bench[1]
    demo_out = demo[0]
    run_folders = [bench_out / "runs" / n for n in settings.networks] + [demo_out / "run"]
    for folder in [bench_out, demo_out, *run_folders]:  # each training locked its own folder inside
        assert (folder / runs.LOCK_FILE).is_file()
        runs.lock_run_folder(folder).release()  # and every lock was let go at the end
    busy = tmp_path / "busy"
    with runs.lock_run_folder(busy):
        for command in ("bench", "demo"):
            assert main([command, "--out", str(busy), "--tiny"]) == 1
            last = capsys.readouterr().err.strip().splitlines()[-1]
            assert f"{busy} is in use by another run (pid {os.getpid()} on" in last
    assert sorted(p.name for p in busy.iterdir()) == [runs.LOCK_FILE]  # nothing was trained or written


@pytest.mark.parametrize("argv, message", [
    (["bench", "--nfe", "16,x"], "--nfe"),
    (["bench", "--nfe", "0"], "--nfe"),
    (["bench", "--seeds", "0"], "at least 1"),
    (["bench", "--stepz", "3"], "unrecognized arguments"),
    (["demo", "--nfe", "abc"], "whole number"),
])
def test_cli_rejects_malformed_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda: BenchSettings(nfe=(2, 16)), "below 4"),
    (lambda: BenchSettings(num_samples=5), "at least 10"),
    (lambda: BenchSettings(hidden_size=30), "divisible"),
    (lambda: BenchSettings(patch_size=3), "divide"),
    (lambda: DemoSettings(samplers=("heun",)), "unknown sampler"),
    (lambda: DemoSettings(nfe=3), "below 4"),
    (lambda: DemoSettings(steps=0), "positive"),
])
def test_settings_errors_are_clear(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "f"), "--tiny"]) == 1
    assert "is a file" in capsys.readouterr().err


def test_reading_checks_orderings_seed_by_seed():
    settings = BenchSettings(nfe=(8,), seeds=2)
    fid = {("sit-uniform", "euler"): 30, ("pf-ltg", "euler-pf"): 25, ("pf-ltg", "dual-loop"): 24, ("pf-ltg", "look-ahead"): 22,
           ("pf-ltg", "random-dual-loop"): 27, ("pf-ltg", "random-look-ahead"): 26, ("pf-uniform-patch", "euler-pf"): 40,
           ("pf-srm", "euler-pf"): 25}  # srm ties with ltg
    rows = [{"network": n, "sampler": s, "budget": 8, "seed": k, "fid": float(v + k)} for (n, s), v in fid.items() for k in range(2)]
    summary = [{"network": n, "sampler": s, "budget": 8, "fid": v + 0.5, "fid_std": 0.7, "seeds": 2} for (n, s), v in fid.items()]
    claims = reading(summary, rows, settings)
    assert len(claims) == 10
    srm = [c for c in claims if "srm" in c["claim"]]
    assert srm[0]["tie"] and not srm[0]["holds"] and srm[0]["wins"] == 0
    others = [c for c in claims if "srm" not in c["claim"]]
    assert all(c["holds"] and c["wins"] == c["seeds"] == 2 for c in others)
    # Make look-ahead worse than dual-loop: that ordering (and only it among the look-ahead ones vs dual-loop) fails.
    summary2 = [dict(s, fid=30.0) if (s["network"], s["sampler"]) == ("pf-ltg", "look-ahead") else s for s in summary]
    flipped = {c["claim"]: c["holds"] for c in reading(summary2, rows, settings)}
    assert flipped["look-ahead beats dual-loop"] is False and flipped["dual-loop beats Euler on the same Patch Forcing network"] is True


def test_plot_falls_back_to_svg_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import raises ImportError
    path = line_plot(tmp_path / "p.png", [("a", [1, 2], [3.0, 2.0], None, {"linestyle": "--"})], title="t", xlabel="x", ylabel="y")
    assert path.suffix == ".svg" and path.read_text().startswith("<svg") and "polyline" in path.read_text()


# --- demo -------------------------------------------------------------------------------------------
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_demo_page_is_self_contained_and_every_file_exists(demo):
    out, settings, results, lines = demo
    text = (out / "index.html").read_text()
    parser = _Links()
    parser.feed(text)
    assert "script" not in parser.tags and "link" not in parser.tags  # inline CSS, no scripts, no external sheets
    assert "http://" not in text and "https://" not in text
    for link in parser.links:
        assert not link.startswith("/") and (out / link).is_file(), link
    assert {f"samples/{s}.png" for s in PAPER_SAMPLERS} <= set(parser.links)
    assert {"animations/look-ahead.gif", "animations/dual-loop.gif", results["training_curve"]} <= set(parser.links)
    assert "Spearman" in text and "image" in text and "patch time" in text
    assert any(line.startswith("open ") and "index.html" in line for line in lines)


def test_demo_metrics_cover_every_sampler_at_equal_nfe(demo):
    out, settings, _, _ = demo
    doc = json.loads((out / "results.json").read_text())
    assert [r["sampler"] for r in doc["rows"]] == list(PAPER_SAMPLERS)
    for r in doc["rows"]:
        assert all(isinstance(r[m], float) and math.isfinite(r[m]) for m in METRICS), r
        assert 1 <= r["nfe"] <= settings.nfe and r["sec_per_1000"] > 0
    assert [c["t"] for c in doc["calibration"]] == [0.2, 0.4, 0.6, 0.8]


def test_demo_gifs_show_every_step(demo):
    out, settings, _, _ = demo
    for sampler, per_step in (("dual-loop", 4), ("look-ahead", 1)):
        gif = Image.open(out / "animations" / f"{sampler}.gif")
        assert gif.n_frames == steps_for_nfe(sampler, settings.nfe) * per_step + 1  # + the result
        assert gif.width >= 16 * 3 * 6 and gif.info.get("loop") == 0


def test_demo_page_states_its_runs_speed_and_path(demo):
    """The page's images/s is the run's summary figure, recomputed from its metrics.jsonl; Reproduce names
    the run folder as the command made it (OUT/run)."""
    out, _, results, _ = demo
    lines = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if "loss" in m]
    images = train[-1]["images_seen"]
    seconds = sum((b["images_seen"] - a) / b["images_per_sec"] for a, b in zip([0] + [m["images_seen"] for m in train], train, strict=False))
    assert results["training"]["images_per_sec"] == pytest.approx(images / seconds, rel=1e-12)
    text = (out / "index.html").read_text()
    assert f"Training ran at {images / seconds:.0f} images/s" in text
    assert f'patchforcing.load_model("{(out / "run").as_posix()}")' in text


@pytest.mark.parametrize("a, b, said", [
    (3.581, 3.579, "ties with euler-pf (both 3.58)"),
    (3.32, 3.58, "improves on euler-pf (3.32 vs 3.58)"),
    (3.60, 3.58, "does worse than euler-pf (3.60 vs 3.58)"),
])
def test_demo_sentences_follow_the_printed_numbers(a, b, said):
    from patchforcing.report.html import compare_fid

    assert compare_fid(a, b, ("improves on euler-pf", "ties with euler-pf", "does worse than euler-pf")) == said


def test_demo_rerun_reuses_the_network_and_rows(demo):
    out, settings, _, _ = demo
    before = _checkpoint_mtimes(out)
    lines: list[str] = []
    run_demo(out, settings, log=lines.append)
    assert _checkpoint_mtimes(out) == before
    assert any("reusing the finished run" in line for line in lines)
    assert any("resuming: 6 finished row(s)" in line for line in lines)
    assert not any(line.startswith("euler:") for line in lines)  # no sampler was evaluated again
