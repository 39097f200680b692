"""Bounds users expect: plans that could never finish, grids that would not fit memory, guidance
scales that overflow float32 and intervals outside [0, 1] are refused up front (or, for an
overflowing scale, instead of a black image) with one line naming the fix, by the command line,
the library, the pipeline and the app alike.

Every case is one row of ``CASES``: ``(id, surface, input, message)``. ``cli`` rows run
``patchforcing`` and expect exit code 1, exactly one ``error:`` line and no traceback; ``api`` rows
call the library or the pipeline and expect one ``PatchForcingError`` line; ``app`` rows submit the
page's form and expect one ``gr.Error`` line.
"""

from __future__ import annotations

import re
import resource
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import patchforcing as pf
from conftest import make_model
from patchforcing.cli import main
from patchforcing.errors import PatchForcingError
from patchforcing.evaluation.evaluate import evaluate_model

pytestmark = pytest.mark.usefixtures("one_thread")

HUGE_PLAN = r"more than a plan may cost \(at most 10,000; the paper samples with 32\)"
INTERVAL = r"guidance_interval needs 0 <= lo <= hi <= 1 in t \(0 noise, 1 data\), got \(-0.5, 0.5\)"
OVERFLOW = r"guidance scale {} made the samples infinite or NaN while the network's own prediction is finite: lower the scale"


def _net() -> torch.nn.Module:
    """A tiny class network (5 classes and a null class) whose outputs are not trivially zero."""
    return make_model(dtype=torch.float32, in_channels=1, input_size=8)


def _pipe():
    pytest.importorskip("diffusers")
    from patchforcing.hub.transformer import PatchForcingTransformerModel

    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(_net()), nfe=8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(**kw) -> Callable[[], object]:
    return lambda: pf.sample(_net(), torch.randn(2, 1, 8, 8), labels=torch.tensor([1, 2]), **kw)


def _pipeline(**kw) -> Callable[[], object]:
    return lambda: _pipe()(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="pt", **kw)


SAMPLE = ["sample", "--checkpoint", "{ckpt}", "--out", "{out}/grid.png", "--device", "cpu"]
APP = ["app", "--checkpoint", "{ckpt}", "--device", "cpu"]

