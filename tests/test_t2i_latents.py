"""Latent preparation keeps the captions of captioned data, and text networks train on them."""

from __future__ import annotations

import json

import pytest
import torch

import patchforcing as pf
from conftest import make_vae
from patchforcing.data import load_dataset, prepare_latents
from patchforcing.data.captions import CaptionedDataset
from patchforcing.training import resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def caption_latents(tmp_path_factory):
    pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("lat")
    make_vae(root / "vae")
    out = prepare_latents("digits-captions", str(root / "vae"), str(root / "latents"), resolution=16, batch_size=256, shard_size=700)
    return out


def test_captions_survive_latent_preparation_in_row_order(caption_latents):
    meta = json.loads((caption_latents / "meta.json").read_text())
    assert meta["captions"] is True and len(meta["shards"]["train"]) == 3  # 1500 rows in shards of 700
    for split in ("train", "test"):
        lat, pix = load_dataset(str(caption_latents), split=split), load_dataset("digits-captions", split=split)
        assert isinstance(lat, CaptionedDataset) and lat.captions == pix.captions
        assert torch.equal(lat.labels, pix.labels)


def test_a_text_network_trains_on_captioned_latents(caption_latents, tmp_path):
    cfg = resolve_config("digits-t2i", data=str(caption_latents), out=str(tmp_path / "run"), steps=2, batch_size=8, depth=1,
                         hidden_size=32, num_heads=1, val_every=0, sample_every=0, device="cpu")
    pf.train(cfg)
    net = pf.load_model(tmp_path / "run")
    assert (net.config.in_channels, net.config.input_size) == (4, 8)
