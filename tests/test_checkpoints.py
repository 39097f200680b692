"""Reading and writing networks: our safetensors files, the authors' released and training layouts,
and clear CheckpointErrors for everything else."""

from __future__ import annotations

import os

import pytest
import torch

import patchforcing as pf
from conftest import make_model, randomize_
from patchforcing import checkpoints
from patchforcing.models import Kind

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
PF_TARGET = "patch_flow.models.pf_transformer.PatchForcingDiT"
DIT_TARGET = "patch_flow.models.dit.DiT"


def _inputs(seed=0, b=2, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g, dtype=F64), torch.rand(b, n, generator=g, dtype=F64), torch.tensor([1, 4])


def _same_outputs(a, b, t_global=False):
    x, t, y = _inputs(n=a.num_patches)
    if t_global:
        t = t[:, 0]
    with torch.no_grad():
        oa, ob = a(x.to(next(a.parameters()).dtype), t, y), b(x.to(next(b.parameters()).dtype), t, y)
    assert torch.equal(oa.velocity, ob.velocity)
    assert (oa.logvar is None) == (ob.logvar is None)
    if oa.logvar is not None:
        assert torch.equal(oa.logvar, ob.logvar)
    assert oa.velocity.abs().max() > 1e-3


def _reference_params(model, **extra):
    c = model.config
    return dict(
        in_channels=c.in_channels,
        input_size=c.input_size,
        depth=c.depth,
        hidden_size=c.hidden_size,
        patch_size=c.patch_size,
        num_heads=c.num_heads,
        num_classes=c.num_classes,
        **extra,
    )


# --- our own format ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["patch-forcing", "sit"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_save_load_round_trip(tmp_path, kind, dtype):
    model = make_model(kind, 4, seed=1, dtype=dtype)
    path = pf.save_model(model, tmp_path / "net.safetensors")
    assert path.exists()
    loaded = pf.load_model(path)
    assert loaded.config == model.config
    assert not loaded.training
    assert next(loaded.parameters()).dtype == dtype
    for k, v in model.state_dict().items():  # bit-exact, float64 included
        assert loaded.state_dict()[k].dtype == v.dtype and torch.equal(loaded.state_dict()[k], v), k
    _same_outputs(model, loaded)


