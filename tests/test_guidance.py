"""The condition type, the guidance interval and autoguidance, against loops written here."""

from __future__ import annotations

import pytest
import torch

import patchforcing as pf
from conftest import make_model, seeded_noise
from patchforcing.conditioning import Condition
from patchforcing.errors import ConfigError, ShapeError
from patchforcing.models import ModelOutput
from patchforcing.sampling import expected_nfe, time_grid
from reference_impl import ref_dual_loop, ref_look_ahead, ref_nfe, ref_time_grid

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
B = 3
LABELS = torch.tensor([0, 3, 4])
NULL = 5
ALL_SAMPLERS = [("euler-pf", 6, {}), ("dual-loop", 4, {}), ("look-ahead", 12, {}), ("random-look-ahead", 6, {})]


class Recorder(torch.nn.Module):
    """Wraps a network and records the batch size of every call (2B = a CFG call)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.batches = model, model.config, []

    def forward(self, x, t, y=None):
        self.batches.append(x.shape[0])
        return self.model(x, t, y)


def _call(model):
    def call(x, t, y):
        out = model(x, t, y)
        return out.velocity, out.logvar

    return call


# --- Condition ------------------------------------------------------------------------------------
def test_condition_from_labels_doubles_null_first():
    c = Condition.from_labels(torch.tensor([1, 2]), 7)
    assert c.batch_size == 2 and not c.is_text
    assert c.doubled().tolist() == [7, 7, 1, 2]
    assert c.select([1]).value.tolist() == [2] and c.select([1]).null.tolist() == [7]
    assert c.to("cpu").value.dtype == torch.long


def test_condition_from_text_expands_the_empty_prompt():
    states = torch.randn(3, 5, 4)
    empty = torch.randn(5, 4)
    c = Condition.from_text(states, empty)
    assert c.is_text and c.null.shape == (3, 5, 4)
    assert torch.equal(c.null[2], empty) and torch.equal(c.doubled()[3:], states)
    assert c.to(dtype=F64).value.dtype == F64
    with pytest.raises(ShapeError, match="empty-prompt"):
        Condition.from_text(states, torch.randn(6, 4))
    with pytest.raises(ShapeError, match=r"\(B,\)"):
        Condition.from_labels(torch.tensor([[1]]), 0)
    with pytest.raises(ShapeError, match="null condition"):
        Condition(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_condition_equals_labels_in_sample():
    model = make_model(seed=2)
    noise = seeded_noise(1)
    a = pf.sample(model, noise, sampler="look-ahead", steps=6, labels=LABELS, cfg_scale=2.0)
    b = pf.sample(model, noise, sampler="look-ahead", steps=6, condition=Condition.from_labels(LABELS, NULL), cfg_scale=2.0)
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="not both"):
        pf.sample(model, noise, sampler="euler-pf", steps=2, labels=LABELS, condition=Condition.from_labels(LABELS, NULL))
    with pytest.raises(ShapeError, match="one per sample"):
        pf.sample(model, noise, sampler="euler-pf", steps=2, condition=Condition.from_labels(LABELS[:2], NULL))


class TextNet(torch.nn.Module):
    """A stand-in text-conditioned network: the velocity depends on the mean text state."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.w = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

    def forward(self, x, t, states):
        shift = states.mean(dim=(1, 2))[:, None, None, None]  # (B, 1, 1, 1)
        return ModelOutput(self.w * x + shift, torch.zeros_like(x[:, :1]) + shift)


def test_text_condition_guides_with_the_empty_prompt():
    net = TextNet(make_model().config)
    states, empty = torch.randn(B, 4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    cond = Condition.from_text(states, empty)
    x = pf.sample(net, seeded_noise(), sampler="euler-pf", steps=1, condition=cond, cfg_scale=3.0)
    s_c, s_u = states.mean(dim=(1, 2)), empty.mean()
    expected = 2 * seeded_noise() + (s_u + 3.0 * (s_c - s_u))[:, None, None, None]  # one step of size 1
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)


# --- guidance interval ----------------------------------------------------------------------------
def _manual_euler_pf(model, noise, steps, w, lo, hi):
    """Euler with CFG on exactly the steps whose float32 grid time lies in [lo, hi] (float32)."""
    grid64, grid32 = ref_time_grid(steps)
    lo32, hi32 = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    x, n = noise.clone(), model.config.num_patches
    null = torch.full_like(LABELS, NULL)
    for k in range(steps):
        t = torch.full((B, n), float(grid64[k]), dtype=F64)
        v_c = model(x, t, LABELS).velocity
        if lo32 <= grid32[k] <= hi32:
            v_u = model(x, t, null).velocity
            v = v_u + w * (v_c - v_u)
        else:
            v = v_c
        x = x + (grid64[k + 1] - grid64[k]) * v
    return x


