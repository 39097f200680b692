"""The network (docs/method.md §3) against the literal reference of ``reference_impl``, plus its invariants."""

from __future__ import annotations

import math

import pytest
import torch

import patchforcing as pf
from conftest import make_model, tiny_config
from patchforcing.models import Kind, preset_config
from reference_impl import ref_forward, ref_pos_embed

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
B = 3


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g, dtype=F64)
    return x, g


def _time(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == "global":
        return torch.rand(B, generator=g, dtype=F64)
    if kind == "distinct":
        return torch.rand(B, n, generator=g, dtype=F64)
    if kind == "two":  # two distinct values per sample, scattered over the patches
        vals = torch.rand(B, 2, generator=g, dtype=F64)
        pick = torch.randint(0, 2, (B, n), generator=g)
        pick[:, 0], pick[:, 1] = 0, 1
        return vals.gather(1, pick)
    raise ValueError(kind)


def _reference(model, x, t, y):
    cfg = model.config
    return ref_forward(
        model.state_dict(), x, t, y, patch_size=cfg.patch_size, num_heads=cfg.num_heads, head=cfg.has_difficulty_head
    )


# --- exact agreement with the reference --------------------------------------------------------
@pytest.mark.parametrize("kind", ["patch-forcing", "sit"])
@pytest.mark.parametrize("patch_size", [2, 4])
@pytest.mark.parametrize("time_kind", ["global", "distinct", "two"])
@pytest.mark.parametrize("null", [False, True])
def test_forward_matches_reference(kind, patch_size, time_kind, null):
    model = make_model(kind, patch_size, seed=patch_size)
    x, g = _inputs(model, seed=1)
    t = _time(time_kind, model.num_patches, g)
    y = None if null else torch.tensor([0, 4, 2])
    with torch.no_grad():
        v, logvar = model(x, t, y)
    v_ref, l_ref = _reference(model, x, t, y)
    assert v.dtype == F64 and v.shape == x.shape
    assert v.abs().max() > 1e-2  # randomised weights: a non-trivial output
    torch.testing.assert_close(v, v_ref, atol=1e-6, rtol=0)
    if kind == "patch-forcing":
        assert logvar.shape == (B, 1, 8, 8)
        assert logvar.std() > 1e-3
        torch.testing.assert_close(logvar, l_ref, atol=1e-6, rtol=0)
    else:
        assert logvar is None and l_ref is None


def test_null_class_is_last_row_and_labels_matter(pf_model):
    x, g = _inputs(pf_model)
    t = torch.rand(B, generator=g, dtype=F64)
    null = torch.full((B,), pf_model.config.num_classes)
    with torch.no_grad():
        assert torch.equal(pf_model(x, t, None).velocity, pf_model(x, t, null).velocity)
        other = pf_model(x, t, torch.tensor([1, 1, 1])).velocity
    assert (other - pf_model(x, t, None).velocity).abs().max() > 1e-3


def test_time_and_position_matter(pf_model):
    """Guards the reference comparisons: a network ignoring t or patch order would be caught."""
    x, g = _inputs(pf_model)
    t = torch.rand(B, pf_model.num_patches, generator=g, dtype=F64)
    with torch.no_grad():
        base = pf_model(x, t).velocity
        shifted = pf_model(x, t.flip(1)).velocity
        later = pf_model(x, (t + 0.3).clamp(max=1)).velocity
    assert (base - shifted).abs().max() > 1e-3
    assert (base - later).abs().max() > 1e-3


def test_pos_embed_formula():
    for d, grid in [(32, 4), (64, 2), (48, 3)]:
        model = pf.create_model(tiny_config(hidden_size=d, input_size=2 * grid, num_heads=2))
        ref = ref_pos_embed(d, grid)
        torch.testing.assert_close(model.pos_embed[0].double(), ref, atol=1e-6, rtol=0)
    # The first D/2 channels depend on the column only: tokens of the same column agree there.
    pe = ref_pos_embed(32, 4)
    assert torch.equal(pe[1, :16], pe[5, :16]) and not torch.equal(pe[1, 16:], pe[5, 16:])
    assert torch.equal(pe[4, 16:], pe[5, 16:])


# --- time shapes and the shared-modulation fast path --------------------------------------------
@pytest.mark.parametrize("kind", ["patch-forcing", "sit"])
def test_equal_patch_times_equal_global_time(kind):
    model = make_model(kind, 2)
    x, g = _inputs(model)
    t = torch.rand(B, generator=g, dtype=F64)
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        a = model(x, t, y)
        b = model(x, t[:, None].expand(B, model.num_patches).contiguous(), y)
        model.share_modulation = False
        c = model(x, t[:, None].expand(B, model.num_patches).contiguous(), y)
    torch.testing.assert_close(a.velocity, b.velocity, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.velocity, c.velocity, atol=1e-12, rtol=0)
    if kind == "patch-forcing":
        torch.testing.assert_close(a.logvar, b.logvar, atol=1e-12, rtol=0)
        torch.testing.assert_close(a.logvar, c.logvar, atol=1e-12, rtol=0)


def _times_with(distinct: int, n: int, g, shared_across_batch=False) -> torch.Tensor:
    vals = torch.rand(1 if shared_across_batch else B, distinct, generator=g, dtype=F64).expand(B, distinct)
    pick = torch.randint(0, distinct, (B, n), generator=g)
    pick[:, :distinct] = torch.arange(distinct)
    return vals.gather(1, pick)


@pytest.mark.parametrize(
    "case", ["one", "two", "four", "many", "shared-values-across-batch", "mixed-rows", "per-sample"]
)
def test_shared_modulation_equals_per_token_path(case):
    model = make_model("patch-forcing", 2, seed=3)
    x, g = _inputs(model)
    n = model.num_patches
    if case == "one":
        t = _times_with(1, n, g)
    elif case == "two":
        t = _times_with(2, n, g)
    elif case == "four":
        t = _times_with(4, n, g)
    elif case == "many":
        t = torch.rand(B, n, generator=g, dtype=F64)
    elif case == "shared-values-across-batch":
        t = _times_with(3, n, g, shared_across_batch=True)
    elif case == "mixed-rows":  # row 0 constant, row 1 two values, row 2 all distinct
        t = torch.rand(B, n, generator=g, dtype=F64)
        t[0] = 0.25
        t[1] = torch.where(torch.arange(n) % 3 == 0, 0.5, 0.75)
    else:
        t = torch.rand(B, generator=g, dtype=F64)
    y = torch.tensor([3, 0, 3])
    with torch.no_grad():
        model.share_modulation = True
        fast = model(x, t, y)
        model.share_modulation = False
        slow = model(x, t, y)
    assert fast.velocity.abs().max() > 1e-2
    torch.testing.assert_close(fast.velocity, slow.velocity, atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.logvar, slow.logvar, atol=1e-12, rtol=0)


# --- dtypes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["patch-forcing", "sit"])
def test_low_precision_forward(dtype, kind):
    model = make_model(kind, 2, dtype=dtype)
    ref_model = make_model(kind, 2, dtype=F64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, 8, 8, generator=g)
    t = torch.rand(B, model.num_patches, generator=g)
    with torch.no_grad():
        v, logvar = model(x.to(dtype), t.to(dtype), torch.tensor([0, 1, 2]))
        v64, _ = ref_model(x.double(), t.to(dtype).double(), torch.tensor([0, 1, 2]))
    assert v.dtype == dtype and v.shape == x.shape and torch.isfinite(v).all()
    if kind == "patch-forcing":
        assert logvar.dtype == dtype and logvar.shape == (B, 1, 8, 8) and torch.isfinite(logvar).all()
    else:
        assert logvar is None
    tol = 1e-4 if dtype == torch.float32 else 0.15
    assert (v.double() - v64).abs().max() < tol * max(1.0, float(v64.abs().max()))


# --- input validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x_shape, t_shape, y_shape, bad, needle",
    [
        ((B, 4, 8, 8), (B,), (B,), "x", "(B, 3, 8, 8)"),
        ((B, 3, 16, 16), (B,), (B,), "x", "input_size"),
        ((3, 8, 8), (B,), (B,), "x", "(B, 3, 8, 8)"),
        ((B, 3, 8, 8), (B, 17), (B,), "t", f"({B}, 16)"),
        ((B, 3, 8, 8), (B + 1,), (B,), "t", f"({B},)"),
        ((B, 3, 8, 8), (B, 16, 1), (B,), "t", "one time per patch"),
        ((B, 3, 8, 8), (B,), (B + 1,), "y", f"({B},)"),
        ((B, 3, 8, 8), (B,), (B, 1), "y", "class labels"),
    ],
)
def test_wrong_shapes_raise_shape_error(pf_model, x_shape, t_shape, y_shape, bad, needle):
    x = torch.zeros(x_shape, dtype=F64)
    t = torch.zeros(t_shape, dtype=F64)
    y = torch.zeros(y_shape, dtype=torch.long)
    with pytest.raises(pf.ShapeError) as err:
        pf_model(x, t, y)
    msg = str(err.value)
    offending = {"x": x_shape, "t": t_shape, "y": y_shape}[bad]
    assert msg.startswith(f"{bad} has shape {tuple(offending)}"), msg
    assert needle in msg, msg


