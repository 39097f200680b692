"""Samplers (docs/method.md §5) against the literal loops of ``reference_impl``, plus their invariants (the properties
every sampler of the registry shares -- exactness on a straight path, NFE, budgets, batch independence -- are in
test_sampler_properties.py)."""

from __future__ import annotations

import math

import pytest
import torch

import patchforcing as pf
from conftest import make_model, seeded_noise
from patchforcing.sampling import certain_count, difficulty_mask, random_mask, time_grid
from reference_impl import ref_difficulty_mask, ref_dual_loop, ref_euler, ref_look_ahead, ref_nfe

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
B = 3
LABELS = torch.tensor([0, 3, 4])
NULL = 5  # num_classes of the tiny networks


def _net(model):
    """The network as the reference samplers call it: (x, t, y) -> (v, logvar)."""

    def call(x, t, y):
        out = model(x, t, y)
        return out.velocity, out.logvar

    return call


# --- agreement with the reference samplers ------------------------------------------------------
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
@pytest.mark.parametrize(
    "sampler, kind, steps, options",
    [
        ("euler", "sit", 6, {}),
        ("euler", "patch-forcing", 6, {}),
        ("euler-pf", "patch-forcing", 6, {}),
        ("dual-loop", "patch-forcing", 5, {}),
        ("dual-loop", "patch-forcing", 3, {"p": 0.6, "n_inner": 3}),
        ("look-ahead", "patch-forcing", 20, {}),  # t_1 = float32(0.05) is a warm-up step
        ("look-ahead", "patch-forcing", 8, {"p": 0.25, "context_ratio": 1.8}),
    ],
)
def test_sampler_matches_reference(sampler, kind, steps, options, cfg_scale):
    model = make_model(kind, 2, seed=11)
    noise = seeded_noise(1)
    labels = LABELS if cfg_scale != 1.0 or sampler != "euler-pf" else None  # also cover labels=None
    x, info = pf.sample(model, noise, sampler=sampler, steps=steps, labels=labels, cfg_scale=cfg_scale, return_info=True, **options)
    common = dict(labels=labels, w=cfg_scale, null=NULL)
    if sampler == "euler":
        ref, nfe = ref_euler(_net(model), noise, steps, **common)
    elif sampler == "euler-pf":
        ref, nfe = ref_euler(_net(model), noise, steps, per_patch=True, **common)
    elif sampler == "dual-loop":
        ref, nfe = ref_dual_loop(_net(model), noise, steps, p_frac=options.get("p", 0.4), n_inner=options.get("n_inner", 4), **common)
    else:
        ref, nfe = ref_look_ahead(
            _net(model), noise, steps, p_frac=options.get("p", 0.4), rho=options.get("context_ratio", 1.4), **common
        )
    assert x.dtype == F64 and x.shape == noise.shape
    assert (x - noise).abs().max() > 0.1  # the sample moved
    torch.testing.assert_close(x, ref, atol=1e-6, rtol=0)
    assert info["nfe"] == nfe == pf.expected_nfe(sampler, steps, **options)
    assert info["nfe"] == ref_nfe(sampler, steps, options.get("n_inner", 4))
    assert info["steps"] == steps and info["sampler"] == sampler and "trajectory" not in info


def test_samplers_differ_from_each_other():
    """Guards the reference comparisons: the adaptive samplers are not Euler in disguise."""
    model = make_model("patch-forcing", 2, seed=11)
    noise = seeded_noise(1)
    outs = {s: pf.sample(model, noise, sampler=s, steps=6, labels=LABELS) for s in ("euler-pf", "dual-loop", "look-ahead")}
    assert (outs["euler-pf"] - outs["dual-loop"]).abs().max() > 1e-3
    assert (outs["euler-pf"] - outs["look-ahead"]).abs().max() > 1e-3
    # euler on a PF network (t as (B,)) equals euler-pf (t as (B, N), all equal)
    torch.testing.assert_close(pf.sample(model, noise, sampler="euler", steps=6, labels=LABELS), outs["euler-pf"], atol=1e-12, rtol=0)