@pytest.mark.parametrize("lo, hi", [(0.25, 0.625), (0.3, 0.7), (0.0, 0.0), (0.9, 1.0)])
def test_interval_matches_manual_euler(lo, hi):
    model = Recorder(make_model(seed=3))
    noise = seeded_noise(2)
    x, info = pf.sample(model, noise, sampler="euler-pf", steps=8, labels=LABELS, cfg_scale=2.5,
                        guidance_interval=(lo, hi), return_info=True)
    ref = _manual_euler_pf(model.model, noise, 8, 2.5, lo, hi)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-12)
    g32 = time_grid(8)[:-1]
    inside = [bool(torch.tensor(lo, dtype=torch.float32) <= t <= torch.tensor(hi, dtype=torch.float32)) for t in g32]
    assert model.batches == [2 * B if on else B for on in inside]
    assert info["nfe"] == 8 and info["guide_nfe"] == 0


def test_interval_edges_are_inclusive_on_the_float32_grid():
    g = time_grid(10)  # float32 values; t_3 is not exactly the double 0.3
    model = Recorder(make_model(seed=3))
    t3, t6 = g[3].item(), g[6].item()
    pf.sample(model, seeded_noise(), sampler="euler-pf", steps=10, labels=LABELS, cfg_scale=2.0, guidance_interval=(t3, t6))
    assert model.batches == [B] * 3 + [2 * B] * 4 + [B] * 3
    model.batches.clear()
    above = torch.nextafter(g[3], torch.tensor(1.0)).item()  # one float32 step above t_3 excludes it
    pf.sample(model, seeded_noise(), sampler="euler-pf", steps=10, labels=LABELS, cfg_scale=2.0, guidance_interval=(above, t6))
    assert model.batches == [B] * 4 + [2 * B] * 3 + [B] * 3


@pytest.mark.parametrize("sampler, steps, options", ALL_SAMPLERS)
def test_full_interval_is_plain_cfg_and_empty_interval_is_no_guidance(sampler, steps, options):
    model = make_model(seed=4)
    noise = seeded_noise(3)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 - the random masks
    kw = dict(sampler=sampler, steps=steps, labels=LABELS, **options)
    cfg = pf.sample(model, noise, cfg_scale=3.0, generator=gen(), **kw)
    assert torch.equal(pf.sample(model, noise, cfg_scale=3.0, guidance_interval=(0, 1), generator=gen(), **kw), cfg)
    plain = pf.sample(model, noise, cfg_scale=1.0, generator=gen(), **kw)
    missed = pf.sample(model, noise, cfg_scale=3.0, guidance_interval=(1.0, 1.0), generator=gen(), **kw)  # no outer step starts at t = 1
    assert torch.equal(missed, plain) and not torch.equal(plain, cfg)


@pytest.mark.parametrize("sampler, steps, k", [("dual-loop", 5, 4), ("look-ahead", 10, None)])
def test_every_call_of_an_outer_step_follows_its_decision(sampler, steps, k):
    model = Recorder(make_model(seed=5))
    lo, hi = 0.35, 0.75
    _, info = pf.sample(model, seeded_noise(), sampler=sampler, steps=steps, labels=LABELS, cfg_scale=2.0,
                        guidance_interval=(lo, hi), return_info=True)
    g32 = time_grid(steps)[:-1].tolist()
    expected = []
    for t in g32:
        size = 2 * B if lo <= t <= hi else B
        calls = k if k else (1 if t <= torch.tensor(0.05, dtype=torch.float32).item() else 2)
        expected += [size] * calls
    assert model.batches == expected
    assert info["nfe"] == len(expected) == expected_nfe(sampler, steps) == ref_nfe(sampler, steps)


def test_interval_errors():
    model = make_model()
    with pytest.raises(ConfigError, match="lo <= hi"):
        pf.sample(model, seeded_noise(), sampler="euler-pf", steps=2, labels=LABELS, cfg_scale=2.0, guidance_interval=(0.8, 0.2))
    with pytest.raises(ConfigError, match="two numbers"):
        pf.sample(model, seeded_noise(), sampler="euler-pf", steps=2, labels=LABELS, cfg_scale=2.0, guidance_interval=0.5)
    guide = pf.sampling.Guide(model, LABELS, pf.Guidance(2.0, (0.0, 1.0)))
    with pytest.raises(ConfigError, match="begin_step"):
        guide(seeded_noise(), torch.zeros(B, model.config.num_patches, dtype=F64))