def test_saved_file_is_plain_safetensors_with_config(tmp_path):
    from safetensors import safe_open

    model = make_model("patch-forcing", 2)
    pf.save_model(model, tmp_path / "net.safetensors")
    with safe_open(str(tmp_path / "net.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(model.state_dict())
    assert meta["format"] == "patchforcing-model"
    assert pf.ModelConfig.from_dict(__import__("json").loads(meta["config"])) == model.config


def test_save_leaves_no_temporary_files(tmp_path):
    model = make_model("patch-forcing", 2)
    pf.save_model(model, tmp_path / "a.safetensors")
    pf.save_model(model, tmp_path / "a.safetensors")  # overwrite
    pf.save_model(model, tmp_path / "sub" / "b.safetensors")  # creates the folder
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.safetensors", "b.safetensors"]


def test_failed_save_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import safetensors.torch

    model = make_model("patch-forcing", 2)
    target = tmp_path / "net.safetensors"
    pf.save_model(model, target)
    before = target.read_bytes()

    def boom(state, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        pf.save_model(randomize_(make_model("patch-forcing", 2), seed=9), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.safetensors"]


def test_save_with_pt_suffix_round_trips(tmp_path):
    """save_model writes safetensors whatever the suffix; load_model must read it back (or
    save_model must refuse the suffix). Today a ``.pt`` name gives a file load_model rejects."""
    model = make_model("patch-forcing", 2)
    path = tmp_path / "net.pt"
    try:
        pf.save_model(model, path)
    except (pf.ConfigError, pf.CheckpointError, ValueError):
        return  # refusing a misleading suffix is fine
    _same_outputs(model, pf.load_model(path))


# --- the authors' released layout ------------------------------------------------------------------
def test_released_patch_forcing_file_loads(tmp_path):
    model = make_model("patch-forcing", 2, seed=2, dtype=torch.float32)
    params = _reference_params(model, predict_uncertainty=True, compile=False)
    torch.save({"config": {"target": PF_TARGET, "params": params}, "state_dict": model.state_dict()}, tmp_path / "PF.pt")
    loaded = pf.load_model(tmp_path / "PF.pt")
    assert loaded.config.kind is Kind.PATCH_FORCING and loaded.config.has_difficulty_head
    assert next(loaded.parameters()).dtype == torch.float32
    _same_outputs(model, loaded)


def test_released_file_with_optional_params_and_wrapper_prefixes(tmp_path):
    model = make_model("patch-forcing", 2, seed=3, dtype=torch.float32)
    params = _reference_params(model, mlp_ratio=4.0, class_dropout_prob=0.1, learn_sigma=False, predict_uncertainty=True, compile=True)
    sd = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"config": {"target": PF_TARGET, "params": params}, "state_dict": sd}, tmp_path / "PF.pt")
    _same_outputs(model, pf.load_model(tmp_path / "PF.pt"))


def test_released_sit_file_loads(tmp_path):
    model = make_model("sit", 2, seed=4, dtype=torch.float32)
    params = _reference_params(model, compile=False)
    torch.save({"config": {"target": DIT_TARGET, "params": params}, "state_dict": model.state_dict()}, tmp_path / "SiT.pt")
    loaded = pf.load_model(tmp_path / "SiT.pt")
    assert loaded.config.kind is Kind.SIT and not loaded.config.has_difficulty_head
    _same_outputs(model, loaded, t_global=True)


def test_released_sit_with_learn_sigma_discards_the_extra_channels(tmp_path):
    """learn_sigma: the final linear has p*p*2C outputs laid out (a, b, channel); channels C..2C-1
    are the legacy sigma and are discarded. Build the file from a plain SiT by interleaving junk
    rows for the sigma channels, so the velocity must equal the plain network's exactly."""
    plain = make_model("sit", 2, seed=5, dtype=torch.float32)
    sd = dict(plain.state_dict())
    p, c, d = 2, 3, 32
    w = sd["final_layer.linear.weight"].view(p * p, c, d)
    bias = sd["final_layer.linear.bias"].view(p * p, c)
    junk_w = torch.randn(p * p, c, d, generator=torch.Generator().manual_seed(0))
    junk_b = torch.randn(p * p, c, generator=torch.Generator().manual_seed(1))
    sd["final_layer.linear.weight"] = torch.cat([w, junk_w], dim=1).reshape(p * p * 2 * c, d)
    sd["final_layer.linear.bias"] = torch.cat([bias, junk_b], dim=1).reshape(p * p * 2 * c)
    params = _reference_params(plain, learn_sigma=True, compile=False)
    torch.save({"config": {"target": DIT_TARGET, "params": params}, "state_dict": sd}, tmp_path / "SiT.pt")
    loaded = pf.load_model(tmp_path / "SiT.pt")
    assert loaded.config.learn_sigma and loaded.final_layer.linear.out_features == p * p * 2 * c
    x, t, y = _inputs()
    with torch.no_grad():
        a = plain(x.float(), t[:, 0], y)
        b = loaded(x.float(), t[:, 0], y)
    assert b.logvar is None and b.velocity.shape == (2, 3, 8, 8)
    torch.testing.assert_close(a.velocity, b.velocity, atol=1e-6, rtol=0)


# --- the authors' training layout -------------------------------------------------------------------
def test_training_checkpoint_loads_the_ema_weights(tmp_path):
    ema = make_model("patch-forcing", 2, seed=6, dtype=torch.float32)
    live = make_model("patch-forcing", 2, seed=7, dtype=torch.float32)
    sd = {f"model.{k}": v for k, v in live.state_dict().items()}
    sd.update({f"ema_model.{k}": v for k, v in ema.state_dict().items()})
    sd["first_stage.encoder.weight"] = torch.zeros(3)
    ckpt = {
        "state_dict": sd,
        "hyper_parameters": {"model": {"target": PF_TARGET, "params": _reference_params(ema, predict_uncertainty=True, compile=False)}},
        "optimizer_states": [],
        "epoch": 3,
        "global_step": 1000,
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = pf.load_model(tmp_path / "last.ckpt")
    _same_outputs(ema, loaded)
    x, t, y = _inputs()
    with torch.no_grad():
        assert not torch.equal(loaded(x.float(), t, y).velocity, live(x.float(), t, y).velocity)


def test_training_checkpoint_without_ema_is_an_error(tmp_path):
    live = make_model("patch-forcing", 2, dtype=torch.float32)
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in live.state_dict().items()},
        "hyper_parameters": {"model": {"target": PF_TARGET, "params": _reference_params(live)}},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    with pytest.raises(pf.CheckpointError, match="ema_model"):
        pf.load_model(tmp_path / "last.ckpt")


# --- errors -----------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(pf.CheckpointError, match="no checkpoint") as err:
        pf.load_model(tmp_path / "nope.pt")
    assert "nope.pt" in str(err.value)


def test_text_file(tmp_path):
    (tmp_path / "notes.pt").write_text("this is not a checkpoint\n")
    with pytest.raises(pf.CheckpointError, match="could not read") as err:
        pf.load_model(tmp_path / "notes.pt")
    assert "notes.pt" in str(err.value)


def test_random_bytes(tmp_path):
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    with pytest.raises(pf.CheckpointError):
        pf.load_model(tmp_path / "noise.pt")
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(pf.CheckpointError, match="safetensors"):
        pf.load_model(tmp_path / "noise.safetensors")


@pytest.mark.parametrize(
    "obj, needle",
    [
        ({"weights": torch.zeros(2), "meta": "x"}, "not a checkpoint this project knows"),
        ([torch.zeros(2)], "not a checkpoint dict"),
        ({"config": {"target": "some.other.Model", "params": {}}, "state_dict": {}}, "unknown model target"),
        ({"config": {"params": {}}, "state_dict": {}}, "target"),
        ({"config": {"target": PF_TARGET, "params": {"depth": 2}}, "state_dict": {}}, "lack"),
        (
            {"config": {"target": PF_TARGET, "params": {"predict_uncertainty": False}}, "state_dict": {}},
            "uncertainty",
        ),
    ],
)
def test_foreign_dicts(tmp_path, obj, needle):
    torch.save(obj, tmp_path / "foreign.pt")
    with pytest.raises(pf.CheckpointError, match=needle):
        pf.load_model(tmp_path / "foreign.pt")


def test_unknown_reference_param(tmp_path):
    model = make_model("patch-forcing", 2, dtype=torch.float32)
    params = _reference_params(model, use_rope=True)
    torch.save({"config": {"target": PF_TARGET, "params": params}, "state_dict": model.state_dict()}, tmp_path / "x.pt")
    with pytest.raises(pf.CheckpointError, match="use_rope"):
        pf.load_model(tmp_path / "x.pt")


def test_safetensors_without_our_metadata(tmp_path):
    from safetensors.torch import save_file

    model = make_model("patch-forcing", 2, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(pf.CheckpointError, match="save_model"):
        pf.load_model(tmp_path / "bare.safetensors")


@pytest.mark.parametrize("change", [{"hidden_size": 64, "num_heads": 4}, {"depth": 3}, {"patch_size": 4}, {"num_classes": 7}])
def test_weights_that_do_not_fit_the_config(tmp_path, change):
    model = make_model("patch-forcing", 2, dtype=torch.float32)
    params = {**_reference_params(model), **change}
    torch.save({"config": {"target": PF_TARGET, "params": params}, "state_dict": model.state_dict()}, tmp_path / "x.pt")
    with pytest.raises(pf.CheckpointError, match="do not fit") as err:
        pf.load_model(tmp_path / "x.pt")
    assert "x.pt" in str(err.value)


def test_sit_weights_under_the_patch_forcing_target(tmp_path):
    sit = make_model("sit", 2, dtype=torch.float32)
    torch.save({"config": {"target": PF_TARGET, "params": _reference_params(sit)}, "state_dict": sit.state_dict()}, tmp_path / "x.pt")
    with pytest.raises(pf.CheckpointError, match="final_layer.linear"):
        pf.load_model(tmp_path / "x.pt")


def test_invalid_config_in_file(tmp_path):
    model = make_model("patch-forcing", 2, dtype=torch.float32)
    params = {**_reference_params(model), "patch_size": 3}
    torch.save({"config": {"target": PF_TARGET, "params": params}, "state_dict": model.state_dict()}, tmp_path / "x.pt")
    with pytest.raises(pf.CheckpointError, match="invalid model config"):
        pf.load_model(tmp_path / "x.pt")


def test_known_targets():
    repa = "patch_flow.models.pf_transformer_repa.REPAPatchForcingDiT"
    assert checkpoints.REFERENCE_TARGETS == {PF_TARGET: Kind.PATCH_FORCING, DIT_TARGET: Kind.SIT, repa: Kind.PATCH_FORCING}
