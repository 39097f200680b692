"""Properties every sampler of the registry must have, in one suite looped over the registry (the model
is diffusers' shared scheduler test class): a sampler added to ``REGISTRY`` is tested here without
editing this file. Public and study samplers alike, on every time grid where the property depends on it:

* exactness on a straight path: on a network whose velocity is exact for a straight path, every
  sampler lands exactly on the data, for any steps, grid, guidance and mask;
* the declared NFE (``SamplingPlan.nfe``, ``expected_nfe``) is the NFE spent (counted network calls);
* a budget buys the most steps that fit (``SamplingPlan.from_nfe``, ``steps_for_nfe``);
* an image does not depend on the batch it is in.

Sampler-specific tests (agreement with the literal loops of ``reference_impl``, orders of convergence,
masks, trajectories) stay in test_sampling.py, test_heun.py, test_study.py and test_schedules.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import patchforcing as pf
from conftest import StraightLine, per_image_generators, seeded_noise
from patchforcing.sampling import REGISTRY, SAMPLERS, Guidance, SamplingPlan, expected_nfe, steps_for_nfe, time_grid

pytestmark = pytest.mark.usefixtures("one_thread")

B = 3
LABELS = torch.tensor([0, 3, 4])
ALL = sorted(REGISTRY)  # the public samplers and the study's
GRIDS = ["uniform", "shift:3", "edm:3", "edm:7"]


def option_variants(name: str) -> list[dict]:
    """The default options, then each integer option moved to its nearest other valid value (below the
    default first): the options that change the NFE (``n_inner`` 4 -> 3, ``correct_last`` 0 -> 1)."""
    variants = [{}]
    for f in dataclasses.fields(REGISTRY[name].options_type):
        meta = f.metadata
        if not meta["integer"]:
            continue  # p_frac, context_ratio: the same calls
        low, high = meta["low"], meta["high"]
        below, above = f.default - 1, f.default + 1
        if low is not None and (below > low or (below == low and not meta["low_open"])):
            variants.append({f.name: below})
        elif high is None or above < high or (above == high and not meta["high_open"]):
            variants.append({f.name: above})
    return variants


def test_the_suite_covers_the_whole_registry():
    assert set(SAMPLERS) <= set(ALL) and len(ALL) == len(REGISTRY) >= 12
    assert {"heun", "heun-pf", "spread-look-ahead", "inverted-look-ahead"} <= set(ALL) - set(SAMPLERS)  # study samplers too
    assert option_variants("dual-loop") == [{}, {"n_inner": 3}] and option_variants("euler") == [{}]
    assert option_variants("heun") == option_variants("look-ahead-heun") == [{}, {"correct_last": 1}]


# --- exactness on a straight path ----------------------------------------------------------------
# (cfg scale, generators for the random masks): one shared generator and one per image; any guidance weight
# leaves the velocity of a straight path unchanged, so the samplers must be exact under guidance too.
GUIDED = {"cfg1": (1.0, "one"), "cfg3-per-image": (3.0, "per-image"), "cfg4": (4.0, "one")}


@pytest.mark.parametrize("guided", list(GUIDED))
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 20])
@pytest.mark.parametrize("schedule", GRIDS)
@pytest.mark.parametrize("name", ALL)
def test_a_straight_path_lands_exactly_on_the_data(name, schedule, steps, guided):
    cfg_scale, gens = GUIDED[guided]
    x0, x1 = seeded_noise(5), seeded_noise(6)
    plan = SamplingPlan(name, steps, schedule=schedule, guidance=Guidance(cfg_scale))
    generator = torch.Generator().manual_seed(0) if gens == "one" else per_image_generators([1, 2, 3])
    x, info = pf.sample(StraightLine(x0, x1), x0, plan, labels=LABELS, generator=generator, return_info=True)
    torch.testing.assert_close(x, x1, atol=1e-12, rtol=0)
    assert info["nfe"] == plan.nfe


# --- the declared NFE is the NFE spent -----------------------------------------------------------
# 19, 20, 21: uniform's second warm-up step comes at S = 20 (t_1 = float32(0.05)); 7, 8: shift:3's at S = 8;
# 2, 3 and 5: edm:3's second and third; 4, 5: edm:7's second.
NFE_STEPS = [1, 2, 3, 4, 5, 7, 8, 19, 20, 21]


def _spent(net, name, steps, schedule, options, cfg_scale):
    """Runs the plan on ``net`` and checks the calls it made against every declaration of its NFE."""
    calls = []
    hook = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        plan = SamplingPlan(name, steps, options, schedule=schedule, guidance=Guidance(cfg_scale))
        _, info = pf.sample(net, seeded_noise(2), plan, labels=LABELS, return_info=True, record_trajectory=True,
                            generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    declared = expected_nfe(name, steps, schedule=schedule, **options)
    assert len(calls) == info["nfe"] == plan.nfe == declared, (type(net).__name__, options, cfg_scale)
    assert (info["sampler"], info["steps"], info["schedule"], info["plan"]) == (name, steps, schedule, plan)
    # every frame of the trajectory stands for its calls (a context frame for two), so the frames add up to the NFE
    assert sum(2 if f["context"] else 1 for f in info["trajectory"]) == info["nfe"]


@pytest.mark.parametrize("steps", NFE_STEPS)
@pytest.mark.parametrize("schedule", GRIDS)
@pytest.mark.parametrize("name", ALL)
def test_the_declared_nfe_is_the_nfe_spent(pf_net, name, schedule, steps):
    # every option variant, unguided and guided (a guided batch of 2B is one call), on a stub network (the
    # count is the sampler's: the stub's logvar still splits the patches), ...
    stub = StraightLine(seeded_noise(2), seeded_noise(3))
    for options in option_variants(name):
        for cfg_scale in (1.0, 1.5):
            _spent(stub, name, steps, schedule, options, cfg_scale)
    # ... and on a tiny transformer, whose difficulty head moves the masks from step to step
    if steps in (1, 3, 7, 21):
        _spent(pf_net, name, steps, schedule, {}, 1.5)


# --- a budget buys the most steps that fit ---------------------------------------------------------
@pytest.mark.parametrize("schedule", GRIDS)
@pytest.mark.parametrize("name, options", [(n, o) for n in ALL for o in option_variants(n)],
                         ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n in ALL for o in option_variants(n)])
def test_a_budget_buys_the_most_steps_that_fit(name, options, schedule):
    def nfe(steps):
        return expected_nfe(name, steps, schedule=schedule, **options)

    budgets = set(range(1, 90)) | {2 * nfe(s) for s in (1, 3, 21)}  # and twice the NFE of 1, 3 and 21 steps
    cost = [None, nfe(1)]  # cost[s]: the NFE of s steps, up to the first that exceeds every budget
    while cost[-1] <= max(budgets):
        cost.append(nfe(len(cost)))
    assert all(a < b for a, b in zip(cost[1:], cost[2:], strict=False))  # more steps always cost more: the steps that fit are a prefix
    for budget in sorted(budgets):
        if cost[1] > budget:  # not even one step fits
            with pytest.raises(pf.ConfigError, match="budget"):
                steps_for_nfe(name, budget, schedule=schedule, **options)
            with pytest.raises(pf.ConfigError, match="budget"):
                SamplingPlan.from_nfe(name, budget, schedule=schedule, **options)
            continue
        s = steps_for_nfe(name, budget, schedule=schedule, **options)
        plan = SamplingPlan.from_nfe(name, budget, schedule=schedule, **options)
        assert plan.steps == s and plan.nfe_budget == budget
        assert plan.nfe == cost[s] <= budget < cost[s + 1], (budget, s)


# --- an image does not depend on its batch -----------------------------------------------------------
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
@pytest.mark.parametrize("schedule", ["uniform", "edm:7"])
@pytest.mark.parametrize("name", ALL)
def test_an_image_does_not_depend_on_its_batch(pf_net, name, schedule, cfg_scale):
    noise = seeded_noise(7)
    plan = SamplingPlan(name, 5, schedule=schedule, guidance=Guidance(cfg_scale))
    together = pf.sample(pf_net, noise, plan, labels=LABELS, generator=per_image_generators([10, 11, 12]))
    assert (together - noise).abs().max() > 0.1  # the sample moved
    for i in range(B):
        alone = pf.sample(pf_net, noise[i:i + 1], plan, labels=LABELS[i:i + 1], generator=per_image_generators([10 + i]))
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-12, rtol=0)


def test_grids_of_the_suite_differ():
    """Guards the grid parametrizations: the four grids are four different grids at the steps used."""
    for steps in (2, 5, 20):
        grids = [tuple(time_grid(steps, g).tolist()) for g in GRIDS]
        assert len(set(grids)) == len(GRIDS), steps
