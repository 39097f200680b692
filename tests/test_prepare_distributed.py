"""prepare-latents under torchrun: each process encodes a disjoint block, one folder results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import image_folder_of_noise, make_vae
from patchforcing.data import load_dataset, prepare_latents
from patchforcing.data.latents import load_latent_dataset


@pytest.fixture
def images_and_vae(tmp_path):
    """An image folder of 2 classes x 7 images and a tiny AutoencoderKL saved offline."""
    make_vae(tmp_path / "vae")
    return image_folder_of_noise(tmp_path / "images", per_class=7), tmp_path / "vae"


@pytest.mark.slow  # two torchrun processes importing diffusers: about a minute on a busy 2-core machine
def test_two_processes_write_one_folder_like_one_process(images_and_vae, tmp_path, one_thread):
    images, vae = images_and_vae
    one = prepare_latents(str(images), str(vae), str(tmp_path / "one"), resolution=16, batch_size=4, shard_size=3)
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "patchforcing", "prepare-latents", "--data", str(images),
         "--vae", str(vae), "--out", str(tmp_path / "two"), "--resolution", "16", "--batch-size", "4",
         "--shard-size", "3", "--dist-timeout", "120"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    train_shards = meta["shards"]["train"]
    assert {s.split("/")[-1][:10] for s in train_shards} == {"shard-r000", "shard-r001"}  # both ranks wrote
    assert sorted(p.name for p in (tmp_path / "two" / "gen-1" / "train").iterdir()) == sorted(s.split("/")[-1] for s in train_shards)
    for split in ("train", "test"):
        a = load_latent_dataset(one, split=split, lazy=False)
        b = load_dataset(str(tmp_path / "two"), split=split)  # read lazily, shard by shard
        assert torch.equal(a.labels, b.labels), split  # the same images in the same order
        assert torch.allclose(a.images, b.images[:], atol=1e-5), split
    assert meta["num_images"] == json.loads((one / "meta.json").read_text())["num_images"]