# --- autoguidance ---------------------------------------------------------------------------------
def _weak_as_unconditional(main, weak):
    """A network for the reference samplers' CFG whose 'unconditional' half is the weak network's
    CONDITIONAL prediction: reference CFG on it is autoguidance by definition."""

    def call(x, t, y):
        b = x.shape[0] // 2
        v_w, l_w = _call(weak)(x[:b], t[:b], y[b:])
        v_m, l_m = _call(main)(x[b:], t[b:], y[b:])
        return torch.cat([v_w, v_m]), torch.cat([l_w, l_m])

    return call


def test_autoguidance_matches_manual_euler():
    main, weak = make_model(seed=6), make_model(seed=7, depth=1)
    noise = seeded_noise(4)
    w, steps = 2.0, 5
    x, info = pf.sample(main, noise, sampler="euler-pf", steps=steps, labels=LABELS, cfg_scale=w, guide_model=weak, return_info=True)
    grid, _ = ref_time_grid(steps)
    ref = noise.clone()
    for k in range(steps):
        t = torch.full((B, main.config.num_patches), float(grid[k]), dtype=F64)
        v_main, v_weak = main(ref, t, LABELS).velocity, weak(ref, t, LABELS).velocity
        ref = ref + (grid[k + 1] - grid[k]) * (v_weak + w * (v_main - v_weak))
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-12)
    assert info["nfe"] == steps and info["guide_nfe"] == steps


@pytest.mark.parametrize("sampler, steps", [("dual-loop", 3), ("look-ahead", 20)])
def test_autoguidance_matches_reference_samplers(sampler, steps):
    main, weak = make_model(seed=8), make_model(seed=9)
    noise = seeded_noise(5)
    x, info = pf.sample(main, noise, sampler=sampler, steps=steps, labels=LABELS, cfg_scale=1.7, guide_model=weak, return_info=True)
    fn = {"dual-loop": ref_dual_loop, "look-ahead": ref_look_ahead}[sampler]
    ref, nfe = fn(_weak_as_unconditional(main, weak), noise, steps, labels=LABELS, w=1.7, null=NULL)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)  # the tolerance of docs/method.md (1e-6 in float64) against the reference
    assert info["nfe"] == info["guide_nfe"] == nfe


def test_autoguidance_logvar_and_conditional_velocity():
    main, weak = make_model(seed=10), make_model(seed=11)
    x = seeded_noise(6)
    t = torch.full((B, main.config.num_patches), 0.4, dtype=F64)
    out = pf.sampling.Guide(main, LABELS, pf.Guidance(3.0), guide_model=weak)(x, t)
    m, wk = main(x, t, LABELS), weak(x, t, LABELS)
    torch.testing.assert_close(out.logvar, wk.logvar + 3.0 * (m.logvar - wk.logvar), rtol=0, atol=1e-12)
    assert torch.equal(out.cond_velocity, m.velocity)


def test_autoguidance_with_interval_counts_weak_calls():
    main, weak = Recorder(make_model(seed=12)), Recorder(make_model(seed=13))
    _, info = pf.sample(main, seeded_noise(), sampler="euler-pf", steps=10, labels=LABELS, cfg_scale=2.0, guide_model=weak,
                        guidance_interval=(0.2, 0.5), return_info=True)
    inside = sum(0.2 <= t <= 0.5 for t in time_grid(10)[:-1].tolist())
    assert (info["nfe"], info["guide_nfe"]) == (10, inside) == (10, len(weak.batches))
    assert set(main.batches) == {B}  # autoguidance never doubles the batch


def test_autoguidance_needs_a_matching_network():
    main = make_model()
    with pytest.raises(ConfigError, match="same kind and shape"):
        pf.sample(main, seeded_noise(), sampler="euler-pf", steps=2, labels=LABELS, cfg_scale=2.0, guide_model=make_model(patch_size=4))
    with pytest.raises(ConfigError, match="guide_model.to"):
        pf.sample(main, seeded_noise(), sampler="euler-pf", steps=2, labels=LABELS, cfg_scale=2.0, guide_model=make_model(dtype=torch.float32))
