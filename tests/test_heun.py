"""Second-order samplers (``sampling/heun.py``): second-order convergence on an analytic ODE, float64
agreement with hand-written loops, the NFE formulas and guidance semantics. Exactness on a straight
path, the NFE spent, budgets and batch independence: with every sampler in test_sampler_properties.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import patchforcing as pf
from conftest import make_model, seeded_noise, tiny_config
from patchforcing.flow import patch_time_to_pixels
from patchforcing.models import ModelOutput
from patchforcing.sampling.schedules import time_grid
from reference_impl import RefGuide, patch_mean, ref_difficulty_mask

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
B = 3
LABELS = torch.tensor([0, 3, 4])
NULL = 5
HEUN = ["heun", "heun-pf", "look-ahead-heun", "corrected-look-ahead"]
PER_PATCH = HEUN[1:]
SCHEDULES = ["uniform", "shift:3", "edm:7"]


class FieldNet(torch.nn.Module):
    """A stub network ``v(x, t) = a x + cos(w t) + c`` per pixel (t of the pixel's patch; the cosine only
    when ``w != 0``), with a fixed logvar that varies within patches (so the difficulty masks split
    them). ``a = w = 0`` with ``c = x1 - x0`` is the straight path."""

    def __init__(self, a=0.0, c=None, w=0.0, seed=0):
        super().__init__()
        self.config = tiny_config()
        self.a, self.c, self.w = a, c, w
        self.logvar = torch.randn(B, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)

    def forward(self, x, t, y=None):
        reps = x.shape[0] // B  # 2 under guidance
        v = self.a * x
        if self.w:
            v = v + torch.cos(self.w * patch_time_to_pixels(t, 2, 8, 8))  # t of each pixel's patch
        if self.c is not None:
            v = v + self.c.repeat(reps, 1, 1, 1)
        return ModelOutput(v, self.logvar.repeat(reps, 1, 1, 1))


# (exactness on a straight path, the NFE spent, budgets and batch independence: test_sampler_properties.py)


# --- order of convergence on a curved field ------------------------------------------------------------
def _exact(x0: torch.Tensor, a: float, w: float) -> torch.Tensor:
    """x' = a x + cos(w t), x(0) = x0: x(1) = e^a x0 + (e^a a - a cos w + w sin w) / (a^2 + w^2)."""
    forced = (a * math.exp(a) - a * math.cos(w) + w * math.sin(w)) / (a * a + w * w)
    return math.exp(a) * x0 + forced


