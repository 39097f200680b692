"""REPA: the projector network, the reference's REPA files, the alignment loss."""

from __future__ import annotations

import math

import pytest
import torch

import patchforcing as pf
from conftest import make_model, tiny_config
from patchforcing.errors import CheckpointError, ConfigError, ShapeError
from patchforcing.models import FeatureOutput, preset_config
from reference_impl import attention, gelu_tanh, layer_norm, linear, silu, time_features

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
REPA_TARGET = "patch_flow.models.pf_transformer_repa.REPAPatchForcingDiT"
REPA = dict(repa_dim=6, repa_depth=1, repa_projector_dim=12)


def _inputs(seed=0, b=2, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g, dtype=F64), torch.rand(b, n, generator=g, dtype=F64), torch.tensor([1, 4])


def independent_features(sd: dict, x, t, y, *, patch_size: int, num_heads: int, encoder_depth: int):
    """docs/method.md §7.1 written out: patch tokens, ``encoder_depth`` adaLN-Zero blocks, then the
    projector ``Linear -> SiLU -> Linear -> SiLU -> Linear`` on every token. Float64, loops."""
    sd = {k: v.detach().to(F64) for k, v in sd.items()}
    b, _, hh, ww = x.shape
    p, g = patch_size, hh // patch_size
    d = sd["pos_embed"].shape[-1]
    wconv, bconv = sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"]
    tokens = torch.stack(
        [torch.einsum("bcuv,dcuv->bd", x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p], wconv) + bconv
         for i in range(g) for j in range(g)], dim=1)
    tokens = tokens + sd["pos_embed"].reshape(g * g, d)
    t_emb = linear(silu(linear(time_features(t), sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    cond = t_emb + sd["y_embedder.embedding_table.weight"][y][:, None, :]
    for k in range(encoder_depth):  # blocks 0 .. encoder_depth - 1
        mod = linear(silu(cond), sd, f"blocks.{k}.adaLN_modulation.1")
        s1, c1, g1, s2, c2, g2 = (mod[..., r * d:(r + 1) * d] for r in range(6))
        h = layer_norm(tokens) * (1 + c1) + s1
        tokens = tokens + g1 * torch.stack([attention(h[s], sd, f"blocks.{k}.attn", num_heads) for s in range(b)])
        h = layer_norm(tokens) * (1 + c2) + s2
        tokens = tokens + g2 * linear(gelu_tanh(linear(h, sd, f"blocks.{k}.mlp.fc1")), sd, f"blocks.{k}.mlp.fc2")
    z = linear(silu(linear(silu(linear(tokens, sd, "projector.0")), sd, "projector.2")), sd, "projector.4")
    return z  # (B, N, z_dim)


def _reference_file(tmp_path, model, **params):
    c = model.config
    p = dict(in_channels=c.in_channels, input_size=c.input_size, depth=c.depth, hidden_size=c.hidden_size,
             patch_size=c.patch_size, num_heads=c.num_heads, num_classes=c.num_classes, predict_uncertainty=True,
             z_dim=c.repa_dim, encoder_depth=c.repa_depth, projector_dim=c.repa_projector_dim, **params)
    path = tmp_path / "repa.pt"
    torch.save({"config": {"target": REPA_TARGET, "params": p}, "state_dict": model.state_dict()}, path)
    return path


# --- network ----------------------------------------------------------------------------------------
def test_projector_names_shapes_and_order():
    model = make_model(**REPA)
    names = list(model.state_dict())
    assert names[-6:] == [f"projector.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")]
    assert names.index("projector.0.weight") > max(i for i, k in enumerate(names) if k.startswith("final_layer"))
    sd = model.state_dict()
    assert sd["projector.0.weight"].shape == (12, 32) and sd["projector.2.weight"].shape == (12, 12)
    assert sd["projector.4.weight"].shape == (6, 12) and sd["projector.4.bias"].shape == (6,)
    fresh = pf.create_model(tiny_config(**REPA))
    assert all(float(fresh.state_dict()[f"projector.{i}.bias"].abs().max()) == 0 for i in (0, 2, 4))  # Xavier, zero bias


@pytest.mark.parametrize("preset, depth", [("PF-XL/2", 8), ("SiT-XL/2", 8), ("PF-B/2", 4), ("SiT-B/4", 4), ("PF-L/2", 8), ("PF-S/8", 4), ("PF-XS/2", 2)])
def test_every_preset_takes_a_projector_with_the_repa_default_depth(preset, depth):
    cfg = preset_config(preset, repa_dim=768)
    assert (cfg.repa_depth, cfg.repa_projector_dim, cfg.has_projector) == (depth, 2048, True)
    assert preset_config(preset, repa_dim=768, repa_depth=1).repa_depth == 1
    assert not preset_config(preset).has_projector


def test_features_match_an_independent_reimplementation_of_the_reference_file(tmp_path):
    """A reference-layout REPA file loads exactly; ``features`` agree with docs/method.md §7.1 in float64."""
    model = make_model(seed=3, depth=2, repa_dim=6, repa_depth=2, repa_projector_dim=12)
    loaded = pf.load_model(_reference_file(tmp_path, model))
    assert loaded.config.repa_dim == 6 and loaded.config.repa_depth == 2 and loaded.config.repa_projector_dim == 12
    x, t, y = _inputs(1)
    out = loaded(x, t, y, return_features=True)
    ref = independent_features(model.state_dict(), x, t, y, patch_size=2, num_heads=2, encoder_depth=2)
    assert out.features.dtype == F64 and out.features.shape == (2, 16, 6)
    torch.testing.assert_close(out.features, ref, rtol=0, atol=1e-10)
    assert out.features.abs().max() > 1e-3
    plain = loaded(x, t, y)
    assert type(plain) is not FeatureOutput and torch.equal(plain.velocity, out.velocity)
    shallow = make_model(seed=3, depth=2, repa_dim=6, repa_depth=1, repa_projector_dim=12)
    ref1 = independent_features(shallow.state_dict(), x, t, y, patch_size=2, num_heads=2, encoder_depth=1)
    torch.testing.assert_close(shallow(x, t, y, return_features=True).features, ref1, rtol=0, atol=1e-10)


def test_reference_defaults_and_errors(tmp_path):
    model = make_model(depth=2, repa_dim=6, repa_depth=2, repa_projector_dim=12)
    path = tmp_path / "repa.pt"
    c = model.config
    params = dict(in_channels=3, input_size=8, depth=2, hidden_size=32, patch_size=2, num_heads=2, num_classes=5)
    # encoder_depth defaults to 8 in the reference: deeper than this 2-block network
    torch.save({"config": {"target": REPA_TARGET, "params": {**params, "z_dim": 6, "projector_dim": 12}},
                "state_dict": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="repa_depth"):
        pf.load_model(path)
    torch.save({"config": {"target": REPA_TARGET, "params": {**params, "z_dim": 6, "encoder_depth": 2}},
                "state_dict": model.state_dict()}, path)  # projector_dim defaults to 2048: shapes disagree
    with pytest.raises(CheckpointError, match="projector"):
        pf.load_model(path)
    assert c.repa_depth == 2


def test_save_model_keeps_the_projector(tmp_path):
    model = make_model(seed=4, **REPA)
    loaded = pf.load_model(pf.save_model(model, tmp_path / "net.safetensors"))
    x, t, y = _inputs(2)
    assert loaded.config == model.config
    assert torch.equal(loaded(x, t, y, return_features=True).features, model(x, t, y, return_features=True).features)


def test_sampling_never_runs_the_projector():
    model = make_model(seed=5, **REPA)
    calls = []
    model.projector.register_forward_hook(lambda *a: calls.append(1))
    noise = torch.randn(2, 3, 8, 8, dtype=F64)
    for sampler in ("euler-pf", "dual-loop", "look-ahead"):
        pf.sample(model, noise, sampler=sampler, steps=3, labels=torch.tensor([1, 2]), cfg_scale=2.0)
    assert calls == []
    model(noise, torch.rand(2, 16, dtype=F64), torch.tensor([1, 2]), return_features=True)
    assert calls == [1]


def test_projector_config_errors():
    with pytest.raises(ConfigError, match="repa_depth"):
        tiny_config(repa_dim=4, repa_depth=3)
    with pytest.raises(ConfigError, match="repa_dim"):
        tiny_config(repa_depth=1)
    with pytest.raises(ShapeError, match="repa_dim"):
        make_model()(*_inputs(), return_features=True)


# --- loss -------------------------------------------------------------------------------------------
def _manual_repa(features, target):
    """-mean cos, with a loop over samples and tokens."""
    b, n, _ = features.shape
    total = 0.0
    for i in range(b):
        for j in range(n):
            f, g = features[i, j], target[i, j]
            total += float(f @ g) / max(math.sqrt(float(f @ f)) * math.sqrt(float(g @ g)), 1e-8)
    return -total / (b * n)


def _bilinear(grid, size):
    """align_corners=False bilinear resize of (h, w, z) to (size, size, z), written out."""
    h = grid.shape[0]
    out = torch.zeros(size, size, grid.shape[-1], dtype=grid.dtype)
    scale = h / size
    for i in range(size):
        for j in range(size):
            yi, xj = max((i + 0.5) * scale - 0.5, 0.0), max((j + 0.5) * scale - 0.5, 0.0)
            y0, x0 = int(math.floor(yi)), int(math.floor(xj))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, h - 1)
            wy, wx = yi - y0, xj - x0
            out[i, j] = ((1 - wy) * (1 - wx) * grid[y0, x0] + (1 - wy) * wx * grid[y0, x1]
                         + wy * (1 - wx) * grid[y1, x0] + wy * wx * grid[y1, x1])
    return out


@pytest.mark.parametrize("target_side", [4, 6, 2])
def test_repa_loss_matches_the_formula(target_side):
    model = make_model(seed=6, **REPA)
    x1, t, y = _inputs(3)
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    target = torch.randn(2, target_side**2, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    model.train()
    out = pf.training_loss(model, x1, x0=x0, t=t, labels=y, repa_target=target, repa_weight=0.7, label_dropout=False)
    plain = pf.training_loss(model, x1, x0=x0, t=t, labels=y, label_dropout=False)
    features = model(pf.interpolate(x0, x1, t, 2), t, y, return_features=True).features
    resized = torch.stack([_bilinear(target[i].reshape(target_side, target_side, 6), 4).reshape(16, 6) for i in range(2)])
    expected = _manual_repa(features.detach(), resized)
    assert out["repa_loss"].item() == pytest.approx(expected, abs=1e-12)
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + 0.7 * expected, abs=1e-12)
    assert "repa_loss" not in plain
    out["loss"].backward()
    assert model.projector[0].weight.grad.abs().max() > 0  # the projector learns


def test_repa_loss_shape_errors():
    model = make_model(**REPA)
    x1, t, y = _inputs()
    with pytest.raises(ShapeError, match="repa_dim"):
        pf.training_loss(model, x1, t=t, labels=y, repa_target=torch.randn(2, 16, 5, dtype=F64))
    with pytest.raises(ShapeError, match="square"):
        pf.training_loss(model, x1, t=t, labels=y, repa_target=torch.randn(2, 15, 6, dtype=F64))


# --- encoders ---------------------------------------------------------------------------------------
def test_digits_encoder_is_the_classifier_on_the_patch_grid():
    from patchforcing.encoders import load_encoder
    from patchforcing.evaluation.classifier import load_digits_classifier

    enc = load_encoder("digits-cnn")
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = enc(images)
    body = load_digits_classifier().body
    maps = body[8](body[7](body[6](body[5](body[4](body[3](body[2](body[1](body[0](images)))))))))  # (3, 64, 8, 8)
    assert feats.shape == (3, 64, enc.feature_dim) == (3, 64, 64)
    torch.testing.assert_close(feats[:, 8 * 2 + 5], maps[:, :, 2, 5])  # token (i, j) = row-major i * 8 + j
    assert not feats.requires_grad and not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ShapeError, match="16, 16"):
        enc(torch.zeros(1, 1, 8, 8))


def test_dinov2_from_a_local_folder_with_repa_preprocessing(tmp_path):
    transformers = pytest.importorskip("transformers")
    from patchforcing.encoders import load_encoder

    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    patch_size=14, image_size=224)
    torch.manual_seed(0)
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    enc = load_encoder(f"dinov2:{tmp_path / 'dino'}")
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    feats = enc(images)
    assert feats.shape == (2, 16 * 16, 32) and enc.feature_dim == 32
    # independent preprocessing: [0, 1], gray -> RGB, ImageNet mean/std, bicubic to 224
    x = ((images + 1) / 2).repeat(1, 3, 1, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    net = transformers.Dinov2Model.from_pretrained(tmp_path / "dino").eval()
    with torch.no_grad():
        ref = net(pixel_values=x).last_hidden_state[:, 1:]
    torch.testing.assert_close(feats, ref)
    model = make_model(seed=1, repa_dim=32, repa_depth=1, repa_projector_dim=8, in_channels=1)
    loss = pf.training_loss(model, torch.zeros(2, 1, 8, 8, dtype=F64), repa_target=feats)  # 256 tokens -> 16
    assert torch.isfinite(loss["repa_loss"])


def test_missing_dinov2_names_the_model_and_the_fix(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from patchforcing.encoders import load_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache" / "hub"))
    with pytest.raises(CheckpointError, match=r"`hf download facebook/dinov2-base`"):
        load_encoder("dinov2-b")
    with pytest.raises(CheckpointError, match="dinov2:FOLDER"):
        load_encoder(f"dinov2:{tmp_path / 'nothing-here'}")
    with pytest.raises(ConfigError, match="digits-cnn"):
        load_encoder("clip")


def test_core_imports_without_transformers(monkeypatch):
    import sys

    from patchforcing.encoders import load_encoder

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ConfigError, match=r"patchforcing\[hf\]"):
        load_encoder("dinov2-b")
    assert load_encoder("digits-cnn").feature_dim == 64


@pytest.mark.parametrize("image_size", [256, 512])
def test_dinov2_position_table_resampled_once_as_repa_does(tmp_path, image_size):
    """REPA resamples DINOv2's 37 x 37 table (bicubic, antialiased) to 16 * (R // 256) and feeds 224 * (R // 256) px."""
    transformers = pytest.importorskip("transformers")
    from patchforcing.encoders import load_encoder

    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    patch_size=14, image_size=518)  # 37 x 37 position table, as the released models
    torch.manual_seed(0)
    net = transformers.Dinov2Model(cfg)
    with torch.no_grad():  # a smooth table (as trained ones are), plus noise
        grid = torch.linspace(-1, 1, 37)
        smooth = torch.sin(3 * grid[:, None, None] + torch.arange(32) * 0.3) * torch.cos(2 * grid[None, :, None])
        net.embeddings.position_embeddings[:, 1:] = smooth.reshape(1, 37 * 37, 32) + 0.1 * torch.randn(1, 37 * 37, 32)
    net.save_pretrained(tmp_path / "dino")
    enc = load_encoder(f"dinov2:{tmp_path / 'dino'}", image_size=image_size)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    feats = enc(images)
    scale = image_size // 256
    assert feats.shape == (2, (16 * scale) ** 2, 32)

    # the literal computation: table resampled once, then the model run at 224 * scale without interpolation
    ref_net = transformers.Dinov2Model.from_pretrained(tmp_path / "dino").eval()
    table = ref_net.embeddings.position_embeddings.data
    patch = table[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    patch = torch.nn.functional.interpolate(patch, size=(16 * scale, 16 * scale), mode="bicubic", antialias=True,
                                            align_corners=False)
    x = (images + 1) / 2
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(224 * scale, 224 * scale), mode="bicubic", align_corners=False)
    with torch.no_grad():
        old = ref_net(pixel_values=x).last_hidden_state[:, 1:]  # transformers interpolates per call, no antialiasing
        ref_net.embeddings.position_embeddings.data = torch.cat([table[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, 32)], 1)
        ref = ref_net(pixel_values=x).last_hidden_state[:, 1:]
    torch.testing.assert_close(feats, ref, atol=1e-6, rtol=1e-6)
    assert (feats - old).norm() / old.norm() > 1e-3  # the former path gives other targets
