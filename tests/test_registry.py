"""Every sampler of the registry, and the sampling plan: properties checked by looping over the
registry (a new sampler is tested without editing this file). The properties of sampling itself
(exactness on a straight path, the NFE spent, budgets, batch independence) are in
test_sampler_properties.py."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import patchforcing as pf
from conftest import make_model, per_image_generators, seeded_noise
from patchforcing.errors import ConfigError
from patchforcing.sampling import REGISTRY, SAMPLERS, Guidance, GuidanceInterval, MaskKind, SamplingPlan, time_grid
from patchforcing.sampling.registry import STUDY_SAMPLERS, get_sampler

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = torch.tensor([0, 3, 4])
ALL = sorted(REGISTRY)


# --- the registry ------------------------------------------------------------------------------------
def test_one_registry_with_public_and_study_views():
    assert set(SAMPLERS) | set(STUDY_SAMPLERS) == set(REGISTRY) and not set(SAMPLERS) & set(STUDY_SAMPLERS)
    assert all(s.public for s in SAMPLERS.values()) and not any(s.public for s in STUDY_SAMPLERS.values())
    # the bench and the demo compare the paper's six by default; samplers added since are public but not among them
    from patchforcing.sampling import PAPER_SAMPLERS

    assert list(PAPER_SAMPLERS) == ["euler", "euler-pf", "dual-loop", "look-ahead", "random-dual-loop", "random-look-ahead"]
    assert set(PAPER_SAMPLERS) < set(SAMPLERS)
    assert pf.SAMPLERS is SAMPLERS
    for name, spec in REGISTRY.items():
        assert spec.name == name and spec.description and isinstance(spec.mask, MaskKind)
        assert spec.needs_difficulty_head <= spec.needs_per_patch_time  # the head comes with per-patch time
        assert (spec.mask is MaskKind.NONE) == (not spec.needs_difficulty_head and spec.mask is not MaskKind.RANDOM)
        for f in dataclasses.fields(spec.options_type):
            assert f.metadata["help"] and f.name != "p"  # the certain fraction is p_frac everywhere


def test_per_patch_time_and_head_are_separate_facts():
    assert not REGISTRY["euler"].needs_per_patch_time
    for name in ("euler-pf", "random-dual-loop", "random-look-ahead"):
        assert REGISTRY[name].needs_per_patch_time and not REGISTRY[name].needs_difficulty_head
    for name in ("dual-loop", "look-ahead"):
        assert REGISTRY[name].needs_difficulty_head


# (exactness on a straight path, the NFE spent, budgets and batch independence: test_sampler_properties.py)
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("schedule", ["uniform", "edm:3"])
def test_step_end_callback_sees_every_outer_step_and_may_replace_the_sample(pf_net, name, schedule):
    noise, steps = seeded_noise(8), 5
    plan = SamplingPlan(name, steps, schedule=schedule)
    seen = []

    def watch(k, t_k, x):
        seen.append((k, t_k, x.clone()))

    plain = pf.sample(pf_net, noise, plan, labels=LABELS, generator=per_image_generators([1, 2, 3]))
    watched = pf.sample(pf_net, noise, plan, labels=LABELS, generator=per_image_generators([1, 2, 3]), on_step_end=watch)
    assert torch.equal(watched, plain)  # a callback that returns None changes nothing
    assert [k for k, _, _ in seen] == list(range(steps))
    assert [t for _, t, _ in seen] == time_grid(steps, schedule)[:-1].tolist()  # t_k: where each step started
    assert torch.equal(seen[-1][2], plain)  # the last step's latents are the sample
    # latents replaced after step 2: the rest of the run continues from them (shifting them moves the result)
    moved = pf.sample(pf_net, noise, plan, labels=LABELS, generator=per_image_generators([1, 2, 3]),
                      on_step_end=lambda k, t, x: x + 0.5 if k == 2 else None)
    assert (moved - plain).abs().max() > 0.1
    zeros = pf.sample(pf_net, noise, plan, labels=LABELS, generator=per_image_generators([1, 2, 3]),
                      on_step_end=lambda k, t, x: torch.zeros_like(x) if k == steps - 1 else None)
    assert torch.equal(zeros, torch.zeros_like(plain))
    with pytest.raises(pf.ShapeError, match="step-end callback returned"):
        pf.sample(pf_net, noise, plan, labels=LABELS, generator=per_image_generators([1, 2, 3]), on_step_end=lambda k, t, x: x[:1])


@pytest.mark.parametrize("name", ALL)
def test_options_have_defaults_and_checked_ranges(name):
    spec = get_sampler(name)
    opts = spec.make_options()
    for f in dataclasses.fields(opts):
        meta = f.metadata
        for bad in ([meta["low"]] if meta["low_open"] else []) + ([meta["high"]] if meta["high_open"] else []) + \
                   ([meta["low"] - 1] if meta["low"] is not None else []):
            with pytest.raises(ConfigError, match=f.name):
                spec.make_options(**{f.name: bad})
    with pytest.raises(ConfigError, match="no option"):
        spec.make_options(heun_order=2)


def test_old_keyword_p_is_the_certain_fraction(pf_net):
    a = pf.sample(pf_net, seeded_noise(), sampler="look-ahead", steps=4, labels=LABELS, p=0.3)
    b = pf.sample(pf_net, seeded_noise(), sampler="look-ahead", steps=4, labels=LABELS, p_frac=0.3)
    assert torch.equal(a, b) and not torch.equal(a, pf.sample(pf_net, seeded_noise(), sampler="look-ahead", steps=4, labels=LABELS))
    with pytest.raises(ConfigError, match="not both"):
        pf.expected_nfe("dual-loop", 2, p=0.3, p_frac=0.3)


# --- the plan -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_a_plan_samples_as_the_old_keywords_do(pf_net, name):
    plan = SamplingPlan(name, 4, guidance=Guidance(2.0, (0.2, 0.7)))
    _, info = pf.sample(pf_net, seeded_noise(), plan, labels=LABELS, return_info=True, generator=torch.Generator().manual_seed(0))
    old = pf.sample(pf_net, seeded_noise(), sampler=name, steps=4, labels=LABELS, cfg_scale=2.0, guidance_interval=(0.2, 0.7),
                    generator=torch.Generator().manual_seed(0))
    new = pf.sample(pf_net, seeded_noise(), plan, labels=LABELS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(old, new) and info["plan"] == plan and info["nfe"] == plan.nfe


@pytest.mark.parametrize("name", ALL)
def test_plan_json_round_trip(name):
    spec = get_sampler(name)
    options = {f.name: f.default for f in dataclasses.fields(spec.options_type)}
    for guidance in (Guidance(), Guidance(2.5, "sigma:0.34,1.02"), Guidance(1.5, (0.1, 0.6), guide="runs/x@step=5")):
        plan = SamplingPlan.from_nfe(name, 16, guidance=guidance, **options)
        assert SamplingPlan.from_json(plan.to_json()) == plan
        assert plan.to_json()["nfe"] == plan.nfe <= 16 == plan.nfe_budget


def test_plan_refuses_loose_keywords_beside_it(pf_net):
    with pytest.raises(ConfigError, match="not both"):
        pf.sample(pf_net, seeded_noise(), SamplingPlan("euler-pf", 2), steps=3)
    with pytest.raises(ConfigError, match="steps"):
        pf.sample(pf_net, seeded_noise(), sampler="euler-pf")


def test_plan_check_names_what_the_network_lacks(pf_net):
    sit = make_model("sit", 2)
    for name, spec in REGISTRY.items():
        if spec.needs_per_patch_time:
            with pytest.raises(ConfigError, match="euler"):
                SamplingPlan(name, 2).check(sit)
        else:
            SamplingPlan(name, 2).check(sit)
    no_null = make_model("patch-forcing", 2, class_dropout_prob=0.0)
    with pytest.raises(ConfigError, match="null class"):
        SamplingPlan("euler-pf", 2, guidance=Guidance(2.0)).check(no_null)
    other = make_model("patch-forcing", 4)
    with pytest.raises(ConfigError, match="same kind and shape"):
        SamplingPlan("euler-pf", 2, guidance=Guidance(2.0, guide="weak.pt")).check(pf_net, other)
    with pytest.raises(ConfigError, match="guide_model"):
        SamplingPlan("euler-pf", 2, guidance=Guidance(2.0, guide="weak.pt")).check(pf_net)
    for bad in (float("nan"), float("inf"), "x"):
        with pytest.raises(ConfigError, match="finite"):
            Guidance(bad)


# --- guidance intervals in sigma (half-open) ------------------------------------------------------------
def _guided_times(interval: GuidanceInterval, steps: int) -> list[float]:
    return [t for t in time_grid(steps)[:-1].tolist() if interval.contains(t)]


def test_sigma_interval_is_half_open_and_exact():
    iv = GuidanceInterval.from_sigma(1.0, 3.0)  # sigma in (1, 3]  <=>  t in [0.25, 0.5)
    assert (iv.lo, iv.hi, iv.lo_open, iv.hi_open) == (0.25, 0.5, False, True)
    assert _guided_times(iv, 8) == [0.25, 0.375]  # sigma 3 (t = 0.25) in; sigma 1 (t = 0.5) out
    assert _guided_times(GuidanceInterval.closed(0.25, 0.5), 8) == [0.25, 0.375, 0.5]
    assert GuidanceInterval.parse("sigma:1,3") == iv and GuidanceInterval.parse(" 0.25, 0.5") == GuidanceInterval.closed(0.25, 0.5)
    assert GuidanceInterval.from_json(iv.to_json()) == iv


@pytest.mark.parametrize("lo, hi", [(0.34, 1.02), (0.28, 2.90), (0.19, 1.61), (0.28, 5.42), (0.25, 1.0)])
def test_sigma_interval_agrees_with_exact_arithmetic_on_every_grid(lo, hi):
    iv = GuidanceInterval.from_sigma(lo, hi)
    assert iv.lo == 1 / (1 + hi) and iv.hi == 1 / (1 + lo)
    for steps in range(1, 101):
        for t in time_grid(steps)[:-1].tolist():
            sigma = (1 - Fraction(t)) / Fraction(t) if t > 0 else None
            assert iv.contains(t) == (sigma is not None and Fraction(lo) < sigma <= Fraction(hi))


def test_sigma_interval_guides_the_same_steps_as_the_t_interval(pf_net):
    kw = dict(sampler="euler-pf", steps=8, labels=LABELS, cfg_scale=3.0)
    by_sigma = pf.sample(pf_net, seeded_noise(), guidance_interval="sigma:1,3", **kw)
    by_t = pf.sample(pf_net, seeded_noise(), guidance_interval=(0.25, 0.375), **kw)
    closed = pf.sample(pf_net, seeded_noise(), guidance_interval=(0.25, 0.5), **kw)
    assert torch.equal(by_sigma, by_t) and not torch.equal(by_sigma, closed)


@pytest.mark.parametrize("text", ["sigma:2,1", "sigma:-1,2", "sigma:1", "0.8,0.2", "a,b"])
def test_bad_intervals_are_refused(text):
    with pytest.raises(ConfigError):
        GuidanceInterval.parse(text)


# --- the command-line flags ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)  # study samplers parse by name too; their options are flags of public ones
def test_options_round_trip_through_the_flags(name):
    import argparse

    from patchforcing.commands.plan_flags import add_plan_flags, plan_from_args, plan_to_argv

    parser = argparse.ArgumentParser()
    add_plan_flags(parser, budget="steps", default_sampler="euler-pf", default_steps=32)
    spec = get_sampler(name)
    changed = {}
    for f in dataclasses.fields(spec.options_type):  # a value other than the default, inside the range
        changed[f.name] = f.default + 1 if f.metadata["integer"] else (f.default + f.metadata["low"]) / 2 \
            if f.metadata["high"] is not None else f.default * 1.5
    for plan in (SamplingPlan(name, 7, changed, Guidance(2.5, "sigma:0.34,1.02", guide="runs/a@step=3")),
                 SamplingPlan.from_nfe(name, 16, guidance=Guidance(1.5, (0.1, 0.6)), **changed),
                 SamplingPlan.from_nfe(name, 16, schedule="edm:7", **changed),
                 SamplingPlan(name, 5, changed, schedule="shift:2.5")):
        again = plan_from_args(parser.parse_args(plan_to_argv(plan)))
        assert again == plan and again.to_json() == plan.to_json()


def test_help_lists_every_public_sampler_with_its_description(capsys):
    from patchforcing.commands import main

    for command in ("sample", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        lines = [line.split() for line in text.splitlines()]
        for name, spec in SAMPLERS.items():
            assert [name, *spec.description.split()] in lines
        assert "--p-frac" in text and "--p " not in text  # the old --p parses but is not offered


def test_library_packages_do_not_import_the_command_layer():
    import ast

    src = Path(pf.__file__).parent
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).as_posix()
        if rel.startswith("commands/") or rel in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("patchforcing.commands") for n in names), rel
            if rel.startswith("sampling/"):
                assert "patchforcing" not in names, f"{rel} imports the package root"


def test_bench_and_demo_take_the_generated_sampling_flags():
    from patchforcing.commands import build_parser
    from patchforcing.commands.plan_flags import pop_sampling_settings
    from patchforcing.report.bench import BenchSettings
    from patchforcing.report.demo import DemoSettings

    def settings(cls, argv):
        args = build_parser().parse_args(argv)
        sampling = pop_sampling_settings(args)
        values = {k: v for k, v in vars(args).items() if k not in ("out", "tiny", "func", "command")}
        return cls.create(tiny=args.tiny, sampling=sampling, **values)

    demo = settings(DemoSettings, ["demo", "--tiny", "--samplers", "euler-pf,dual-loop", "--n-inner", "2",
                                   "--cfg-scale", "2", "--guidance-interval", "sigma:0.34,1.02"])
    plan = demo.sampling.plan("dual-loop", 8)
    assert plan.options.n_inner == 2 and plan.steps == 4 and plan.guidance.scale == 2.0
    assert plan.guidance.interval == GuidanceInterval.from_sigma(0.34, 1.02)
    assert demo.sampling.plan("euler-pf", 8).options.to_dict() == {}  # applies only where the sampler has it
    assert "--n-inner 2 --cfg-scale 2.0 --guidance-interval sigma:0.34,1.02" in demo.command(Path("d"))
    default = settings(BenchSettings, ["bench", "--tiny"])
    assert "sampling" not in default.fingerprint()  # rows cached before stay valid
    assert settings(BenchSettings, ["bench", "--tiny", "--p-frac", "0.3"]).fingerprint()["sampling"] == \
        {"options": {"p_frac": 0.3}, "guidance": {}}  # no schedule key on the uniform grid: cached rows stay valid
    edm = settings(BenchSettings, ["bench", "--tiny", "--schedule", "edm:7.0"])
    assert edm.fingerprint()["sampling"]["schedule"] == "edm:7" and edm.sampling.plan("look-ahead", 8).schedule == "edm:7"
    assert "--schedule edm:7" in edm.command(Path("b"))
    with pytest.raises(ConfigError, match="shift:ALPHA"):
        settings(DemoSettings, ["demo", "--tiny", "--schedule", "cosine"])
    with pytest.raises(ConfigError, match="--n-inner"):
        settings(DemoSettings, ["demo", "--tiny", "--samplers", "euler-pf,look-ahead", "--n-inner", "2"])
    with pytest.raises(ConfigError, match="cfg-scale 1"):
        settings(DemoSettings, ["demo", "--tiny", "--guidance-interval", "0.2,0.8"])


def test_default_and_plain_samplers_follow_the_network():
    from patchforcing.sampling.registry import default_sampler, plain_sampler

    pf_cfg, sit_cfg = make_model(seed=0).config, make_model("sit", seed=0).config
    assert (plain_sampler(pf_cfg), plain_sampler(sit_cfg)) == ("euler-pf", "euler")
    assert (default_sampler(pf_cfg), default_sampler(sit_cfg)) == ("look-ahead", "euler")