def test_no_null_class_needs_labels():
    model = make_model("patch-forcing", 2, class_dropout_prob=0.0)
    assert model.y_embedder.embedding_table.weight.shape[0] == 5
    with pytest.raises(pf.ShapeError, match="null class"):
        model(torch.zeros(1, 3, 8, 8, dtype=F64), torch.zeros(1, dtype=F64))


# --- presets and configuration --------------------------------------------------------------------
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def test_every_preset_resolves_to_a_config():
    assert len(pf.PRESETS) > 0
    seen = set()
    for name in pf.PRESETS:
        cfg = preset_config(name)
        prefix, rest = name.split("-", 1)
        size, patch = rest.split("/")
        assert cfg.kind is (Kind.PATCH_FORCING if prefix == "PF" else Kind.SIT)
        assert cfg.patch_size == int(patch)
        if size in SIZES:
            assert (cfg.depth, cfg.hidden_size, cfg.num_heads) == SIZES[size], name
            seen.add(size)
        assert cfg.has_difficulty_head == (prefix == "PF")
        assert cfg.out_channels == cfg.in_channels + (prefix == "PF")
    assert seen == set(SIZES)
    for size in SIZES:
        for p in (2, 4, 8):
            assert f"PF-{size}/{p}" in pf.PRESETS and f"SiT-{size}/{p}" in pf.PRESETS