# (id, surface, input, message): a regular expression the one error line must contain
CASES = [
    # 24.7: plans that cannot finish, refused before the time grid or any sample is made
    ("sample-steps-1e9", "cli", [*SAMPLE, "--steps", "1000000000"], rf"1,000,000,000 outer steps .*{HUGE_PLAN}: lower --steps"),
    ("sample-steps-just-over", "cli", [*SAMPLE, "--steps", "10001"], rf"10,001 outer steps .*{HUGE_PLAN}"),
    ("sample-nfe-1e9", "cli", [*SAMPLE, "--nfe", "1000000000"], rf"an NFE budget of 1,000,000,000 .*{HUGE_PLAN}: lower --nfe"),
    ("sample-nfe-look-ahead-20k", "cli", [*SAMPLE, "--sampler", "look-ahead", "--nfe", "20000"], rf"NFE budget of 20,000 .*{HUGE_PLAN}"),
    ("sample-n-inner-1e8", "cli", [*SAMPLE, "--sampler", "dual-loop", "--steps", "32", "--n-inner", "100000000"],
     rf"dual-loop with 32 steps and p_frac=0.4, n_inner=100,000,000 costs over 10,000 network evaluations .*{HUGE_PLAN}"),
    ("sample-num-samples-1e8", "cli", [*SAMPLE, "--num-samples", "100000000"],
     r"100,000,000 samples are more than one grid picture holds \(at most 1,024, all kept in memory\): lower --num-samples"),
    ("sample-labels-1025", "cli", [*SAMPLE, "--labels", ",".join(["1"] * 1025)], r"1,025 samples are more than one grid picture holds"),
    ("evaluate-nfe-1e9", "cli", ["evaluate", "--checkpoint", "{ckpt}", "--sampler", "euler-pf", "--nfe", "1000000000",
                                 "--num-samples", "8", "--device", "cpu", "--out", "{out}/eval"], r"an NFE budget of 1,000,000,000"),
    ("evaluate-num-samples-1e8", "cli", ["evaluate", "--checkpoint", "{ckpt}", "--sampler", "euler-pf", "--nfe", "4",
                                         "--num-samples", "100000000", "--device", "cpu", "--out", "{out}/eval"],
     r"num_samples=100,000,000 is more than an evaluation holds \(at most 1,000,000, .*\): lower --num-samples"),
    ("library-evaluate-num-samples-1e8", "api", lambda: evaluate_model(_net(), sampler="euler-pf", nfe=4, num_samples=10**8),
     r"num_samples=100,000,000 is more than an evaluation holds"),
    ("library-steps-1e9", "api", _sample(sampler="euler-pf", steps=10**9), rf"1,000,000,000 outer steps .*{HUGE_PLAN}"),
    ("library-budget-inf", "api", lambda: pf.SamplingPlan.from_nfe("euler", float("inf")),
     r"the NFE budget must be a whole number of at least 1, got inf"),
    ("library-steps-for-nfe-1e9", "api", lambda: pf.steps_for_nfe("look-ahead", 10**9), rf"NFE budget of 1,000,000,000 .*{HUGE_PLAN}"),
    ("pipeline-steps-1e9", "api", _pipeline(num_inference_steps=10**9), rf"1,000,000,000 outer steps .*{HUGE_PLAN}"),
    ("pipeline-nfe-1e9", "api", _pipeline(nfe=10**9), rf"NFE budget of 1,000,000,000 .*{HUGE_PLAN}"),
    ("pipeline-n-inner-1e8", "api", _pipeline(sampler="dual-loop", num_inference_steps=4, n_inner=10**8),
     r"dual-loop with 4 steps and p_frac=0.4, n_inner=100,000,000 costs over 10,000 network evaluations"),
    # 24.7: one interval check for the command line, the library, the pipeline and the app
    ("sample-interval-negative", "cli", [*SAMPLE, "--cfg-scale", "2", "--guidance-interval=-0.5,0.5"], INTERVAL),
    ("sample-interval-above-1", "cli", [*SAMPLE, "--cfg-scale", "2", "--guidance-interval=0.5,2"], r"guidance_interval needs 0 <= lo"),
    ("library-interval-negative", "api", _sample(sampler="euler-pf", steps=4, cfg_scale=2.0, guidance_interval=(-0.5, 0.5)), INTERVAL),
    ("pipeline-interval-negative", "api", _pipeline(guidance_scale=2.0, guidance_interval=(-0.5, 0.5)), INTERVAL),
    ("app-interval-negative", "app", ("3", "look-ahead", 8, 2.0, -0.5, 0.5, "0", "uniform"), rf"the guidance interval: {INTERVAL}"),
    # 24.6: a guidance scale that overflows float32 is an error, not a black image
    ("sample-cfg-1e308", "cli", [*SAMPLE, "--steps", "4", "--cfg-scale", "1e308", "--labels", "1"], OVERFLOW.format(r"1e\+308")),
    ("sample-cfg-1e30", "cli", [*SAMPLE, "--sampler", "look-ahead", "--steps", "8", "--cfg-scale", "1e30", "--labels", "1"],
     OVERFLOW.format(r"1e\+30")),
    ("library-cfg-1e308", "api", _sample(sampler="dual-loop", steps=4, cfg_scale=1e308), OVERFLOW.format(r"1e\+308")),
    ("pipeline-cfg-1e30", "api", _pipeline(guidance_scale=1e30), OVERFLOW.format(r"1e\+30")),
    ("app-cfg-1e30", "app", ("3", "look-ahead", 8, 1e30, 0.0, 1.0, "0", "uniform"), OVERFLOW.format(r"1e\+30")),
    ("app-cfg-minus-1e30-in-interval", "app", ("3", "euler-pf", 8, -1e30, 0.2, 0.9, "0", "shift:3"), OVERFLOW.format(r"-1e\+30")),
    # 24.6: seeds are whole numbers up to 2**63 - 1, never rounded through a float
    ("app-seed-2-63", "app", ("3", "look-ahead", 8, 1.0, 0.0, 1.0, str(2**63), "uniform"),
     r"the seed must be a whole number from 0 to 9223372036854775807, got '9223372036854775808'"),
    ("app-seed-float-above-2-53", "app", ("3", "look-ahead", 8, 1.0, 0.0, 1.0, 9007199254740994.0, "uniform"),
     r"the seed 9007199254740994.0 arrived as a floating-point number, exact only up to 2\*\*53"),
    ("app-seed-fraction", "app", ("3", "look-ahead", 8, 1.0, 0.0, 1.0, "7.5", "uniform"), r"the seed must be a whole number"),
    ("app-nfe-1e9", "app", ("3", "look-ahead", 10**9, 1.0, 0.0, 1.0, "0", "uniform"), r"NFE must be a whole number from 1 to 512"),
    # 24.9 and 28.6: the app's address, port and session limits, checked before the network is loaded
    ("app-port-above-65535", "cli", [*APP, "--port", "70000"], r"--port must be a whole number from 1 to 65535, got 70000"),
    ("app-port-0", "cli", [*APP, "--port", "0"], r"--port must be a whole number from 1 to 65535, got 0"),
    ("app-max-sessions-0", "cli", [*APP, "--max-sessions", "0"], r"at least 1 session \(--max-sessions\)"),
    ("app-session-minutes-nan", "cli", [*APP, "--session-minutes", "nan"], r"more than 0 minutes \(--session-minutes\)"),
]

