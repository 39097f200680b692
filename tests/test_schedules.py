"""Time-grid schedules (``sampling/schedules.py``): end points, monotonicity, the formulas, parsing,
and how the first-order samplers use a non-uniform grid."""

from __future__ import annotations

import math

import pytest
import torch

import patchforcing as pf
from conftest import make_model, seeded_noise
from patchforcing.sampling import SamplingPlan, time_grid
from patchforcing.sampling.samplers import WARMUP_T32
from patchforcing.sampling.schedules import EDM_SIGMA_MAX, EDM_SIGMA_MIN, parse_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
B = 3
LABELS = torch.tensor([0, 3, 4])
SCHEDULES = ["uniform", "shift:1", "shift:3", "shift:0.5", "edm:7", "edm:3", "edm:1"]


def warmup_count(grid) -> int:
    """Outer steps of ``grid`` that look-ahead takes as a warm-up step (``t_k <= 0.05`` in float32)."""
    return int((grid[:-1] <= WARMUP_T32).sum())


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_grid_ends_exactly_and_increases(schedule):
    for steps in range(1, 60):
        grid = time_grid(steps, schedule)
        assert grid.dtype == torch.float32 and grid.shape == (steps + 1,)
        assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
        assert bool((grid[1:] > grid[:-1]).all()), (steps, grid)


def test_uniform_is_the_reference_linspace_bit_for_bit():
    for steps in range(1, 200):
        ref = torch.linspace(0, 1, steps + 1, dtype=torch.float32)
        assert torch.equal(time_grid(steps), ref)
        assert torch.equal(time_grid(steps, "uniform"), ref)
        assert torch.equal(time_grid(steps, "shift:1"), ref)  # S = 1 is the uniform grid


def test_shift_follows_the_sd3_formula():
    for shift in (0.5, 2.0, 3.0, 6.0):
        u = torch.arange(11, dtype=F64) / 10
        s = 1 - u
        expected = 1 - shift * s / (1 + (shift - 1) * s)
        grid = time_grid(10, f"shift:{shift}").double()
        torch.testing.assert_close(grid, expected, atol=1e-7, rtol=0)
        inner = grid[1:-1] - u[1:-1]
        assert bool((inner < 0).all() if shift > 1 else (inner > 0).all())  # S > 1: more steps near the noise


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_edm_interior_is_evenly_spaced_in_sigma_to_the_one_over_rho(rho):
    steps = 12
    grid = time_grid(steps, f"edm:{rho:g}").double()
    sigma = (1 - grid[1:-1]) / grid[1:-1]  # interior points only: the ends are pinned to 0 and 1
    root = sigma ** (1 / rho)
    hi, lo = EDM_SIGMA_MAX ** (1 / rho), EDM_SIGMA_MIN ** (1 / rho)
    expected = hi + torch.arange(1, steps, dtype=F64) / steps * (lo - hi)  # points 1 .. S-1 of S+1
    torch.testing.assert_close(root, expected, atol=0, rtol=1e-5)
    assert bool((sigma < EDM_SIGMA_MAX).all() and (sigma > EDM_SIGMA_MIN).all())


@pytest.mark.parametrize(
    "bad", ["cosine", "shift", "shift:", "shift:0", "shift:-2", "shift:abc", "shift:inf", "edm:nan", "edm:0", "uniform:2", "", 3],
)
def test_bad_schedules_raise_one_clear_error(bad, pf_model):
    with pytest.raises(pf.ConfigError) as err:
        parse_schedule(bad)
    assert "shift:" in str(err.value)  # names the fix
    with pytest.raises(pf.ConfigError):
        pf.sample(pf_model, seeded_noise(), sampler="euler-pf", steps=2, schedule=bad)
    with pytest.raises(pf.ConfigError):
        pf.expected_nfe("look-ahead", 4, schedule=bad)
    with pytest.raises(pf.ConfigError, match="shift:"):
        SamplingPlan("euler-pf", 2, schedule=bad)


def test_a_grid_that_collapses_in_float32_is_refused():
    with pytest.raises(pf.ConfigError, match="same float32 time"):
        time_grid(8, "shift:1e-12")  # every interior point rounds to t = 1


# --- the schedule in the sampling plan ------------------------------------------------------------------
def test_plan_records_the_schedule_and_keeps_uniform_json_unchanged():
    uniform = SamplingPlan.from_nfe("look-ahead", 16)
    assert uniform.schedule == "uniform" and "schedule" not in uniform.to_json()  # evaluation parts written before resume
    assert set(uniform.to_json()) == {"sampler", "steps", "nfe", "nfe_budget", "options", "guidance"}
    assert SamplingPlan.from_json(uniform.to_json()) == uniform
    edm = SamplingPlan.from_nfe("look-ahead", 12, schedule="edm:3.0")
    assert edm.schedule == "edm:3" and edm.to_json()["schedule"] == "edm:3"  # the canonical spelling
    assert (edm.steps, edm.nfe) == (8, 12) and (uniform.steps, uniform.nfe) == (8, 15)
    assert SamplingPlan.from_json(edm.to_json()) == edm
    assert "schedule edm:3" in edm.describe() and "schedule" not in uniform.describe()
    assert torch.equal(edm.grid, time_grid(8, "edm:3"))
    assert SamplingPlan.from_keywords(sampler="look-ahead", nfe=12, schedule="edm:3.0") == edm  # pf.sample's keywords
    edm.grid[1] = 0.5  # the plan's grid is built once and handed out as a copy
    assert torch.equal(edm.grid, time_grid(8, "edm:3"))


