"""Training-time timestep distributions (docs/method.md §2): ranges, structure and exact laws (KS tests).

All statistical tests use fixed seeds, so they are deterministic; the thresholds (p > 0.001,
generous tolerances) are chosen so that a correct implementation passes for any seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import patchforcing as pf
from patchforcing.timesteps import timestep_distribution

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["uniform", "logit-normal", "uniform-patch", "srm", "gaussian", "truncated-gaussian", "ltg"]


def _draw(name, b, n, seed=0, dtype=None, **params):
    return timestep_distribution(name, **params)(b, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _logit(x):
    return np.log(x) - np.log1p(-x)


def test_registry_lists_the_spec_distributions():
    assert set(pf.DISTRIBUTIONS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_range_dtype_device(name, dtype):
    t = timestep_distribution(name)(64, 37, generator=torch.Generator().manual_seed(1), device="cpu", dtype=dtype)
    assert t.shape == (64, 37) and t.dtype == dtype and t.device.type == "cpu"
    assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1
    assert t.is_contiguous()


@pytest.mark.parametrize("name", NAMES)
def test_default_dtype_is_float32(name):
    assert timestep_distribution(name)(4, 8).dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_generator_reproducibility(name):
    a = _draw(name, 16, 32, seed=5)
    b = _draw(name, 16, 32, seed=5)
    c = _draw(name, 16, 32, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_wide_range_of_values_over_many_draws(name):
    """Extreme-value sanity: over many rows, every distribution reaches near both ends."""
    t = _draw(name, 4000, 16, seed=2)
    assert t.min() < 0.05 and t.max() > 0.9


# --- per-sample distributions ---------------------------------------------------------------------
def test_uniform_is_constant_per_row_and_uniform():
    t = _draw("uniform", 3000, 16, seed=0, dtype=torch.float64)
    assert torch.equal(t, t[:, :1].expand_as(t))
    assert stats.kstest(t[:, 0].numpy(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize("loc, scale", [(0.0, 1.0), (0.5, 0.7), (-1.0, 2.0)])
def test_logit_normal_is_constant_per_row_with_the_right_law(loc, scale):
    t = _draw("logit-normal", 3000, 16, seed=1, dtype=torch.float64, loc=loc, scale=scale)
    assert torch.equal(t, t[:, :1].expand_as(t))
    z = (_logit(t[:, 0].numpy()) - loc) / scale  # must be N(0, 1)
    assert stats.kstest(z, "norm").pvalue > 1e-3


# --- uniform-patch --------------------------------------------------------------------------------
def test_uniform_patch_is_independent_per_patch():
    t = _draw("uniform-patch", 5000, 8, seed=3, dtype=torch.float64).numpy()
    assert stats.kstest(t.ravel(), "uniform").pvalue > 1e-3
    corr = np.corrcoef(t, rowvar=False)
    off = corr[~np.eye(8, dtype=bool)]
    assert np.abs(off).max() < 0.06  # 5000 rows: independent columns have |r| ~ 0.014
    # rows are not constant
    assert (t.std(axis=1) > 0.05).mean() > 0.99


# --- gaussian ------------------------------------------------------------------------------------
def test_gaussian_is_clipped_and_spread_is_bounded():
    std = 0.2
    t = _draw("gaussian", 2000, 2048, seed=4, dtype=torch.float64, std=std)
    assert t.min() == 0 and t.max() == 1  # rows near the ends are clipped onto the boundary
    m = t.mean(dim=1)
    spread = t.std(dim=1)
    expected = torch.clamp(torch.minimum(m, 1 - m) / 2, max=std)
    inner = (m > 0.1) & (m < 0.9)  # there s = min(..., std) is not too close to 0
    # Clipping only bites beyond 2 s, so the empirical spread is within a few % of s.
    rel = (spread[inner] - expected[inner]).abs() / expected[inner]
    assert rel.median() < 0.04 and rel.max() < 0.15
    assert stats.kstest(m.numpy(), "uniform").pvalue > 1e-3  # centres are uniform


# --- ltg and truncated-gaussian --------------------------------------------------------------------
def test_ltg_row_max_follows_the_logit_normal_law_small_std():
    """With a tiny spread every patch sits within ~5e-6 of t_max, so the row max is t_max."""
    loc, scale = 0.7, 1.0
    t = _draw("ltg", 3000, 64, seed=5, dtype=torch.float64, std=1e-6)
    row_max = t.max(dim=1).values.numpy()
    assert (t.max(dim=1).values - t.min(dim=1).values).max() < 1e-4
    z = (_logit(row_max) - loc) / scale
    assert stats.kstest(z, "norm").pvalue > 1e-3


@pytest.mark.parametrize("loc", [0.7, 0.5, -0.3])
def test_ltg_row_max_follows_the_logit_normal_law_default_std(loc):
    """Default std: the max over 1024 patches is t_max - s * min|e_i| with E[min|e|] ~ 1e-3,
    too small a shift for a KS test on 2000 rows to see; a wrong t_max law is seen at once."""
    t = _draw("ltg", 2000, 1024, seed=6, dtype=torch.float64, loc=loc)
    row_max = t.max(dim=1).values.numpy()
    exact_cdf = lambda x: stats.norm.cdf(_logit(np.clip(x, 1e-12, 1 - 1e-12)) - loc)  # noqa: E731
    assert stats.kstest(row_max, exact_cdf).pvalue > 1e-3


def test_ltg_patches_are_half_normal_below_t_max():
    """Rows with t_max > 2 std: t_i = t_max - std |e_i| (no replacement); check |e| is half-normal."""
    std = 0.05
    t = _draw("ltg", 400, 4096, seed=7, dtype=torch.float64, std=std)
    row_max = t.max(dim=1, keepdim=True).values
    keep = row_max[:, 0] > 0.3
    assert keep.sum() > 200
    z = ((row_max - t) / std)[keep].flatten().numpy()
    assert stats.kstest(z, "halfnorm").pvalue > 1e-3


def test_ltg_negative_values_are_replaced_by_uniform_below_t_max():
    """For tiny t_max, s = t_max/2 and t_i < 0 whenever |e_i| > 2 (4.6 %); those become u_i t_max.

    Then r = t_i / t_max has mean E[(1 - |e|/2); |e| <= 2] + P(|e| > 2) / 2; clipping at 0 would
    give a mean smaller by P(|e| > 2) / 2 = 0.023.
    """
    t = _draw("ltg", 200, 4096, seed=8, dtype=torch.float64, loc=-6.0, scale=0.1)
    assert t.min() >= 0
    t_max = t.max(dim=1, keepdim=True).values  # 4096 patches: max within ~1e-3 relative of t_max
    r = (t / t_max).numpy()
    p_out = 2 * stats.norm.sf(2.0)
    mean_abs_inside = 2 * (stats.norm.pdf(0) - stats.norm.pdf(2.0))  # E[|e|; |e| <= 2]
    expected = (1 - p_out) - 0.5 * mean_abs_inside + 0.5 * p_out
    assert abs(r.mean() - expected) < 0.004
    assert (r == 0).mean() < 1e-4  # not clipped onto 0


def test_truncated_gaussian_row_max_is_uniform():
    t = _draw("truncated-gaussian", 3000, 64, seed=9, dtype=torch.float64, std=1e-6)
    row_max = t.max(dim=1).values.numpy()
    assert stats.kstest(row_max, "uniform").pvalue > 1e-3
    t = _draw("truncated-gaussian", 2000, 1024, seed=10, dtype=torch.float64)
    assert stats.kstest(t.max(dim=1).values.numpy(), "uniform").pvalue > 1e-3


def test_ltg_gap_below_t_max_has_the_spec_law():
    """Defaults: s = min(t_max/2, 0.6) = t_max/2 (t_max <= 1), so g = (t_max - t_i)/s is |e| when
    |e| <= 2 and otherwise (replaced by u t_max) 2(1 - u) ~ U(0, 2): a law free of t_max.
    CDF: F(x) = P(|e| <= x) + P(|e| > 2) x / 2 on [0, 2]."""
    t = _draw("ltg", 20, 4096, seed=11, dtype=torch.float64)
    row_max = t.max(dim=1, keepdim=True).values  # within ~3e-4 s of t_max
    g = ((row_max - t) / (row_max / 2)).flatten().numpy()
    assert g.min() >= 0 and g.max() <= 2 + 1e-9
    p_out = 2 * stats.norm.sf(2.0)
    cdf = lambda x: np.clip((2 * stats.norm.cdf(x) - 1) + p_out * x / 2, 0, 1)  # noqa: E731
    assert stats.kstest(g, cdf).pvalue > 1e-3


# --- srm --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [16, 37, 256])
def test_srm_row_means_are_uniform_and_values_in_range(n):
    t = _draw("srm", 3000, n, seed=12, dtype=torch.float64)
    assert t.min() >= 0 and t.max() <= 1
    means = t.mean(dim=1).numpy()
    assert stats.kstest(means, "uniform").pvalue > 1e-3


def test_srm_two_patches_split_uniformly():
    """N = 2: a_2 = 1, so the first part is U(max(L - 1, 0), min(L, 1)); after the shuffle either
    entry is. Check that law exactly."""
    t = _draw("srm", 4000, 2, seed=14, dtype=torch.float64)
    total = t.sum(dim=1)
    lo = (total - 1).clamp(min=0)
    hi = total.clamp(max=1)
    u = ((t[:, 0] - lo) / (hi - lo)).numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_srm_positions_are_exchangeable():
    t = _draw("srm", 4000, 8, seed=15, dtype=torch.float64)
    col_means = t.mean(dim=0)
    assert (col_means - 0.5).abs().max() < 0.03  # the shuffle removes positional bias


def test_srm_sharpness_controls_spread():
    soft = _draw("srm", 2000, 64, seed=16, dtype=torch.float64, sharpness=0.2)
    sharp = _draw("srm", 2000, 64, seed=16, dtype=torch.float64, sharpness=5.0)
    assert sharp.std(dim=1).mean() < 0.7 * soft.std(dim=1).mean()


def test_srm_without_generator_uses_global_seed():
    dist = timestep_distribution("srm")
    torch.manual_seed(3)
    a = dist(8, 16)
    torch.manual_seed(3)
    b = dist(8, 16)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


# --- errors ---------------------------------------------------------------------------------------
def test_unknown_distribution_lists_names():
    with pytest.raises(pf.ConfigError) as err:
        timestep_distribution("logitnormal")
    assert "logit-normal" in str(err.value) and "ltg" in str(err.value)


@pytest.mark.parametrize("name, params", [("ltg", {"sigma": 0.5}), ("uniform", {"loc": 0.1}), ("srm", {"std": 0.2})])
def test_unknown_parameter_is_rejected(name, params):
    with pytest.raises(pf.ConfigError) as err:
        timestep_distribution(name, **params)
    assert next(iter(params)) in str(err.value)


@pytest.mark.parametrize(
    "name, params",
    [
        ("ltg", {"std": -0.5}),  # t_i = t_max + |e| s > t_max, even > 1
        ("truncated-gaussian", {"std": -0.2}),
        ("srm", {"sharpness": 0.0}),  # Beta(0, 0): NaN times
    ],
)
def test_invalid_parameter_values_are_rejected(name, params):
    """Values that break the distribution's contract (t in [0, 1], t_i <= t_max) must be refused
    up front with a ConfigError, not silently produce out-of-range or NaN times."""
    with pytest.raises(pf.ConfigError):
        timestep_distribution(name, **params)


def test_training_default_is_ltg_with_paper_parameters():
    d = timestep_distribution("ltg")
    assert (d.std, d.loc, d.scale) == (0.6, 0.7, 1.0)
    assert math.isclose(timestep_distribution("ltg", loc=0.5).loc, 0.5)
