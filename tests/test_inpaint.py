"""Inpainting and per-region editing (``pf.inpaint``, ``pf.edit``, ``sampling/region.py``): properties
checked for every sampler of the registry and every mode, literal float64 loops of the rule in
docs/inpainting.md, and the errors a user can cause."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import patchforcing as pf
from conftest import make_model
from patchforcing.errors import ConfigError, ShapeError
from patchforcing.sampling import MODES, REGISTRY, SamplingPlan, noise_for_seeds
from patchforcing.sampling.masks import certain_count, difficulty_mask, inverted_mask, random_mask, spread_mask
from patchforcing.sampling.registry import get_sampler
from patchforcing.streams import mask_generators

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
B, P = 3, 2  # images, patch size (8x8 images: a 4x4 grid of patches)
SEEDS = [10, 11, 12]
LABELS = torch.tensor([0, 3, 4])
ALL = sorted(REGISTRY)
GLOBAL_TIME = [n for n in ALL if not get_sampler(n).needs_per_patch_time]


@pytest.fixture(scope="module")
def sit_net():
    return make_model("sit", P, seed=4)


def _image(seed=0, b=B):
    return torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2 - 1


def _mask(b=B):
    """1 = generate: a square in the middle (pixels 3..5 x 2..5, so it touches patches partly) and, in
    image 1, also the right half (outpainting)."""
    m = torch.zeros(b, 1, 8, 8, dtype=F64)
    m[:, :, 3:6, 2:6] = 1
    if b > 1:
        m[1, :, :, 4:] = 1
    return m


def _kept_pixels(mask):
    """(B, 1, H, W) bool: pixels of patches none of whose pixels is generated."""
    return F.max_pool2d(mask, P, P).repeat_interleave(P, 2).repeat_interleave(P, 3) == 0


def _noise():
    return noise_for_seeds(SEEDS, (3, 8, 8), dtype=F64)


# --- every sampler, every mode ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", MODES)
def test_kept_patches_equal_the_input_exactly_and_the_nfe_is_the_plans(pf_net, name, mode):
    image, mask = _image(), _mask()
    calls = []
    hook = pf_net.register_forward_hook(lambda *_: calls.append(1))
    try:
        x, info = pf.inpaint(pf_net, image, mask, sampler=name, steps=5, seeds=SEEDS, labels=LABELS, mode=mode,
                             return_info=True)
    finally:
        hook.remove()
    kept = _kept_pixels(mask).expand_as(x)
    assert torch.equal(x[kept], image[kept])
    assert not torch.equal(x[~kept], image[~kept])  # the rest is generated
    assert len(calls) == info["nfe"] == SamplingPlan(name, 5).nfe  # inpainting costs what sampling costs


@pytest.mark.parametrize("name", ALL)
def test_a_mask_that_generates_everything_is_sample_bit_for_bit(pf_net, name):
    x = pf.inpaint(pf_net, _image(), torch.ones(1, 1, 8, 8), sampler=name, steps=5, seeds=SEEDS, labels=LABELS, mode="clean")
    plain = pf.sample(pf_net, _noise(), sampler=name, steps=5, labels=LABELS, generator=mask_generators(SEEDS))
    assert torch.equal(x, plain)
    e = pf.edit(pf_net, _image(), 1.0, sampler=name, steps=5, seeds=SEEDS, labels=LABELS)
    assert torch.equal(e, plain)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", ["same", "ahead"])
def test_an_image_does_not_depend_on_its_batch(pf_net, name, mode):
    image, mask = _image(), _mask()
    together = pf.inpaint(pf_net, image, mask, sampler=name, steps=5, seeds=SEEDS, labels=LABELS, mode=mode)
    for i in range(B):
        alone = pf.inpaint(pf_net, image[i:i + 1], mask[i:i + 1], sampler=name, steps=5, seeds=SEEDS[i:i + 1],
                           labels=LABELS[i:i + 1], mode=mode)
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", GLOBAL_TIME)
def test_a_global_time_network_inpaints_with_same(sit_net, name):
    image, mask = _image(), _mask()
    x = pf.inpaint(sit_net, image, mask, sampler=name, steps=4, seeds=SEEDS, labels=LABELS)
    kept = _kept_pixels(mask).expand_as(x)
    assert torch.equal(x[kept], image[kept])


def test_the_modes_differ_and_the_seed_fixes_the_result(pf_net):
    image, mask = _image(), _mask()
    out = {m: pf.inpaint(pf_net, image, mask, sampler="look-ahead", steps=6, seeds=SEEDS, labels=LABELS, mode=m) for m in MODES}
    assert not torch.equal(out["same"], out["ahead"]) and not torch.equal(out["ahead"], out["clean"])
    again = pf.inpaint(pf_net, image, mask, sampler="look-ahead", steps=6, seeds=SEEDS, labels=LABELS, mode="ahead")
    assert torch.equal(again, out["ahead"])
    other = pf.inpaint(pf_net, image, mask, sampler="look-ahead", steps=6, seeds=[1, 2, 3], labels=LABELS, mode="ahead")
    assert not torch.equal(other, out["ahead"])


# --- literal float64 loops of the rule ------------------------------------------------------------------
def _pixels(patches):  # (B, N) -> (B, 1, 8, 8)
    return patches.view(patches.shape[0], 1, 4, 4).repeat_interleave(P, 2).repeat_interleave(P, 3)


def _known_patches(mask):
    return F.max_pool2d(mask, P, P).flatten(1) == 0  # (B, N)


@torch.no_grad()
def _literal_look_ahead_inpaint(net, image, mask, x0, steps, mode, rho=1.4, p_frac=0.4):
    """Look-ahead (docs/method.md §5.5) with the known patches fed at their mode's time and the
    difficulty quantile taken over the generated patches only (docs/inpainting.md)."""
    known = _known_patches(mask)
    known_px = _pixels(known).bool()
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float32)

    def evaluate(x, t):  # t: (B, N) the sampler's times
        tk = {"same": t, "ahead": torch.clamp(rho * t, max=1.0), "clean": torch.ones_like(t)}[mode]
        tk_px = _pixels(tk)
        x_in = torch.where(known_px, tk_px * image + (1 - tk_px) * x0, x)
        out = net(x_in, torch.where(known, tk, t), LABELS)
        return torch.where(known_px, image - x0, out.velocity), out.logvar

    x = x0.clone()
    for k in range(steps):
        t_k, t_next = grid[k].double(), grid[k + 1].double()
        t = torch.full((B, 16), t_k.item(), dtype=F64)
        v, logvar = evaluate(x, t)
        if grid[k].item() <= torch.tensor(0.05, dtype=torch.float32).item():
            x = x + (t_next - t_k) * v
            continue
        d = F.avg_pool2d(torch.exp(logvar), P, P).flatten(1)  # (B, N)
        certain = torch.zeros(B, 16, dtype=torch.bool)
        for b in range(B):
            free = d[b][~known[b]].repeat_interleave(P * P)  # every generated patch counted as its p^2 pixels
            certain[b] = (d[b] < torch.quantile(free, p_frac)) & ~known[b]
        delta = min(rho * t_k.item(), 1.0) - t_k.item()
        c_px = _pixels(certain).bool()
        x_ctx = x + delta * v * c_px
        v_ctx, _ = evaluate(x_ctx, t + delta * certain.to(F64))
        x = x + (t_next - t_k) * torch.where(c_px, v, v_ctx)
    return torch.where(known_px, image, x)


@pytest.mark.parametrize("mode", MODES)
def test_look_ahead_inpainting_equals_a_literal_loop_in_float64(pf_net, mode):
    image, mask = _image(), _mask()
    x = pf.inpaint(pf_net, image, mask, sampler="look-ahead", steps=6, noise=_noise(), labels=LABELS, mode=mode)
    torch.testing.assert_close(x, _literal_look_ahead_inpaint(pf_net, image, mask, _noise(), 6, mode), atol=1e-12, rtol=0)


def test_replacement_on_a_global_time_network_equals_a_literal_loop(sit_net):
    image, mask = _image(), _mask()
    known_px = _pixels(_known_patches(mask)).bool()
    x0 = _noise()
    x = x0.clone()
    grid = torch.linspace(0, 1, 5, dtype=torch.float32).double()
    for k in range(4):  # Euler; the known patches replaced by the input noised to t_k with the fixed noise
        x_in = torch.where(known_px, grid[k] * image + (1 - grid[k]) * x0, x)
        x = x + (grid[k + 1] - grid[k]) * sit_net(x_in, grid[k].expand(B), LABELS).velocity
    expected = torch.where(known_px, image, x)
    got = pf.inpaint(sit_net, image, mask, sampler="euler", steps=4, noise=x0, labels=LABELS)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_editing_equals_a_literal_per_patch_loop_in_float64(pf_net):
    image = _image()
    strength = torch.rand(B, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=F64)
    strength[0, :, :4] = 0  # the top half of image 0 is kept
    s = 1 - F.max_pool2d(strength, P, P).flatten(1)  # (B, N) start times
    s_px = _pixels(s)
    x0 = _noise()
    x = s_px * image + (1 - s_px) * x0
    grid = torch.linspace(0, 1, 6, dtype=torch.float32).double()
    for k in range(5):  # each patch integrates its own interval [s, 1] in 5 Euler steps
        v = pf_net(x, s + (1 - s) * grid[k], LABELS).velocity
        x = x + (grid[k + 1] - grid[k]) * (1 - s_px) * v
    expected = torch.where(s_px == 1, image, x)
    got = pf.edit(pf_net, image, strength, sampler="euler-pf", steps=5, noise=x0, labels=LABELS)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert torch.equal(got[0, :, :4], image[0, :, :4])


@pytest.mark.parametrize("name", ALL)
def test_editing_keeps_zero_strength_patches_with_every_sampler(pf_net, name):
    image = _image()
    strength = torch.full((1, 1, 8, 8), 0.6, dtype=F64)
    strength[..., :, :4] = 0
    x, info = pf.edit(pf_net, image, strength, sampler=name, steps=4, seeds=SEEDS, labels=LABELS, return_info=True)
    assert torch.equal(x[..., :4], image[..., :4]) and not torch.equal(x[..., 4:], image[..., 4:])
    assert info["nfe"] == SamplingPlan(name, 4).nfe


def test_a_global_time_network_edits_with_one_strength(sit_net):
    x = pf.edit(sit_net, _image(), 0.5, sampler="euler", steps=4, seeds=SEEDS, labels=LABELS)
    assert x.shape == (B, 3, 8, 8) and not torch.equal(x, _image())


# --- ranking only the generated patches ---------------------------------------------------------------
def test_masks_rank_only_the_allowed_patches():
    logvar = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    among = torch.ones(2, 16, dtype=torch.bool)
    among[0, :9] = False  # 7 patches may run ahead in image 0, all 16 in image 1
    for rule in (difficulty_mask, inverted_mask, spread_mask):
        full = rule(logvar, P, 0.4)
        assert torch.equal(rule(logvar, P, 0.4, among=torch.ones_like(among)), full)  # all allowed: as without
        got = F.max_pool2d(rule(logvar, P, 0.4, among=among).to(F64), P, P).flatten(1) > 0
        assert not got[0, :9].any()
        assert got[0].sum() == certain_count(7, P, 0.4) and got[1].sum() == certain_count(16, P, 0.4)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    got = F.max_pool2d(random_mask((2, 1, 8, 8), P, 0.4, gens, among=among).to(F64), P, P).flatten(1) > 0
    assert not got[0, :9].any() and got[0].sum() == certain_count(7, P, 0.4)
    # the easiest generated patches are the certain ones
    d = F.avg_pool2d(torch.exp(logvar), P, P).flatten(1)
    chosen = F.max_pool2d(difficulty_mask(logvar, P, 0.4, among=among).to(F64), P, P).flatten(1)[0] > 0
    assert d[0][chosen].max() < d[0][among[0] & ~chosen].min()


# --- bad input: one error naming the fix ---------------------------------------------------------------
@pytest.mark.parametrize("change, error, words", [
    (dict(mask=torch.ones(1, 1, 6, 6)), ShapeError, "mask is 6x6 but the image 8x8"),
    (dict(image=torch.zeros(B, 1, 8, 8, dtype=F64)), ShapeError, "1 channel(s) but this network takes 3"),
    (dict(mask=torch.full((1, 1, 8, 8), 0.7)), ShapeError, "mask >= 0.5"),
    (dict(image=torch.full((B, 3, 8, 8), 2.0, dtype=F64)), ShapeError, "rescale it"),
    (dict(mask=torch.zeros(1, 1, 8, 8)), ConfigError, "nothing to generate"),
    (dict(mode="sideways"), ConfigError, "same, ahead, clean"),
    (dict(strength=1.5), ConfigError, "strength must be a number in [0, 1]"),
    (dict(image=torch.zeros(B, 3, 16, 16, dtype=F64)), ShapeError, "resize or crop it"),
])
def test_bad_input_gets_one_message_naming_the_fix(pf_net, change, error, words):
    given = dict(image=_image(), mask=_mask(), mode="same")
    given.update(change)
    with pytest.raises(error, match=None) as err:
        pf.inpaint(pf_net, given.pop("image"), given.pop("mask"), sampler="euler-pf", steps=2, seeds=SEEDS, labels=LABELS,
                   **given)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_global_time_network_refuses_other_modes_and_strength_maps(sit_net):
    with pytest.raises(ConfigError, match="use mode 'same'"):
        pf.inpaint(sit_net, _image(), _mask(), sampler="euler", steps=2, seeds=SEEDS, labels=LABELS, mode="ahead")
    with pytest.raises(ConfigError, match="pass one strength"):
        pf.edit(sit_net, _image(), torch.rand(1, 1, 8, 8, dtype=F64), sampler="euler", steps=2, seeds=SEEDS, labels=LABELS)
    with pytest.raises(ConfigError, match="strength is 0 everywhere"):
        pf.edit(sit_net, _image(), 0.0, sampler="euler", steps=2, seeds=SEEDS, labels=LABELS)


def test_noise_or_seeds_one_of_them(pf_net):
    with pytest.raises(ConfigError, match="noise=.*or seeds="):
        pf.inpaint(pf_net, _image(), _mask(), sampler="euler-pf", steps=2, labels=LABELS)


def test_a_text_network_inpaints_from_its_prompt_with_guidance():
    from patchforcing.models import T2IConfig, create_model
    from patchforcing.text import load_text_encoder, text_condition

    torch.manual_seed(0)
    net = create_model(T2IConfig(input_size=8, in_channels=1, depth=2, hidden_dim=32, head_dim=16, mapping_dim=16, mapping_depth=1,
                                 txt_in_dim=64, txt_refiner_dim=32, txt_refiner_head_dim=16, txt_refiner_depth=1,
                                 text_encoder="byte-toy", text_length=16)).double().eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=F64))
    cond = text_condition(load_text_encoder("byte-toy", max_length=16), ["a bold seven", "a thin two"])
    image = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1
    x, info = pf.inpaint(net, image, mask, sampler="look-ahead", steps=4, seeds=[0, 1], condition=cond, cfg_scale=2.0,
                         mode="ahead", return_info=True)
    assert torch.equal(x[..., :4], image[..., :4]) and info["nfe"] == pf.expected_nfe("look-ahead", 4)
    swapped = pf.inpaint(net, image, mask, sampler="look-ahead", steps=4, seeds=[0, 1], condition=cond.select([1, 0]),
                         cfg_scale=2.0, mode="ahead")
    assert torch.equal(swapped[..., :4], image[..., :4]) and not torch.equal(swapped[..., 4:], x[..., 4:])  # the prompt counts


@pytest.mark.parametrize("mode", MODES)
def test_the_generated_region_never_sees_the_inputs_content_there(pf_net, mode):
    image, mask = _image(), _mask()
    changed = torch.where(_kept_pixels(mask), image, -image)  # other content where patches are generated
    a = pf.inpaint(pf_net, image, mask, sampler="look-ahead", steps=5, seeds=SEEDS, labels=LABELS, mode=mode)
    b = pf.inpaint(pf_net, changed, mask, sampler="look-ahead", steps=5, seeds=SEEDS, labels=LABELS, mode=mode)
    assert torch.equal(a, b)


def test_the_default_mode_is_clean_on_patch_forcing_networks_and_same_on_global_time_ones(pf_net, sit_net):
    image, mask = _image(), _mask()
    for net, sampler, mode in ((pf_net, "look-ahead", "clean"), (sit_net, "euler", "same")):
        default = pf.inpaint(net, image, mask, sampler=sampler, steps=4, seeds=SEEDS, labels=LABELS)
        assert torch.equal(default, pf.inpaint(net, image, mask, sampler=sampler, steps=4, seeds=SEEDS, labels=LABELS, mode=mode))