def test_a_plan_refuses_a_grid_that_collapses():
    with pytest.raises(pf.ConfigError, match="same float32 time"):
        SamplingPlan("euler-pf", 8, schedule="shift:1e-12")


def test_parsed_schedule_prints_back():
    assert str(parse_schedule("shift:3")) == "shift:3" and str(parse_schedule(" edm:7 ")) == "edm:7"
    assert str(parse_schedule("uniform")) == "uniform"


# --- the first-order samplers on a non-uniform grid ------------------------------------------------------
@pytest.mark.parametrize("sampler", ["euler", "euler-pf", "dual-loop", "look-ahead"])
def test_uniform_schedule_changes_nothing(sampler):
    model = make_model("patch-forcing", 2, seed=21)
    noise = seeded_noise(1)
    plain = pf.sample(model, noise, sampler=sampler, steps=5, labels=LABELS, cfg_scale=2.0)
    for schedule in ("uniform", "shift:1"):
        assert torch.equal(pf.sample(model, noise, sampler=sampler, steps=5, labels=LABELS, cfg_scale=2.0, schedule=schedule), plain)
    other = pf.sample(model, noise, sampler=sampler, steps=5, labels=LABELS, cfg_scale=2.0, schedule="shift:3")
    assert (other - plain).abs().max() > 1e-4  # the schedule reaches the sampler


# (the NFE counted equals the NFE declared for every sampler on every grid: test_sampler_properties.py)
def test_look_ahead_warm_up_is_counted_on_the_grid():
    """edm:3 with 8 steps puts t_0 .. t_3 at or below 0.05: four warm-up steps, NFE 4 + 2 * 4."""
    grid = time_grid(8, "edm:3")
    warm = int((grid[:-1] <= torch.tensor(0.05, dtype=torch.float32)).sum())
    assert warm == warmup_count(grid) == 4
    assert pf.expected_nfe("look-ahead", 8, schedule="edm:3") == warm + 2 * (8 - warm) == 12
    assert pf.steps_for_nfe("look-ahead", 12, schedule="edm:3") == 8


def test_dual_loop_splits_each_outer_interval_uniformly():
    steps, k_inner = 4, 4
    model = make_model("patch-forcing", 2, seed=23)
    _, info = pf.sample(model, seeded_noise(3), sampler="dual-loop", steps=steps, labels=LABELS, schedule="edm:7",
                        return_info=True, record_trajectory=True)
    frames = info["trajectory"]
    grid = time_grid(steps, "edm:7").double()
    for k in range(steps):
        chunk = frames[k * k_inner:(k + 1) * k_inner]
        certain = chunk[1]["certain"].view(B, 1, 4, 2, 4, 2)[:, 0, :, 0, :, 0].flatten(1)  # (B, N)
        d = grid[k + 1] - grid[k]
        for j, f in enumerate(chunk[1:], start=1):
            expected = torch.where(certain, grid[k + 1], grid[k] + j * d / k_inner)
            torch.testing.assert_close(f["t"].double(), expected, atol=1e-6, rtol=0)


def test_look_ahead_advance_is_min_rho_t_on_any_grid():
    steps, rho = 6, 1.4
    model = make_model("patch-forcing", 2, seed=24)
    _, info = pf.sample(model, seeded_noise(4), sampler="look-ahead", steps=steps, labels=LABELS, schedule="shift:3",
                        return_info=True, record_trajectory=True)
    grid = time_grid(steps, "shift:3").double()
    seen = 0
    for k, f in enumerate(info["trajectory"]):
        if f["certain"] is None:
            continue
        certain = f["certain"].view(B, 1, 4, 2, 4, 2)[:, 0, :, 0, :, 0].flatten(1)
        expected = torch.where(certain, min(rho * float(grid[k]), 1.0), grid[k])
        torch.testing.assert_close(f["t"].double(), expected, atol=1e-6, rtol=0)
        seen += 1
    assert seen == steps - warmup_count(time_grid(steps, "shift:3")) and seen >= 3
    assert math.isclose(float(grid[1]), 1 - 3 * (5 / 6) / (1 + 2 * (5 / 6)), rel_tol=1e-6)


