"""The text-to-image network (docs/method.md §8) against the literal float64 reference of ``reference_t2i``."""

from __future__ import annotations

import pytest
import torch

from patchforcing.errors import ConfigError, ShapeError
from patchforcing.models import PatchForcingT2I, T2IConfig, config_from_dict, create_model, t2i_preset_config
from patchforcing.models.t2i_layers import image_positions
from reference_t2i import ref_freqs_1d, ref_freqs_2d, ref_image_positions, ref_t2i_forward

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
# The tiny example config of docs/method.md §8.9.
TINY_EXAMPLE = dict(in_channels=4, input_size=8, depth=2, hidden_dim=64, head_dim=16, mapping_dim=32, mapping_depth=2, patch_size=2,
                 txt_in_dim=24, txt_refiner_dim=48, txt_refiner_head_dim=16, txt_refiner_depth=1)


def make_t2i(seed: int = 0, randomize: bool = True, **overrides) -> PatchForcingT2I:
    torch.manual_seed(seed)
    model = create_model(T2IConfig(**{**TINY_EXAMPLE, **overrides})).to(F64)
    if randomize:  # the zero-initialised layers would make every output trivially 0
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _name, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=F64))
    return model.eval()


def _inputs(model, b=2, hx=8, wx=8, length=5, seed=1, time="distinct"):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n = (hx // cfg.patch_size) * (wx // cfg.patch_size)
    x = torch.randn(b, cfg.in_channels, hx, wx, generator=g, dtype=F64)
    t = torch.rand(b, n, generator=g, dtype=F64)
    if time == "two":
        t = torch.where(torch.rand(b, n, generator=g) < 0.5, t[:, :1], t[:, 1:2])
    elif time == "global":
        t = t[:, 0]
    y = torch.randn(b, length, cfg.txt_in_dim, generator=g, dtype=F64)
    return x, t, y


def _reference(model, x, t, y):
    cfg = model.config
    tt = t if t.ndim == 2 else t[:, None].expand(-1, (x.shape[2] // cfg.patch_size) * (x.shape[3] // cfg.patch_size))
    return ref_t2i_forward(model.state_dict(), x, tt, y, patch_size=cfg.patch_size, head_dim=cfg.head_dim,
                           txt_head_dim=cfg.txt_refiner_head_dim)


@pytest.mark.parametrize("time", ["distinct", "two", "global"])
@pytest.mark.parametrize("shape", [(8, 8), (8, 16)])  # powers of two: float32 positions are exact (docs/method.md §8.5)
def test_forward_matches_reference_float64(time, shape):
    model = make_t2i(seed=3)
    x, t, y = _inputs(model, hx=shape[0], wx=shape[1], time=time)
    with torch.no_grad():
        v, logvar = model(x, t, y)
    v_ref, l_ref = _reference(model, x, t, y)
    assert v.shape == x.shape and logvar.shape == (2, 1, *shape)
    assert v.abs().max() > 1e-2 and logvar.std() > 1e-3  # non-trivial outputs
    torch.testing.assert_close(v, v_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(logvar, l_ref, atol=1e-6, rtol=0)


def test_per_token_path_and_mask_extension_agree():
    model = make_t2i(seed=4)
    x, t, y = _inputs(model, time="two")
    with torch.no_grad():
        shared = model(x, t, y).velocity
        model.share_modulation = False
        per_token = model(x, t, y).velocity
        model.share_modulation = True
        all_real = model(x, t, y, text_mask=torch.ones(2, 5, dtype=torch.bool)).velocity
        masked = model(x, t, y, text_mask=torch.tensor([[True] * 3 + [False] * 2] * 2)).velocity
    torch.testing.assert_close(shared, per_token, atol=1e-12, rtol=0)
    torch.testing.assert_close(shared, all_real, atol=1e-12, rtol=0)
    assert (masked - shared).abs().max() > 1e-4  # masking the padding changes the result


def test_text_and_time_both_matter():
    model = make_t2i(seed=5)
    x, t, y = _inputs(model)
    with torch.no_grad():
        base = model(x, t, y).velocity
        assert (model(x, t, y.flip(0)).velocity - base).abs().max() > 1e-3
        assert (model(x, t.flip(1), y).velocity - base).abs().max() > 1e-3


def test_state_dict_names_shapes_order_and_counts_of_spec_example():
    model = create_model(T2IConfig(**TINY_EXAMPLE))
    sd = model.state_dict()
    assert len(sd) == 53
    assert sum(v.numel() for k, v in sd.items() if k != "t_embedder.time_emb.weight") == 200_847
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 200_771
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    expected = {
        "t_embedder.time_emb.weight": (16, 1), "t_embedder.time_in_proj.weight": (32, 32),
        "t_embedder.mapping.blocks.1.up_proj.weight": (192, 32), "t_embedder.mapping.blocks.1.down_proj.weight": (32, 96),
        "merge.proj.weight": (64, 16), "blocks.1.self_attn.scale": (4,), "blocks.1.self_attn.norm.linear.weight": (64, 32),
        "blocks.1.self_attn.qkv_proj.weight": (192, 64), "blocks.1.self_attn.pos_emb.freqs": (2, 4, 2),
        "blocks.0.cross_attn.norm_cross.scale": (48,), "blocks.0.cross_attn.kv_proj.weight": (128, 48),
        "blocks.0.cross_attn.pos_emb.freqs": (2, 4, 2), "blocks.0.ff.up_proj.weight": (384, 64),
        "blocks.0.ff.down_proj.weight": (64, 192), "split.norm.scale": (64,), "split.proj.weight": (20, 64),
        "txt_proj.weight": (48, 24), "txt_proj.bias": (48,), "txt_refiner.0.self_attn.scale": (3,),
        "txt_refiner.0.self_attn.qkv_proj.weight": (144, 48), "txt_refiner.0.self_attn.pos_emb.freqs": (3, 4),
        "txt_refiner.0.ff.up_proj.weight": (288, 48), "txt_refiner.0.ff.down_proj.weight": (48, 144),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    tops = [k.split(".")[0] for k in sd]
    assert [k for i, k in enumerate(tops) if i == 0 or tops[i - 1] != k] == ["t_embedder", "merge", "blocks", "split", "txt_proj", "txt_refiner"]
    cross = [k.split("cross_attn.")[1] for k in sd if k.startswith("blocks.0.cross_attn.")]
    assert cross == ["scale", "norm.linear.weight", "norm_cross.scale", "q_proj.weight", "kv_proj.weight", "out_proj.weight", "pos_emb.freqs"]
    # Frozen RoPE tables with the values of docs/method.md §8.5; the Fourier buffer lives in the state_dict.
    assert not model.blocks[0].self_attn.pos_emb.freqs.requires_grad
    # float32 tables: equal up to a few float32 ulps (how the log-ladder is rounded is not fixed by docs/method.md §8.5)
    torch.testing.assert_close(sd["blocks.0.cross_attn.pos_emb.freqs"][1], ref_freqs_2d(4, 16), rtol=2e-6, atol=0)
    torch.testing.assert_close(sd["txt_refiner.0.self_attn.pos_emb.freqs"], ref_freqs_1d(3, 16), rtol=2e-6, atol=0)
    torch.testing.assert_close(sd["txt_refiner.0.self_attn.pos_emb.freqs"][0], torch.tensor([1e-4, 1e-3, 1e-2, 1e-1]))


def test_paper_config_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = create_model("T2I-1.2B/2")
        small_in = create_model("T2I-1.2B/2", in_channels=4)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_240_313_240
    assert sum(p.numel() for p in model.parameters()) == 1_240_335_512
    assert sum(b.numel() for b in model.buffers()) == 192
    assert sum(p.numel() for p in small_in.parameters() if p.requires_grad) == 1_239_969_176
    assert tuple(model.blocks[0].self_attn.pos_emb.freqs.shape) == (2, 16, 12)
    assert tuple(model.txt_refiner[0].self_attn.pos_emb.freqs.shape) == (12, 32)


def test_fresh_network_outputs_zero_and_positions_are_patch_centres():
    model = make_t2i(randomize=False)
    x, t, y = _inputs(model)
    out = model(x, t, y)
    assert torch.equal(out.velocity, torch.zeros_like(x)) and torch.equal(out.logvar, torch.zeros(2, 1, 8, 8, dtype=F64))
    assert torch.equal(image_positions(8, 16, 2), ref_image_positions(8, 16, 2))
    assert torch.equal(image_positions(8, 8, 2)[:4, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_rope_tables_are_shared_only_while_equal():
    """Each distinct frozen RoPE table is evaluated once per forward; a changed table is noticed."""
    model = make_t2i(seed=7)
    x, t, y = _inputs(model)
    with torch.no_grad():
        model(x, t, y)
        assert model._rope_first == [0] * 2 * model.config.depth  # the reference's tables are all equal
        model.blocks[1].cross_attn.pos_emb.freqs.mul_(1.5)
        out = model(x, t, y)
    assert model._rope_first == [0, 0, 0, 3]
    v_ref, l_ref = _reference(model, x, t, y)
    torch.testing.assert_close(out.velocity, v_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logvar, l_ref, atol=1e-6, rtol=0)


def test_refined_text_is_computed_once_per_prompt_under_no_grad(monkeypatch):
    model = make_t2i(seed=6)
    x, t, y = _inputs(model)
    calls = []
    original = model.refine_text
    monkeypatch.setattr(model, "refine_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        first = model(x, t, y).velocity
        second = model(x, t * 0.5, y.clone()).velocity  # a new tensor with the same values: cached
        assert len(calls) == 1
        _ = model(x, t, y + 1).velocity  # other text: recomputed
        assert len(calls) == 2
        model.txt_proj.bias.add_(0.1)  # new weights: recomputed
        model(x, t, y + 1)
        assert len(calls) == 3
    with torch.enable_grad():
        model(x, t, y)
        model(x, t, y)
    assert len(calls) == 5  # never cached while gradients flow
    assert (first - second).abs().max() > 0  # different times gave a different output


def test_bad_inputs_and_configs_raise_one_clear_error():
    model = make_t2i()
    x, t, y = _inputs(model)
    with pytest.raises(ShapeError, match="text-encoder states"):
        model(x, t, torch.tensor([1, 2]))
    with pytest.raises(ShapeError, match="text-encoder states"):
        model(x, t, y[..., :3])
    with pytest.raises(ShapeError, match="one time per patch"):
        model(x, t[:, :3], y)
    with pytest.raises(ConfigError, match="head_dim"):
        T2IConfig(**{**TINY_EXAMPLE, "head_dim": 12, "hidden_dim": 48})
    with pytest.raises(ConfigError, match="unknown text-to-image preset"):
        t2i_preset_config("T2I-Q/2")
    cfg = T2IConfig(**TINY_EXAMPLE)
    assert config_from_dict(cfg.to_dict()) == cfg