def _slope(sampler: str, schedule: str, a=-1.5, w=3.0) -> float:
    x0 = seeded_noise(9)
    net = FieldNet(a=a, w=w)
    steps = np.array([8, 16, 32])
    errors = [float((pf.sample(net, x0, sampler=sampler, steps=int(s), schedule=schedule) - _exact(x0, a, w)).abs().max())
              for s in steps]
    return float(np.polyfit(np.log(1.0 / steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_heun_is_second_order_and_euler_first_order(schedule):
    heun, euler = _slope("heun-pf", schedule), _slope("euler-pf", schedule)
    assert 1.8 < heun < 2.3, heun
    assert 0.8 < euler < 1.2, euler


# --- float64 agreement with hand-written loops --------------------------------------------------------------
def _net(model):
    return lambda x, t, y: tuple(model(x, t, y))[:2]


def _hand_heun(model, noise, grid, labels, w, per_patch=True, correct_last=False):
    g = RefGuide(_net(model), labels, w, NULL)
    x, b = noise.clone(), noise.shape[0]
    shape = (b, 16) if per_patch else (b,)
    for k in range(len(grid) - 1):
        h = grid[k + 1] - grid[k]
        d1 = g(x, torch.full(shape, float(grid[k]), dtype=F64))[0]
        if k == len(grid) - 2 and not correct_last:
            x = x + h * d1
        else:
            d2 = g(x + h * d1, torch.full(shape, float(grid[k + 1]), dtype=F64))[0]
            x = x + h * (d1 + d2) / 2
    return x, g.nfe


def _hand_look_ahead(model, noise, grid, labels, w, *, heun_main, correct_context, p_frac=0.4, rho=1.4, correct_last=False):
    g = RefGuide(_net(model), labels, w, NULL)
    x, b = noise.clone(), noise.shape[0]
    g32 = grid.float()
    for k in range(len(grid) - 1):
        t_k, h = float(grid[k]), grid[k + 1] - grid[k]
        v, logvar, v_c = g(x, torch.full((b, 16), t_k, dtype=F64))
        if bool(g32[k] <= torch.tensor(0.05, dtype=torch.float32)):
            x = x + h * v_c
            continue
        certain = ref_difficulty_mask(logvar, 2, p_frac)
        delta = min(rho * t_k, 1.0) - t_k
        x_ctx = torch.where(certain, x + delta * v_c, x)
        t_ctx = torch.where(patch_mean(certain.to(F64), 2) > 0.5, t_k + delta, t_k).to(F64)
        if correct_context:
            c2 = g(x_ctx, t_ctx)[2]
            x_ctx = torch.where(certain, x + delta * (v_c + c2) / 2, x)
        v_ctx = g(x_ctx, t_ctx)[0]
        d1 = torch.where(certain, v, v_ctx)
        if not heun_main or (k == len(grid) - 2 and not correct_last):
            x = x + h * d1
        else:
            d2 = g(x + h * d1, torch.full((b, 16), float(grid[k + 1]), dtype=F64))[0]
            x = x + h * (d1 + d2) / 2
    return x, g.nfe


@pytest.mark.parametrize("sampler", HEUN)
@pytest.mark.parametrize("schedule, steps", [("uniform", 20), ("uniform", 6), ("edm:7", 6), ("shift:3", 5)])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_matches_hand_written_loop_in_float64(sampler, schedule, steps, cfg_scale):
    model = make_model("patch-forcing", 2, seed=31)
    noise = seeded_noise(10)
    x, info = pf.sample(model, noise, sampler=sampler, steps=steps, schedule=schedule, labels=LABELS,
                        cfg_scale=cfg_scale, return_info=True)
    grid = time_grid(steps, schedule).double()
    if sampler in ("heun", "heun-pf"):
        ref, nfe = _hand_heun(model, noise, grid, LABELS, cfg_scale, per_patch=sampler == "heun-pf")
    else:
        ref, nfe = _hand_look_ahead(model, noise, grid, LABELS, cfg_scale, heun_main=sampler == "look-ahead-heun",
                                    correct_context=sampler == "corrected-look-ahead")
    assert (x - noise).abs().max() > 0.1
    # heun and heun-pf agree to the last bit; the look-ahead family to 1e-6 like look-ahead against its reference
    # (tests/test_sampling.py): the context times are rounded along another path and 20 steps amplify it
    torch.testing.assert_close(x, ref, atol=1e-12 if sampler in ("heun", "heun-pf") else 1e-6, rtol=0)
    assert info["nfe"] == nfe == pf.expected_nfe(sampler, steps, schedule=schedule)


@pytest.mark.parametrize("sampler", ["heun", "heun-pf", "look-ahead-heun"])
@pytest.mark.parametrize("schedule, steps", [("uniform", 6), ("edm:7", 5)])
def test_corrected_last_step_matches_hand_written_loop_in_float64(sampler, schedule, steps):
    """``correct_last=1``: every step, the last one to t = 1 included, is a full Heun step (SiT's ODE sampler)."""
    model = make_model("patch-forcing", 2, seed=37)
    noise = seeded_noise(16)
    x, info = pf.sample(model, noise, sampler=sampler, steps=steps, schedule=schedule, labels=LABELS, cfg_scale=2.0,
                        correct_last=1, return_info=True)
    grid = time_grid(steps, schedule).double()
    if sampler == "look-ahead-heun":
        ref, nfe = _hand_look_ahead(model, noise, grid, LABELS, 2.0, heun_main=True, correct_context=False, correct_last=True)
    else:
        ref, nfe = _hand_heun(model, noise, grid, LABELS, 2.0, per_patch=sampler == "heun-pf", correct_last=True)
    torch.testing.assert_close(x, ref, atol=1e-12 if sampler != "look-ahead-heun" else 1e-6, rtol=0)
    assert info["nfe"] == nfe == pf.expected_nfe(sampler, steps, schedule=schedule) + 1
    euler_last = pf.sample(model, noise, sampler=sampler, steps=steps, schedule=schedule, labels=LABELS, cfg_scale=2.0)
    assert (x - euler_last).abs().max() > 1e-4


class GaussianField(torch.nn.Module):
    """The exact velocity ``E[x1 - x0 | x_t]`` for data ``x1 ~ N(mu, s^2)`` per pixel and noise ``x0 ~ N(0, 1)``:
    ``x_t ~ N(t mu, t^2 s^2 + (1 - t)^2)``, so ``v = mu + (x - t mu) (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2)``.
    The ODE maps ``x0`` to ``mu + s x0`` at ``t = 1``; with a small ``s`` the field bends sharply near the data."""

    def __init__(self, mu=0.5, s=0.1):
        super().__init__()
        self.config = tiny_config()
        self.mu, self.s = mu, s

    def forward(self, x, t, y=None):
        tp = t[:, None, None, None] if t.ndim == 1 else patch_time_to_pixels(t, 2, 8, 8)
        var = tp**2 * self.s**2 + (1 - tp) ** 2
        v = self.mu + (x - tp * self.mu) * (tp * self.s**2 - (1 - tp)) / var
        return ModelOutput(v, torch.zeros(x.shape[0], 1, 8, 8, dtype=x.dtype))


@pytest.mark.parametrize("sampler", ["heun", "heun-pf"])
def test_corrected_last_step_lowers_the_error_on_a_gaussian_field(sampler):
    """At S = 32 the Euler last step dominates the error of Heun; correcting it (one more NFE) lowers it."""
    net, x0 = GaussianField(), seeded_noise(17)
    exact = net.mu + net.s * x0
    err = {c: float((pf.sample(net, x0, sampler=sampler, steps=32, correct_last=c) - exact).abs().max()) for c in (0, 1)}
    assert err[1] < 0.5 * err[0], err
    for c in (0, 1):  # both second order: doubling S from 32 to 64 divides the error by about 4
        finer = float((pf.sample(net, x0, sampler=sampler, steps=64, correct_last=c) - exact).abs().max())
        assert 3.0 < err[c] / finer < 5.0, (c, err[c], finer)


def test_second_order_samplers_differ_from_first_order_ones():
    model = make_model("patch-forcing", 2, seed=32)
    noise = seeded_noise(11)
    out = {s: pf.sample(model, noise, sampler=s, steps=6, labels=LABELS) for s in ["euler", "euler-pf", "look-ahead", *HEUN]}
    # a global time (B,) on a Patch Forcing network equals all-equal per-patch times (B, N), as for Euler
    torch.testing.assert_close(out["heun"], out["heun-pf"], atol=1e-12, rtol=0)
    for a, b in [("euler", "heun"), ("euler-pf", "heun-pf"), ("look-ahead", "look-ahead-heun"), ("look-ahead", "corrected-look-ahead"),
                 ("look-ahead-heun", "corrected-look-ahead")]:
        assert (out[a] - out[b]).abs().max() > 1e-4, (a, b)


# --- NFE ----------------------------------------------------------------------------------------------------
def test_nfe_formulas():
    for steps in range(1, 40):
        assert pf.expected_nfe("heun-pf", steps) == pf.expected_nfe("heun", steps) == 2 * steps - 1
        warm = pf.expected_nfe("look-ahead", steps) - 2 * steps  # look-ahead: W + 2 (S - W) = 2 S - W
        warm = -warm
        assert pf.expected_nfe("corrected-look-ahead", steps) == warm + 3 * (steps - warm)
        assert pf.expected_nfe("look-ahead-heun", steps) == (1 if steps == 1 else warm + 3 * (steps - warm) - 1)
        assert pf.expected_nfe("heun", steps, correct_last=1) == pf.expected_nfe("heun-pf", steps, correct_last=1) == 2 * steps
        assert pf.expected_nfe("look-ahead-heun", steps, correct_last=1) == warm + 3 * (steps - warm)


# --- guidance ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", HEUN)
def test_every_evaluation_of_a_step_follows_its_guidance_decision(sampler):
    """Guidance interval (0.3, 1): steps at t_k = 0, 0.25 unguided (batch B), 0.5, 0.75 guided (2B),
    the corrector and context calls included."""
    model = make_model("patch-forcing", 2, seed=34)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append((args[0].shape[0], float(args[1].min()))))
    _, info = pf.sample(model, seeded_noise(13), sampler=sampler, steps=4, labels=LABELS, cfg_scale=3.0,
                        guidance_interval=(0.3, 1.0), return_info=True)
    assert len(calls) == info["nfe"] == pf.expected_nfe(sampler, 4)
    per_step = {"heun": [2, 2, 2, 1], "heun-pf": [2, 2, 2, 1], "look-ahead-heun": [1, 3, 3, 2], "corrected-look-ahead": [1, 3, 3, 3]}[sampler]
    guided = [False, False, True, True]  # t_k = 0, 0.25, 0.5, 0.75 against the interval (0.3, 1)
    expected = [2 * B if g else B for g, count in zip(guided, per_step, strict=False) for _ in range(count)]
    assert [batch for batch, _ in calls] == expected


@pytest.mark.parametrize("sampler", HEUN)
def test_autoguidance_calls_the_weak_network_once_per_evaluation(sampler):
    model, weak = make_model("patch-forcing", 2, seed=35), make_model("patch-forcing", 2, seed=36)
    noise = seeded_noise(14)
    x, info = pf.sample(model, noise, sampler=sampler, steps=4, labels=LABELS, cfg_scale=2.0, guide_model=weak,
                        return_info=True)
    assert info["guide_nfe"] == info["nfe"] == pf.expected_nfe(sampler, 4)
    plain = pf.sample(model, noise, sampler=sampler, steps=4, labels=LABELS)
    assert (x - plain).abs().max() > 1e-4


@pytest.mark.parametrize("sampler", PER_PATCH)
def test_refused_on_a_global_time_network(sit_model, sampler):
    with pytest.raises(pf.ConfigError, match="euler"):
        pf.sample(sit_model, seeded_noise(), sampler=sampler, steps=4)


def test_global_heun_samples_the_sit_baseline(sit_model):
    noise = seeded_noise(15)
    x, info = pf.sample(sit_model, noise, sampler="heun", steps=5, schedule="edm:7", labels=LABELS, cfg_scale=2.0,
                        return_info=True)
    ref, nfe = _hand_heun(sit_model, noise, time_grid(5, "edm:7").double(), LABELS, 2.0, per_patch=False)
    torch.testing.assert_close(x, ref, atol=1e-12, rtol=0)
    assert info["nfe"] == nfe == 9
    euler = pf.sample(sit_model, noise, sampler="euler", steps=5, schedule="edm:7", labels=LABELS, cfg_scale=2.0)
    assert (x - euler).abs().max() > 1e-4