def test_look_ahead_warm_up_uses_the_float32_grid():
    """S = 20: t_1 = float32(0.05) <= float32(0.05), so two warm-up steps (NFE 38, not 39)."""
    assert pf.expected_nfe("look-ahead", 20) == 2 + 2 * 18
    assert pf.expected_nfe("look-ahead", 10) == 1 + 2 * 9
    assert pf.expected_nfe("look-ahead", 1) == 1
    assert pf.expected_nfe("look-ahead", 40) == 3 + 2 * 37  # 0, 0.025, 0.05
    assert time_grid(20).dtype == torch.float32 and time_grid(20).shape == (21,)
    assert torch.equal(time_grid(7), torch.linspace(0, 1, 8, dtype=torch.float32))


# --- guidance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["euler", "euler-pf", "dual-loop"])
def test_zero_guidance_equals_unconditional(sampler):
    model = make_model("patch-forcing", 2, seed=12)
    noise = seeded_noise(2)
    guided = pf.sample(model, noise, sampler=sampler, steps=4, labels=LABELS, cfg_scale=0.0)
    uncond = pf.sample(model, noise, sampler=sampler, steps=4, labels=torch.full((B,), NULL))
    uncond_none = pf.sample(model, noise, sampler=sampler, steps=4, labels=None)
    torch.testing.assert_close(guided, uncond, atol=1e-10, rtol=0)
    torch.testing.assert_close(uncond, uncond_none, atol=0, rtol=0)
    cond = pf.sample(model, noise, sampler=sampler, steps=4, labels=LABELS)
    assert (cond - uncond).abs().max() > 1e-3


def test_guidance_makes_one_call_per_evaluation():
    model = make_model("patch-forcing", 2, seed=12)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append((args[0].shape[0], args[2].clone())))
    _, info = pf.sample(model, seeded_noise(3), sampler="dual-loop", steps=2, labels=LABELS, cfg_scale=3.0, return_info=True)
    assert info["nfe"] == len(calls) == 8
    for batch, y in calls:
        assert batch == 2 * B
        assert torch.equal(y, torch.cat([torch.full((B,), NULL), LABELS]))  # unconditional first


def test_explicit_null_label_is_used():
    model = make_model("patch-forcing", 2, seed=12)
    noise = seeded_noise(4)
    a = pf.sample(model, noise, sampler="euler-pf", steps=3, labels=LABELS, cfg_scale=0.0, null_label=1)
    b = pf.sample(model, noise, sampler="euler-pf", steps=3, labels=torch.ones(B, dtype=torch.long))
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


