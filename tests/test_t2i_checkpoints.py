"""Reading the reference's text-to-image files and writing our own (docs/method.md §8.9)."""

from __future__ import annotations

import pytest
import torch

import patchforcing as pf
from patchforcing.errors import CheckpointError
from patchforcing.models import PatchForcingT2I
from test_t2i_model import _inputs, make_t2i

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = "patch_flow.models.pf_transformer_t2i.PatchForcingTransformerT2I"
REF_PARAMS = dict(in_dim=4, depth=2, hidden_dim=64, head_dim=16, mapping_dim=32, mapping_depth=2, patch_size=2,
                  txt_in_dim=24, txt_refiner_dim=48, txt_refiner_head_dim=16, txt_refiner_depth=1)


def _outputs(model, x, t, y):
    with torch.no_grad():
        return model(x, t, y)


@pytest.mark.parametrize("layout", ["released", "lightning"])
def test_reference_files_load_with_the_same_outputs(tmp_path, layout):
    model = make_t2i(seed=7)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    config = {"target": TARGET, "params": {**REF_PARAMS, "compile": True}}
    if layout == "released":
        obj = {"config": config, "state_dict": sd}
    else:  # Lightning: the EMA weights are the ones to sample with
        noisy = {k: v + 1.0 for k, v in sd.items()}
        obj = {"state_dict": {**{f"model.{k}": v for k, v in noisy.items()}, **{f"ema_model.{k}": v for k, v in sd.items()}},
               "hyper_parameters": {"model": config}}
    torch.save(obj, tmp_path / "ref.ckpt")
    loaded = pf.load_model(tmp_path / "ref.ckpt")
    assert isinstance(loaded, PatchForcingT2I)
    assert loaded.config.in_channels == 4 and loaded.config.text_encoder == "qwen3-vl-embedding-2b"
    # The random Fourier buffer comes from the file, not from the constructor's draw.
    assert torch.equal(loaded.t_embedder.time_emb.weight, sd["t_embedder.time_emb.weight"])
    x, t, y = _inputs(model)
    want, got = _outputs(model, x, t, y), _outputs(loaded, x, t, y)
    assert torch.equal(got.velocity, want.velocity) and torch.equal(got.logvar, want.logvar)


def test_save_model_records_the_text_encoder_and_round_trips(tmp_path):
    model = make_t2i(seed=8, text_encoder="byte-toy", text_length=16)
    pf.save_model(model, tmp_path / "t2i.safetensors")
    loaded = pf.load_model(tmp_path / "t2i.safetensors")
    assert loaded.config == model.config and loaded.config.text_encoder == "byte-toy"
    x, t, y = _inputs(model)
    assert torch.equal(_outputs(loaded, x, t, y).velocity, _outputs(model, x, t, y).velocity)


def test_reference_file_with_unknown_params_or_wrong_shapes_is_named(tmp_path):
    model = make_t2i()
    torch.save({"config": {"target": TARGET, "params": {**REF_PARAMS, "wibble": 3}}, "state_dict": model.state_dict()}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="wibble"):
        pf.load_model(tmp_path / "a.pt")
    torch.save({"config": {"target": TARGET, "params": {**REF_PARAMS, "txt_in_dim": 32}}, "state_dict": model.state_dict()}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="txt_proj.weight"):
        pf.load_model(tmp_path / "b.pt")