# Rows that must be refused before anything large is allocated (the time grid of 10**9 steps is 4 GB).
LEAN = {"sample-steps-1e9", "sample-nfe-1e9", "sample-n-inner-1e8", "sample-num-samples-1e8", "evaluate-num-samples-1e8",
        "library-evaluate-num-samples-1e8", "library-steps-1e9",
        "library-steps-for-nfe-1e9", "pipeline-steps-1e9", "pipeline-nfe-1e9"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return pf.save_model(_net(), tmp_path_factory.mktemp("bounds") / "tiny.safetensors")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


@pytest.mark.parametrize("name, surface, given, message", CASES, ids=[c[0] for c in CASES])
def test_every_bad_input_is_one_line_naming_the_fix(name, surface, given, message, ckpt, tmp_path, capsys):
    before = _peak_mb()
    if surface == "cli":
        argv = [a.format(ckpt=ckpt, out=tmp_path) for a in given]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        [line] = [line for line in err.splitlines() if line.startswith("error: ")]
        assert line.startswith("error: ") and len(line.splitlines()) == 1
        text = line
        assert list(tmp_path.iterdir()) == []  # nothing written: no grid, no evaluation folder
    elif surface == "api":
        with pytest.raises(PatchForcingError) as info:
            given()
        text = str(info.value)
    else:
        gr = pytest.importorskip("gradio")
        from patchforcing.app import SessionLimits, respond

        with pytest.raises(gr.Error) as info:
            respond(_pipe(), given, SessionLimits().frame_bytes)
        text = info.value.message
        assert "Traceback" not in text
    assert "\n" not in text and re.search(message, text), text
    if name in LEAN:
        assert _peak_mb() - before < 200  # refused up front: not the gigabytes the plan would take


def test_plans_at_the_bound_are_still_built():
    """The bound refuses typos, not work: a 10,000-evaluation plan is built, and a budget of it fits."""
    plan = pf.SamplingPlan.from_nfe("look-ahead", 10_000)
    assert plan.nfe <= 10_000 and plan.steps > 5_000
    assert pf.SamplingPlan("euler-pf", 10_000).nfe == 10_000
    assert pf.SamplingPlan("dual-loop", 2_500, {"n_inner": 4}).nfe == 10_000


def test_a_large_scale_that_stays_finite_and_an_interval_on_the_ends_still_sample():
    """Only overflow is refused: a scale of 1e4 gives finite samples, and [0, 1] or an empty-looking
    interval at t = 1 are valid intervals."""
    net, noise, labels = _net(), torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    x = pf.sample(net, noise, sampler="euler-pf", steps=8, labels=labels, cfg_scale=1e4)
    assert torch.isfinite(x).all() and x.abs().max() > 10  # far off the data, but what the user asked for
    plain = pf.sample(net, noise, sampler="euler-pf", steps=8, labels=labels)
    at_one = pf.sample(net, noise, sampler="euler-pf", steps=8, labels=labels, cfg_scale=3.0, guidance_interval=(1.0, 1.0))
    assert torch.equal(at_one, plain)  # no outer step starts at t = 1: nothing guided
    assert pf.sampling.GuidanceInterval.parse("0,1") == pf.sampling.GuidanceInterval.closed(0.0, 1.0)


def test_a_network_that_is_not_finite_is_not_blamed_on_the_scale():
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    x = pf.sample(net, torch.randn(2, 1, 8, 8), sampler="euler-pf", steps=4, labels=torch.tensor([1, 2]), cfg_scale=2.0)
    assert not torch.isfinite(x).any()  # passed on: evaluate's check names a diverged network
