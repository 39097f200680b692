"""REPA in the trainer: flags, metrics, checkpoints, exact resume, and latent data without targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import patchforcing as pf
from conftest import make_vae
from patchforcing.cli import main
from patchforcing.errors import ConfigError
from patchforcing.training import resolve_config

TINY = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "16", "--device", "cpu",
        "--val-every", "0", "--sample-every", "0"]
REPA = ["--repa-encoder", "digits-cnn", "--repa-projector-dim", "16", "--repa-depth", "1", "--repa-weight", "0.5"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _checkpoint(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"step-{step:08d}.pt", weights_only=True)


def test_repa_run_logs_the_loss_and_keeps_the_projector(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, *REPA, "--steps", "4", "--log-every", "2"]) == 0
    lines = _metrics(out)
    assert all("repa_loss" in m and -1.0 <= m["repa_loss"] <= 1.0 for m in lines)
    net = pf.load_model(out)
    assert (net.config.repa_dim, net.config.repa_depth, net.config.repa_projector_dim) == (64, 1, 16)
    ckpt = _checkpoint(out, 4)
    assert ckpt["model"]["projector.0.weight"].shape == (16, 32)
    start = torch.zeros_like(ckpt["model"]["projector.4.weight"])
    assert not torch.equal(ckpt["model"]["projector.4.weight"], start)  # the projector was trained
    config = json.loads((out / "config.json").read_text())
    assert config["repa_encoder"] == "digits-cnn" and config["model_config"]["repa_dim"] == 64


def test_repa_resume_equals_an_uninterrupted_run(tmp_path):
    args = [*TINY, *REPA, "--log-every", "2", "--ckpt-every", "2", "--lr", "1e-3", "--warmup-steps", "2"]
    assert main(["train", "--out", str(tmp_path / "whole"), *args, "--steps", "4"]) == 0
    assert main(["train", "--out", str(tmp_path / "split"), *args, "--steps", "2"]) == 0
    assert main(["train", "--out", str(tmp_path / "split"), *args, "--steps", "4"]) == 0
    whole, split = _checkpoint(tmp_path / "whole", 4), _checkpoint(tmp_path / "split", 4)
    for key in ("model", "ema"):
        assert all(torch.equal(whole[key][k], split[key][k]) for k in whole[key])
    assert [m["repa_loss"] for m in _metrics(tmp_path / "whole")] == [m["repa_loss"] for m in _metrics(tmp_path / "split")]


def test_repa_weight_zero_trains_like_no_repa_on_the_shared_weights(tmp_path):
    """With weight 0 the REPA branch adds no gradient: every weight outside the projector equals a plain run."""
    args = [*TINY, "--steps", "3", "--log-every", "3"]
    assert main(["train", "--out", str(tmp_path / "plain"), *args]) == 0
    zero = [a if a != "0.5" else "0" for a in REPA]
    assert main(["train", "--out", str(tmp_path / "zero"), *args, *zero]) == 0
    plain, repa = _checkpoint(tmp_path / "plain", 3)["model"], _checkpoint(tmp_path / "zero", 3)["model"]
    assert all(torch.equal(plain[k], repa[k]) for k in plain)


def test_repa_flag_errors():
    with pytest.raises(ConfigError, match="repa-encoder"):
        resolve_config("digits", repa_depth=2)
    with pytest.raises(ConfigError, match="repa_weight"):
        resolve_config("digits", repa_encoder="digits-cnn", repa_weight=-1.0)


# --- latent data: features stored beside the latents --------------------------------------------
def test_prepare_latents_stores_repa_features_and_trains_on_them(tmp_path):
    pytest.importorskip("diffusers")
    from patchforcing.data import load_dataset
    from patchforcing.encoders import load_encoder

    make_vae(tmp_path / "vae")
    with_repa = tmp_path / "lat"
    assert main(["prepare-latents", "--data", "digits", "--vae", str(tmp_path / "vae"), "--out", str(with_repa),
                 "--resolution", "16", "--batch-size", "100", "--shard-size", "500", "--repa-encoder", "digits-cnn"]) == 0
    lat = load_dataset(str(with_repa), split="train")
    images = load_dataset("digits", split="train").images
    assert lat.repa_encoder == "digits-cnn" and tuple(lat.repa_features.shape) == (len(images), 64, 64)
    rows = torch.tensor([0, 499, 500, len(images) - 1])  # across shard boundaries, same order as the images
    torch.testing.assert_close(lat.repa_features[rows], load_encoder("digits-cnn")(images[rows]))
    out = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--batch-size", "16")] + ["--batch-size", "8"]
    assert main(["train", "--out", str(out), *tiny, *REPA, "--data", str(with_repa), "--steps", "2", "--log-every", "2"]) == 0
    assert "repa_loss" in _metrics(out)[-1] and pf.load_model(out).config.repa_dim == 64


def test_latents_without_features_name_the_fix(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from patchforcing.data import prepare_latents

    make_vae(tmp_path / "vae", blocks=1)
    plain = prepare_latents("digits", str(tmp_path / "vae"), str(tmp_path / "lat"), resolution=16, batch_size=500, split="train")
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, *REPA, "--data", str(plain), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "no REPA features" in err and "prepare-latents ... --repa-encoder digits-cnn" in err


def test_stored_targets_follow_the_images_over_processes():
    """Each process's REPA targets are the rows of its images: two processes see the one-process batch."""
    from patchforcing.timesteps import timestep_distribution
    from patchforcing.training.batches import StepBatches

    images, labels = torch.randn(37, 1, 4, 4), torch.arange(37) % 5
    features = images.flatten(1)[:, :, None] * torch.arange(3.0)  # (37, 16, 3): row i is a function of image i
    kw = dict(seed=3, batch_size=8, timesteps=timestep_distribution("ltg"), num_patches=4, null_label=5, drop_prob=0.5,
              global_time=False, features=features)
    whole = StepBatches(images, labels, rank=0, world_size=1, **kw)
    parts = [StepBatches(images, labels, rank=r, world_size=2, **kw) for r in (0, 1)]
    for step in (1, 5, 9):
        one = whole[step]
        assert torch.equal(one.repa_target, one.x1.flatten(1)[:, :, None] * torch.arange(3.0))
        assert torch.equal(one.repa_target, torch.cat([p[step].repa_target for p in parts]))
