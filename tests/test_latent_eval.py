"""Latent networks are sampled and evaluated through the VAE their run folder records (tiny VAE, offline)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import make_vae
from patchforcing import load_model
from patchforcing.autoencoder import latent_decoder, recorded_latents
from patchforcing.cli import main
from patchforcing.images import to_uint8_nhwc
from patchforcing.sampling import SamplingPlan
from test_latents_lazy import write_folder

SCALE = 0.5  # not the VAE config's 0.18215: sampling must use the latent folder's value
TINY = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "8", "--device", "cpu",
        "--steps", "2", "--val-every", "0", "--sample-every", "0", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """A tiny VAE (16 px images, 4x8x8 latents), a latent folder recording it, a 2-step run on it."""
    root = tmp_path_factory.mktemp("latent-eval")
    vae = make_vae(root / "vae")
    data = write_folder(root / "latents", {"train": [24], "test": [8]}, vae=str(root / "vae"), scale_factor=SCALE,
                        image_resolution=16)
    torch.set_num_threads(1)
    assert main(["train", "--out", str(root / "run"), "--data", str(data), *TINY]) == 0
    return root, vae


def test_the_run_records_the_latent_folders_vae(latent_run):
    root, _ = latent_run
    info = json.loads((root / "run" / "config.json").read_text())["data_info"]
    assert (info["vae"], info["scale_factor"], info["shift_factor"]) == (str(root / "vae"), SCALE, 0.0)
    ckpt = next((root / "run" / "checkpoints").glob("step-*.pt"))
    assert recorded_latents(ckpt) == recorded_latents(root / "run") == {"vae": str(root / "vae"),
                                                                         "scale_factor": SCALE, "shift_factor": 0.0}
    decoder = latent_decoder(root / "run")
    assert decoder.scale_factor == SCALE and latent_decoder(root / "run", scale_factor=2.0).scale_factor == 2.0


def test_evaluate_decodes_and_writes_an_rgb_npz(latent_run, tmp_path):
    root, vae = latent_run
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(root / "run"), "--sampler", "euler-pf", "--nfe", "2",
                 "--num-samples", "6", "--batch-size", "4", "--device", "cpu", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decoder"] == {"vae": str(root / "vae"), "scale_factor": SCALE, "shift_factor": 0.0}
    assert metrics["fid"] is None and "decoded latents" in metrics["not_computed"]["fid"]
    with np.load(out / "samples.npz") as f:
        pixels, labels = f["arr_0"], f["arr_1"]
    assert pixels.shape == (6, 16, 16, 3) and pixels.dtype == np.uint8 and labels.shape == (6,)
    # The same images by hand: the library's latents (seeds 0..5) decoded with the folder's scale.
    from patchforcing.evaluation.generate import generate_images

    _, latents, _, _ = generate_images(load_model(root / "run"), SamplingPlan("euler-pf", 2), num_samples=6, seed=0)
    with torch.no_grad():
        by_hand = vae.decode(latents / SCALE).sample.clamp(-1, 1)  # (6, 3, 16, 16)
    assert np.array_equal(pixels, to_uint8_nhwc(by_hand))


def test_latents_without_a_vae_and_misused_stats_are_errors(latent_run, tmp_path, capsys):
    root, _ = latent_run
    lone = tmp_path / "lone.pt"
    shutil.copy(next((root / "run" / "checkpoints").glob("step-*.pt")), lone)  # no run folder around it
    args = ["evaluate", "--sampler", "euler-pf", "--nfe", "2", "--num-samples", "6", "--device", "cpu"]
    assert main([*args, "--checkpoint", str(lone), "--out", str(tmp_path / "a")]) == 1
    assert "--vae" in capsys.readouterr().err
    assert main([*args, "--checkpoint", str(lone), "--vae", str(root / "vae"), "--out", str(tmp_path / "b")]) == 0
    assert main([*args, "--checkpoint", str(root / "run"), "--stats", str(tmp_path / "ref.npz"),
                 "--out", str(tmp_path / "c")]) == 1
    assert "drop --stats" in capsys.readouterr().err