def test_xs_preset_parameter_count():
    model = pf.create_model("PF-XS/2")
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 1_000_000 <= count <= 3_000_000


def test_preset_overrides_apply():
    model = pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2, input_size=8, in_channels=3)
    assert len(model.blocks) == 2 and model.config.hidden_size == 32 and model.num_patches == 16
    assert model.final_layer.linear.out_features == 2 * 2 * 4


def test_unknown_preset_lists_names():
    with pytest.raises(pf.ConfigError) as err:
        pf.create_model("PF-XXL/2")
    assert "PF-B/2" in str(err.value) and "SiT-XL/2" in str(err.value) and "T2I-XS/2" in str(err.value)  # every preset it takes


def test_unknown_override_is_rejected():
    with pytest.raises(pf.ConfigError, match="hiden_size"):
        pf.create_model("PF-XS/2", hiden_size=32)


def test_invalid_config_values():
    with pytest.raises(pf.ConfigError):
        tiny_config(patch_size=3)  # 8 is not divisible by 3
    with pytest.raises(pf.ConfigError):
        tiny_config(num_heads=3)  # 32 is not divisible by 3
    with pytest.raises(pf.ConfigError):
        tiny_config(kind="patch-forcing", learn_sigma=True)


def test_config_round_trips_through_dict():
    cfg = tiny_config("sit", 4, learn_sigma=True)
    assert pf.ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(pf.ConfigError):
        pf.ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# --- initialisation (docs/method.md §3.5) -----------------------------------------------------------------------