# --- difficulty mask -----------------------------------------------------------------------------
@pytest.mark.parametrize("p, grid", [(2, 4), (4, 2), (2, 8), (1, 8)])
@pytest.mark.parametrize("q", [0.4, 0.25, 0.5, 0.7])
def test_difficulty_mask_counts_and_is_constant_per_patch(p, grid, q):
    g = torch.Generator().manual_seed(int(q * 100) + p)
    logvar = torch.randn(4, 1, p * grid, p * grid, generator=g, dtype=F64)  # varies inside patches
    mask = difficulty_mask(logvar, p, q)
    assert mask.dtype == torch.bool and mask.shape == logvar.shape
    blocks = mask.view(4, 1, grid, p, grid, p)
    assert (blocks == blocks[:, :, :, :1, :, :1]).all()  # constant over each patch
    per_patch = blocks[:, 0, :, 0, :, 0].flatten(1)
    # distinct difficulties: the patches whose pixels lie strictly below the interpolated
    # quantile at pos = q (M - 1) of the M sorted pixels are the ceil(pos) // p^2 easiest
    pos = q * (grid * grid * p * p - 1)
    assert (per_patch.sum(1) == math.ceil(pos - 1e-9) // (p * p)).all()
    assert torch.equal(mask, ref_difficulty_mask(logvar, p, q))


def test_difficulty_mask_picks_the_easiest_patches():
    p, grid = 2, 4
    d = torch.randperm(16, generator=torch.Generator().manual_seed(0)).double().view(1, 1, grid, grid) + 1
    logvar = torch.log(d).repeat_interleave(p, 2).repeat_interleave(p, 3)
    mask = difficulty_mask(logvar, p, 0.4)
    k = certain_count(16, p, 0.4)
    assert k == 6  # floor(0.4 * 63 / 4)
    certain = mask[0, 0, ::p, ::p].flatten()
    assert torch.equal(certain, d.flatten() <= k)  # the k smallest difficulties


@pytest.mark.parametrize("p, grid", [(2, 4), (4, 2), (2, 8)])
def test_certain_count_matches_the_quantile_rule_for_every_fraction(p, grid):
    """``certain_count`` must equal the number of patches the quantile rule of docs/method.md §5.2 marks, for
    any p_frac (the random-mask ablation draws that many). With M = N p^2 sorted pixels and
    pos = q (M - 1), the pixels strictly below the interpolated quantile are those of the
    ceil(pos) smallest, i.e. ceil(pos) // p^2 whole patches (floor(pos / p^2) is short by one
    whenever floor(pos) + 1 is a multiple of p^2 and pos is not an integer)."""
    g = torch.Generator().manual_seed(grid)
    wrong = []
    for i in range(1, 100):
        q = i / 100
        logvar = torch.randn(1, 1, grid, grid, generator=g, dtype=F64).repeat_interleave(p, 2).repeat_interleave(p, 3)
        marked = int(difficulty_mask(logvar, p, q)[0, 0, ::p, ::p].sum())
        if marked != certain_count(grid * grid, p, q):
            wrong.append((q, marked, certain_count(grid * grid, p, q)))
    assert not wrong, f"(p_frac, marked by the mask, certain_count): {wrong[:6]}"


def test_random_mask_draws_exactly_k_patches_uniformly():
    shape = (500, 1, 8, 8)
    m = random_mask(shape, 2, 0.4, torch.Generator().manual_seed(0))
    k = certain_count(16, 2, 0.4)
    blocks = m.view(500, 1, 4, 2, 4, 2)
    assert (blocks == blocks[:, :, :, :1, :, :1]).all()
    per_patch = blocks[:, 0, :, 0, :, 0].flatten(1)
    assert (per_patch.sum(1) == k).all()
    freq = per_patch.double().mean(0)  # each patch certain with probability k / N
    assert (freq - k / 16).abs().max() < 0.08
    assert torch.equal(m, random_mask(shape, 2, 0.4, torch.Generator().manual_seed(0)))
    assert not torch.equal(m, random_mask(shape, 2, 0.4, torch.Generator().manual_seed(1)))


# --- random samplers (the ablation) ----------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["random-dual-loop", "random-look-ahead"])
def test_random_samplers_masks_and_reproducibility(sampler):
    model = make_model("patch-forcing", 2, seed=13)
    noise = seeded_noise(7)
    run = lambda seed: pf.sample(  # noqa: E731
        model, noise, sampler=sampler, steps=4, labels=LABELS, return_info=True, record_trajectory=True,
        generator=torch.Generator().manual_seed(seed),
    )
    x_a, info_a = run(0)
    x_b, _ = run(0)
    x_c, info_c = run(1)
    assert torch.equal(x_a, x_b)
    assert (x_a - x_c).abs().max() > 1e-6
    k = certain_count(16, 2, 0.4)
    masks = [f["certain"] for f in info_a["trajectory"] if f["certain"] is not None and not f["inner"]]
    assert len(masks) == (4 if sampler == "random-dual-loop" else 4 - 1)  # look-ahead: t_0 is warm-up
    for m in masks:
        per_patch = m.view(B, 1, 4, 2, 4, 2)[:, 0, :, 0, :, 0].flatten(1)
        assert (per_patch.sum(1) == k).all()
    other = [f["certain"] for f in info_c["trajectory"] if f["certain"] is not None and not f["inner"]]
    assert any(not torch.equal(a, b) for a, b in zip(masks, other, strict=False))
    assert info_a["nfe"] == pf.expected_nfe(sampler, 4)


# --- trajectories -----------------------------------------------------------------------------------
def test_trajectory_is_off_by_default():
    model = make_model("patch-forcing", 2)
    _, info = pf.sample(model, seeded_noise(), sampler="look-ahead", steps=4, return_info=True)
    assert "trajectory" not in info
    assert isinstance(pf.sample(model, seeded_noise(), sampler="euler-pf", steps=2), torch.Tensor)


@pytest.mark.parametrize("sampler", ["euler", "euler-pf", "dual-loop", "look-ahead"])
def test_trajectory_has_one_frame_per_outer_evaluation(sampler):
    steps = 5
    model = make_model("patch-forcing", 2, seed=14)
    noise = seeded_noise(8)
    x_plain = pf.sample(model, noise, sampler=sampler, steps=steps, labels=LABELS)
    x, info = pf.sample(model, noise, sampler=sampler, steps=steps, labels=LABELS, return_info=True, record_trajectory=True)
    assert torch.equal(x, x_plain)  # recording changes nothing
    frames = info["trajectory"]
    outer = [f for f in frames if not f["inner"]]
    assert len(outer) == steps
    grid = time_grid(steps)
    for k, f in enumerate(outer):
        assert f["t"].shape == (B, 16)
        assert f["x"].shape == (B, 3, 8, 8)
        assert f["difficulty"].shape == (B, 1, 8, 8) and (f["difficulty"] > 0).all()
        assert f["t"].min() >= float(grid[k]) - 1e-7  # look-ahead frames hold t_ctx >= t_k
        if sampler != "look-ahead":
            assert torch.allclose(f["t"], torch.full((B, 16), float(grid[k])))
    torch.testing.assert_close(outer[0]["x"], noise.float())
    if sampler == "dual-loop":
        assert len(frames) == info["nfe"] == steps * 4


def test_dual_loop_time_maps_reach_the_next_grid_point():
    """Per outer step: certain patches jump to t_{k+1} at once, uncertain ones advance by D/K per
    inner evaluation and (after the last update) reach t_{k+1} too, ending at t = 1."""
    steps, k_inner = 4, 4
    model = make_model("patch-forcing", 2, seed=15)
    _, info = pf.sample(model, seeded_noise(9), sampler="dual-loop", steps=steps, labels=LABELS, return_info=True, record_trajectory=True)
    frames = info["trajectory"]
    grid = time_grid(steps).double()
    for k in range(steps):
        chunk = frames[k * k_inner : (k + 1) * k_inner]
        assert not chunk[0]["inner"] and all(f["inner"] for f in chunk[1:])
        certain = chunk[1]["certain"].view(B, 1, 4, 2, 4, 2)[:, 0, :, 0, :, 0].flatten(1)  # (B, N)
        assert certain.any(dim=1).all() and (~certain).any(dim=1).all()
        d = grid[k + 1] - grid[k]
        for j, f in enumerate(chunk[1:], start=1):
            expected = torch.where(certain, grid[k + 1], grid[k] + j * d / k_inner)
            torch.testing.assert_close(f["t"].double(), expected, atol=1e-6, rtol=0)
        final = chunk[-1]["t"].double() + (~certain) * d / k_inner
        torch.testing.assert_close(final, torch.full((B, 16), float(grid[k + 1]), dtype=F64), atol=1e-6, rtol=0)
    assert float(grid[-1]) == 1.0


def test_look_ahead_context_times():
    """Frames of non-warm-up steps: certain patches at min(rho t_k, 1), the others at t_k."""
    steps, rho = 5, 1.4
    model = make_model("patch-forcing", 2, seed=16)
    _, info = pf.sample(model, seeded_noise(10), sampler="look-ahead", steps=steps, labels=LABELS, return_info=True, record_trajectory=True)
    grid = time_grid(steps).double()
    for k, f in enumerate(info["trajectory"]):
        if k == 0:
            assert f["certain"] is None
            continue
        certain = f["certain"].view(B, 1, 4, 2, 4, 2)[:, 0, :, 0, :, 0].flatten(1)
        expected = torch.where(certain, min(rho * float(grid[k]), 1.0), grid[k])
        torch.testing.assert_close(f["t"].double(), expected, atol=1e-6, rtol=0)


# --- NFE budgets (the most steps within a budget, for every sampler and grid: test_sampler_properties.py) --------
def test_expected_nfe_matches_reference_counts():
    for steps in range(1, 45):
        assert pf.expected_nfe("euler", steps) == steps
        assert pf.expected_nfe("euler-pf", steps) == steps
        assert pf.expected_nfe("dual-loop", steps) == 4 * steps
        assert pf.expected_nfe("dual-loop", steps, n_inner=2) == 2 * steps
        assert pf.expected_nfe("look-ahead", steps) == ref_nfe("look-ahead", steps)
        assert pf.expected_nfe("random-look-ahead", steps) == ref_nfe("look-ahead", steps)


def test_steps_for_nfe_rejects_empty_budget():
    with pytest.raises(pf.ConfigError):
        pf.steps_for_nfe("euler", 0)


# --- errors --------------------------------------------------------------------------------------------
def test_unknown_sampler_lists_names(pf_model):
    with pytest.raises(pf.ConfigError) as err:
        pf.sample(pf_model, seeded_noise(), sampler="rk4", steps=4)
    assert "look-ahead" in str(err.value) and "dual-loop" in str(err.value)


@pytest.mark.parametrize(
    "sampler, options",
    [
        ("dual-loop", {"p": 1.5}),
        ("dual-loop", {"p": 0.0}),
        ("dual-loop", {"n_inner": 0}),
        ("dual-loop", {"n_inner": 2.5}),
        ("look-ahead", {"context_ratio": 0.5}),
        ("look-ahead", {"n_inner": 2}),
        ("euler", {"p": 0.4}),
    ],
)
def test_bad_options_raise(pf_model, sampler, options):
    with pytest.raises(pf.ConfigError) as err:
        pf.sample(pf_model, seeded_noise(), sampler=sampler, steps=4, **options)
    assert next(iter(options)) in str(err.value)
    with pytest.raises(pf.ConfigError):
        pf.expected_nfe(sampler, 4, **options)


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_bad_steps_raise(pf_model, steps):
    with pytest.raises(pf.ConfigError, match="steps"):
        pf.sample(pf_model, seeded_noise(), sampler="euler-pf", steps=steps)


@pytest.mark.parametrize("sampler", ["euler-pf", "dual-loop", "look-ahead", "random-dual-loop"])
def test_adaptive_samplers_refuse_sit(sit_model, sampler):
    with pytest.raises(pf.ConfigError, match="euler"):
        pf.sample(sit_model, seeded_noise(), sampler=sampler, steps=4)


@pytest.mark.parametrize("shape", [(B, 4, 8, 8), (B, 3, 16, 16), (3, 8, 8)])
def test_wrong_noise_shape(pf_model, shape):
    with pytest.raises(pf.ShapeError, match="noise has shape"):
        pf.sample(pf_model, torch.zeros(shape, dtype=F64), sampler="euler-pf", steps=2)


@pytest.mark.parametrize("labels", [torch.tensor([0, 1, 6]), torch.tensor([-1, 0, 0]), torch.tensor([0, 1]), torch.tensor([0.0, 1.0, 2.0])])
def test_bad_labels(pf_model, labels):
    with pytest.raises(pf.ShapeError, match="labels"):
        pf.sample(pf_model, seeded_noise(), sampler="euler-pf", steps=2, labels=labels)


def test_guidance_needs_labels_and_a_null_class(pf_model):
    with pytest.raises(pf.ConfigError, match="labels"):
        pf.sample(pf_model, seeded_noise(), sampler="euler-pf", steps=2, cfg_scale=2.0)
    no_null = make_model("patch-forcing", 2, class_dropout_prob=0.0)
    with pytest.raises(pf.ConfigError, match="null"):
        pf.sample(no_null, seeded_noise(), sampler="euler-pf", steps=2, labels=LABELS, cfg_scale=2.0)


def test_float32_sampling_runs_and_is_close_to_float64():
    m64 = make_model("patch-forcing", 2, seed=17)
    m32 = make_model("patch-forcing", 2, seed=17, dtype=torch.float32)
    noise = seeded_noise(11)
    a = pf.sample(m64, noise, sampler="euler-pf", steps=4, labels=LABELS)
    b = pf.sample(m32, noise.float(), sampler="euler-pf", steps=4, labels=LABELS)
    assert b.dtype == torch.float32
    assert (a - b.double()).abs().max() < 1e-4


def test_bfloat16_sampling_is_finite():
    model = make_model("patch-forcing", 2, seed=18, dtype=torch.bfloat16)
    noise = seeded_noise(12).to(torch.bfloat16)
    for sampler in ("euler-pf", "dual-loop", "look-ahead"):
        x = pf.sample(model, noise, sampler=sampler, steps=3, labels=LABELS, cfg_scale=2.0)
        assert x.dtype == torch.bfloat16 and x.shape == noise.shape and torch.isfinite(x).all()


def test_noise_dtype_other_than_the_network_is_handled():
    """The docstring says the noise dtype decides the compute dtype. A float32 noise with a
    float64 network must either sample or raise a clear PatchForcingError, not a raw
    RuntimeError from inside the convolution."""
    model = make_model("patch-forcing", 2, seed=19)
    try:
        x = pf.sample(model, seeded_noise(13).float(), sampler="euler-pf", steps=2)
    except pf.PatchForcingError as err:
        assert "dtype" in str(err)
    else:
        assert torch.isfinite(x).all() and x.shape == (B, 3, 8, 8)