# --- the measurement script (benchmarks/sampler_schedules.py) in its tiny mode -----------------------------
def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sampler_schedules.py"
    spec = importlib.util.spec_from_file_location("sampler_schedules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measurement_script_tunes_measures_reports_and_resumes(tmp_path, monkeypatch, capsys):
    import json

    script = _script()
    out = tmp_path / "sched"
    assert script.main(["--tiny", "--out", str(out)]) == 0
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["shift"] in ("shift:1.5", "shift:3") and tuning["edm"] in ("edm:3", "edm:7")
    assert tuning["seed"] == script.HELD_OUT_SEED
    rows = [json.loads(p.read_text()) for p in (out / "rows").glob("*.json")]
    measured = [r for r in rows if r["seed"] != script.HELD_OUT_SEED]
    schedules = {"uniform", tuning["shift"], tuning["edm"]}
    per_dataset = (len(script.PF_SAMPLERS) + len(script.SIT_SAMPLERS)) * 3 * 2  # samplers x schedules x budgets, one seed
    assert len(measured) == 2 * per_dataset  # digits and photos
    assert {r["schedule"] for r in measured} == schedules
    photos = [r for r in measured if r["network"].startswith("photos-")]
    assert len(photos) == per_dataset and all(r["accuracy"] is None and r["fid"] > 0 for r in photos)
    # photos rows are the study's rows on a plan: the same images and score as generate_images + photos_metrics
    row = next(r for r in photos if (r["sampler"], r["schedule"], r["budget"]) == ("look-ahead", tuning["shift"], 8))
    plan = pf.SamplingPlan.from_nfe("look-ahead", 8, schedule=tuning["shift"])
    _, images, _, _ = script.generate_images(script.tiny_network("pf", "photos"), plan, num_samples=12, seed=0, batch_size=16)
    assert row["fid"] == pytest.approx(script.photos_metrics(images)["fid"], rel=1e-12)
    for r in measured:  # the budget holds and the row's NFE is what the sampler declares on its grid
        assert r["nfe"] <= r["budget"]
        assert r["nfe"] == pf.expected_nfe(r["sampler"], r["steps"], schedule=r["schedule"])
    doc = (out / "samplers.md").read_text()
    assert "## Digits" in doc and "## Photos" in doc and "### SiT baseline" in doc and "look-ahead-heun" in doc
    assert "digits and photos" in doc and ("**public**" in doc or "study only" in doc)
    for name in ("fid_vs_nfe", "fid_vs_nfe_photos"):
        assert (out / "samplers" / f"{name}.png").exists() or (out / "samplers" / f"{name}.svg").exists()

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a cached row was evaluated again")

    monkeypatch.setattr(script, "evaluate_model", no_evaluation)
    monkeypatch.setattr(script, "generate_images", no_evaluation)
    doc_path = out / "samplers.md"  # a hand-written reading survives a rewrite of the tables, once
    doc_path.write_text(doc.replace("\nCommand: `", "\n## Reading (written for this run)\n\nA note.\n\nCommand: `")
                        + "\n## Heun's last step\n\nA table of benchmarks/heun_last_step.py.\n")
    assert script.main(["--tiny", "--out", str(out)]) == 0  # resume: every row is read back
    again = doc_path.read_text()
    assert again.count("## Reading") == 1 and again.count("A note.") == 1 and again.count("\nCommand: `") == 1
    assert again.count("## Heun's last step") == 1 and again.count("A table of benchmarks/heun_last_step.py.") == 1


def _heun_script():
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("heun_last_step", folder / "heun_last_step.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def test_edm_grid_against_the_karras_grid_as_documented():
    """docs/method.md §5.10: edm:7 with 32 steps differs from the 32-step Karras grid by up to 0.052 in t, and its
    interior points are those of the 33-step Karras grid."""
    g = _heun_script().grid_comparison(32, 7.0)
    assert round(g["max_diff"], 3) == 0.052 and g["at"] == 20
    assert g["interior_vs_ramp"] < 1e-6 and g["peer_first"] == pytest.approx(1 / 81)


def test_heun_section_replaces_itself_and_keeps_the_page(tmp_path):
    script = _heun_script()
    page = tmp_path / "samplers.md"
    page.write_text("# Samplers\n\nTables.\n\n## Heun's last step\n\nold\n\n## After\n\nkept\n")
    script.write_section(page, "## Heun's last step\n\nnew\n")
    text = page.read_text()
    assert "old" not in text and text.count("## Heun's last step") == 1 and "new" in text
    assert text.startswith("# Samplers\n\nTables.\n") and "## After\n\nkept" in text


def test_measurement_script_needs_both_networks(tmp_path, capsys):
    assert _script().main(["--out", str(tmp_path)]) == 2
    assert "--pf-run" in capsys.readouterr().err
    assert _script().main(["--out", str(tmp_path), "--pf-run", "a", "--sit-run", "b", "--photos-pf-run", "c"]) == 2
    assert "--photos-sit-run" in capsys.readouterr().err