def test_initialisation():
    torch.manual_seed(0)
    model = pf.create_model(tiny_config(hidden_size=64, num_heads=4))
    zeroed = [b.adaLN_modulation[1] for b in model.blocks] + [model.final_layer.adaLN_modulation[1], model.final_layer.linear]
    for layer in zeroed:
        assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert torch.count_nonzero(m.bias) == 0, name
            if m in zeroed or name.startswith("t_embedder"):
                continue
            bound = math.sqrt(6.0 / (m.in_features + m.out_features))
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.5 * bound, name
    for w in (model.y_embedder.embedding_table.weight, model.t_embedder.mlp[0].weight, model.t_embedder.mlp[2].weight):
        assert abs(float(w.detach().std()) - 0.02) < 0.003
    conv = model.x_embedder.proj.weight
    fan_in, fan_out = conv[0].numel(), conv.shape[0]
    assert conv.abs().max() <= math.sqrt(6.0 / (fan_in + fan_out))
    assert torch.count_nonzero(model.x_embedder.proj.bias) == 0
    assert not model.pos_embed.requires_grad
    # Zeroed output layer: the initial velocity (and logvar) is exactly zero.
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2, 16)
    with torch.no_grad():
        v, logvar = model(x, t, torch.tensor([0, 1]))
    assert torch.count_nonzero(v) == 0 and torch.count_nonzero(logvar) == 0


def test_state_dict_uses_released_names(pf_model):
    names = set(pf_model.state_dict())
    expected = {
        "pos_embed",
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.proj.bias",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.bias",
        "blocks.1.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
        "final_layer.adaLN_modulation.1.bias",
    }
    assert expected <= names
    assert pf_model.state_dict()["y_embedder.embedding_table.weight"].shape == (6, 32)
    assert pf_model.state_dict()["final_layer.linear.weight"].shape == (2 * 2 * 4, 32)


# --- the per-token path without a gather ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_per_token_modulation_is_bit_identical_to_the_identity_gather(dtype):
    """Training times (all distinct) skip the identity gather; outputs and gradients are unchanged."""
    from patchforcing.models.transformer import Conditioning

    model = make_model("patch-forcing", 2, seed=5, dtype=dtype).train()
    x, g = _inputs(model)
    x = x.to(dtype)
    t = torch.rand(B, model.num_patches, generator=g, dtype=dtype)
    y = torch.tensor([1, 0, 2])
    new_cond = model._conditioning(t, y)
    assert new_cond.index is None and new_cond.vectors.shape == (B, model.num_patches, model.config.hidden_size)

    def gathered(t, y):  # the former per-token path: (B*N, D) rows through an identity index
        c = new_cond_fn(t, y)
        b, n, d = c.vectors.shape
        return Conditioning(c.vectors.reshape(b * n, d), torch.arange(b * n).view(b, n))

    def run():
        model.zero_grad()
        out = model(x, t, y)
        (out.velocity.square().mean() + out.logvar.mean()).backward()
        return out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    new_out, new_grads = run()
    new_cond_fn = model._conditioning
    model._conditioning = gathered
    old_out, old_grads = run()
    del model._conditioning
    assert torch.equal(new_out.velocity, old_out.velocity) and torch.equal(new_out.logvar, old_out.logvar)
    assert new_grads.keys() == old_grads.keys() and all(torch.equal(new_grads[k], old_grads[k]) for k in new_grads)
    assert new_grads["blocks.0.adaLN_modulation.1.weight"].abs().max() > 0
