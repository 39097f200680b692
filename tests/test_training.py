"""Training: run folders, exact resume, many processes, failures that name their fix.

Every run uses a tiny network (depth 2, width 32) on the bundled digits and a handful of steps.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import patchforcing as pf
from conftest import image_folder_of_noise, make_vae
from patchforcing.cli import main
from patchforcing.errors import ConfigError, TrainingError
from patchforcing.loss import example_loss
from patchforcing.timesteps import timestep_distribution
from patchforcing.training import PRESETS, TrainConfig, resolve_config
from patchforcing.training.batches import StepBatches

TINY = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "16", "--device", "cpu",
        "--val-size", "32", "--sample-count", "10", "--sample-steps", "2"]
TINY_KW = dict(depth=2, hidden_size=32, num_heads=2, batch_size=16, device="cpu", val_size=32, sample_count=10, sample_steps=2)
QUIET = ["--val-every", "0", "--sample-every", "0"]
METRIC_KEYS = {"step", "loss", "flow_loss", "uncertainty_loss", "lr", "images_per_sec"}

pytestmark = pytest.mark.usefixtures("one_thread")


def run_train(out: Path, *args: str) -> int:
    return main(["train", "--out", str(out), *TINY, *args])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoint(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"step-{step:08d}.pt", weights_only=True)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- a run folder ---------------------------------------------------------------------------------
def test_short_run_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(out, "--steps", "6", "--log-every", "2", "--val-every", "3", "--sample-every", "6", "--ckpt-every", "3") == 0
    assert "trained 6 steps" in capsys.readouterr().out  # the one-line summary

    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 6 and config["timesteps_resolved"] == "ltg"
    assert config["model_config"] == {**config["model_config"], "kind": "patch-forcing", "depth": 2, "hidden_size": 32,
                                      "input_size": 16, "in_channels": 1, "num_classes": 10, "class_dropout_prob": 0.1}

    lines = metrics(out)
    train_lines = [m for m in lines if "loss" in m]
    assert [m["step"] for m in train_lines] == [2, 4, 6] and all(METRIC_KEYS <= m.keys() for m in train_lines)
    val_lines = [m for m in lines if "val_loss" in m]
    assert [m["step"] for m in val_lines] == [3, 6]
    assert all(len(m["val_segments"]) == 8 and m["val_loss"] == pytest.approx(np.mean(m["val_segments"])) for m in val_lines)

    ckpt = checkpoint(out, 6)  # loads with weights_only=True
    assert ckpt["format"] == "patchforcing-train" and ckpt["version"] == 1 and ckpt["step"] == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003.pt", "step-00000006.pt"]
    grid = Image.open(out / "samples" / "step-00000006.png")
    assert grid.mode == "L" and grid.width > 10 * 16  # 10 columns, one per class

    net = pf.load_model(out)  # the newest checkpoint's EMA network
    assert not net.training and same_tensors(net.state_dict(), ckpt["ema"])
    assert not same_tensors(ckpt["model"], ckpt["ema"])


def test_keeps_the_newest_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert run_train(out, *QUIET, "--steps", "5", "--ckpt-every", "1", "--keep-checkpoints", "2") == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004.pt", "step-00000005.pt"]


def test_bf16_autocast_trains(tmp_path):
    out = tmp_path / "run"
    assert run_train(out, *QUIET, "--steps", "2", "--precision", "bf16") == 0
    assert all(v.dtype == torch.float32 for v in checkpoint(out, 2)["model"].values())  # autocast, float32 weights


@pytest.mark.slow
def test_compiled_network_trains_like_the_eager_one(tmp_path):
    args = (*QUIET, "--steps", "3", "--log-every", "1")
    assert run_train(tmp_path / "eager", *args) == 0
    assert run_train(tmp_path / "compiled", *args, "--compile") == 0  # twice: the second run hits torch's caches
    assert run_train(tmp_path / "compiled2", *args, "--compile") == 0
    for name in ("compiled", "compiled2"):
        assert [m["loss"] for m in metrics(tmp_path / name)] == pytest.approx([m["loss"] for m in metrics(tmp_path / "eager")], rel=1e-4)


def test_loss_falls(tmp_path):
    cfg = resolve_config("digits", out=str(tmp_path / "run"), steps=200, log_every=1, lr=1e-3, warmup_steps=20,
                         val_every=0, sample_every=0, ckpt_every=0, **TINY_KW)
    summary = pf.train(cfg)
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert len(losses) == 200 and summary["steps"] == 200
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])


# --- resume ---------------------------------------------------------------------------------------
def test_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    args = (*QUIET, "--log-every", "2", "--ckpt-every", "2", "--lr", "1e-3", "--warmup-steps", "3")
    assert run_train(tmp_path / "whole", *args, "--steps", "8") == 0
    assert run_train(tmp_path / "split", *args, "--steps", "4") == 0
    assert run_train(tmp_path / "split", *args, "--steps", "8") == 0  # the same command, more steps
    assert "resuming" in capsys.readouterr().out
    whole, split = checkpoint(tmp_path / "whole", 8), checkpoint(tmp_path / "split", 8)
    assert same_tensors(whole["model"], split["model"]) and same_tensors(whole["ema"], split["ema"])
    assert same_tensors(whole["optimizer"]["state"][0], split["optimizer"]["state"][0])
    assert [m["step"] for m in metrics(tmp_path / "split")] == [2, 4, 6, 8]  # no duplicated lines
    assert run_train(tmp_path / "split", *args, "--steps", "8") == 0
    assert "nothing to train" in capsys.readouterr().out


def test_worker_processes_draw_the_same_batches(tmp_path):
    args = (*QUIET, "--steps", "3", "--log-every", "3")
    assert run_train(tmp_path / "inline", *args) == 0
    assert run_train(tmp_path / "workers", *args, "--num-workers", "2") == 0
    assert same_tensors(checkpoint(tmp_path / "inline", 3)["model"], checkpoint(tmp_path / "workers", 3)["model"])


def test_resume_refuses_another_network_or_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(out, *QUIET, "--steps", "2") == 0
    assert run_train(out, *QUIET, "--steps", "4", "--hidden-size", "64") == 1
    err = capsys.readouterr().err
    assert "hidden_size: 32 in the run folder, 64 now" in err and "--out" in err
    assert run_train(out, *QUIET, "--steps", "4", "--data", "photos", "--resolution", "16") == 1
    assert "data: 'digits' in the run folder, 'photos' now" in capsys.readouterr().err


def test_corrupt_checkpoint_names_the_file_and_the_fix(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(out, *QUIET, "--steps", "4", "--ckpt-every", "2") == 0
    newest = out / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(b"not a checkpoint" * 10)
    assert run_train(out, *QUIET, "--steps", "6") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(newest) in err and "delete it to resume from the previous checkpoint step-00000002.pt" in err
    newest.unlink()  # the fix the message gives
    assert run_train(out, *QUIET, "--steps", "6") == 0
    assert checkpoint(out, 6)["step"] == 6


# --- failures -------------------------------------------------------------------------------------
def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    import patchforcing.training.step as step

    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = example_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 6:  # step 6 on
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(step, "example_loss", poisoned)  # the loss train_step calls
    cfg = resolve_config("digits", out=str(tmp_path / "run"), steps=12, log_every=3, ckpt_every=4, val_every=0, sample_every=0, **TINY_KW)
    with pytest.raises(TrainingError, match=r"loss became nan at step 6; the last good checkpoint is .*step-00000004\.pt"):
        pf.train(cfg)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000004.pt"]
    net = pf.load_model(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_huge_learning_rate_is_caught(tmp_path, capsys):
    assert run_train(tmp_path / "run", *QUIET, "--steps", "30", "--lr", "1e30", "--warmup-steps", "0", "--log-every", "5") == 1
    err = capsys.readouterr().err
    assert "loss became" in err and "at step" in err and "lower --lr" in err


def test_batch_must_split_over_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="does not split over 2 processes"):
        pf.train(resolve_config("digits", batch_size=15, out="unused"))


# --- configuration and the command line -----------------------------------------------------------
def test_dry_run_prints_the_resolved_config_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dry-run", "--lr", "3e-4", "--model", "SiT-XS/2", "--steps", "1_000"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lr"] == 3e-4 and printed["steps"] == 1000 and printed["timesteps_resolved"] == "uniform"
    assert printed["depth"] is None  # the digits preset's size was meant for PF-XS/2, not for a chosen model
    assert printed["model_config"]["kind"] == "sit" and printed["data_info"]["num_images"] == 1500
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus", "1"], "unrecognized arguments: --bogus"),
        (["--step", "5"], "unrecognized arguments: --step"),  # no abbreviations
        (["--steps", "five"], "steps needs a value of type int, got 'five'"),
    ],
)
def test_bad_flags_are_errors(args, message, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dry-run", *args])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "nope"], "unknown training preset 'nope'; choose one of: digits"),
        (["--model", "PF-Q/2"], "unknown model preset 'PF-Q/2'"),
        (["--model", "SiT-XS/2", "--timesteps", "ltg"], "global-time network"),
        (["--timestep-options", "loc"], "key=value"),
    ],
)
def test_bad_values_are_one_line_errors(args, message, capsys):
    assert main(["train", "--dry-run", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_config_files_toml_and_yaml(tmp_path, capsys):
    (tmp_path / "a.toml").write_text('preset = "digits-sit"\nsteps = 3\nbatch-size = 8\nlr = 3e-4\n')
    (tmp_path / "a.yaml").write_text("steps: 5\nema_decay: 0.99\nresolution: null\n")
    assert main(["train", "--config", str(tmp_path / "a.toml"), "--lr", "1e-3", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["preset"], printed["model"], printed["steps"], printed["batch_size"], printed["lr"]) == ("digits-sit", "SiT-XS/2", 3, 8, 1e-3)
    assert resolve_config(config_file=tmp_path / "a.yaml").ema_decay == 0.99
    (tmp_path / "b.toml").write_text("stepz = 3\n")
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) \['stepz'\]"):
        resolve_config(config_file=tmp_path / "b.toml")


def test_presets_resolve():
    for name in PRESETS:
        assert isinstance(resolve_config(name), TrainConfig)
    xl = resolve_config("imagenet-xl2")
    assert (xl.model, xl.lr, xl.ema_decay, xl.warmup_steps, xl.steps, xl.grad_clip, xl.weight_decay) == ("PF-XL/2", 1e-4, 0.9999, 1000, 400_000, 1.0, 0.0)
    assert xl.timestep_name == "ltg" and resolve_config("imagenet-sit-b2").timestep_name == "uniform"
    assert resolve_config("digits", model="PF-S/2").depth is None and resolve_config("digits").depth is not None


# --- many processes -------------------------------------------------------------------------------
def test_step_batches_split_the_global_batch():
    images, labels = torch.randn(37, 1, 4, 4), torch.arange(37) % 5
    kw = dict(seed=3, batch_size=8, timesteps=timestep_distribution("ltg"), num_patches=4, null_label=5, drop_prob=0.5, global_time=False)
    whole = StepBatches(images, labels, rank=0, world_size=1, **kw)
    parts = [StepBatches(images, labels, rank=r, world_size=2, **kw) for r in (0, 1)]
    for step in (1, 5, 9):  # step 5 crosses an epoch boundary (37 images, 8 per step)
        one, two = whole[step], [p[step] for p in parts]
        for key in ("x1", "x0", "t", "condition"):
            assert torch.equal(getattr(one, key), torch.cat([getattr(b, key) for b in two]))
    seen = torch.cat([whole.indices(s) for s in range(1, 5)])
    assert len(set(seen.tolist())) == 32  # within an epoch no image repeats


def test_two_processes_train_like_one(tmp_path):
    args = ["train", *TINY, *QUIET, "--steps", "4", "--log-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATCHFORCING_PRINT_WEIGHTS_DIGEST": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "patchforcing", *args, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # the two ranks share one stdout pipe, so their lines may run together: match the digests, not lines
    digests = re.findall(r"weights sha256 ([0-9a-f]{64})", done.stdout)
    assert len(digests) == 2 and digests[0] == digests[1]  # both processes hold the same weights
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = checkpoint(tmp_path / "two", 4), checkpoint(tmp_path / "one", 4)
    assert two["world_size"] == 2 and one["world_size"] == 1
    for key in ("model", "ema"):
        for name in one[key]:
            torch.testing.assert_close(two[key][name], one[key][name], atol=1e-5, rtol=1e-4)
    loss_two = [m["loss"] for m in metrics(tmp_path / "two")]
    assert loss_two == pytest.approx([m["loss"] for m in metrics(tmp_path / "one")], rel=1e-5)


# --- other data -----------------------------------------------------------------------------------
def _image_folder(root: Path) -> Path:
    return image_folder_of_noise(root, ("cats", "dogs"), per_class=4, size=(20, 24), broken="cats")


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_folder_with_a_broken_file_trains_and_names_it(tmp_path, capsys):
    folder = _image_folder(tmp_path / "pets")
    out = tmp_path / "run"
    assert run_train(out, "--data", str(folder), "--resolution", "8", "--steps", "2", "--batch-size", "4", "--sample-every", "2") == 0
    assert str(folder / "cats" / "broken.png") in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["in_channels"] == 3 and config["model_config"]["num_classes"] == 2
    assert Image.open(out / "samples" / "step-00000002.png").mode == "RGB"


def test_sit_baseline_trains_with_uniform_times(tmp_path):
    out = tmp_path / "run"
    assert run_train(out, "--preset", "digits-sit", "--steps", "2", "--sample-every", "2", "--val-every", "2") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["timesteps_resolved"] == "uniform" and config["model_config"]["kind"] == "sit"
    assert (out / "samples" / "step-00000002.png").exists() and pf.load_model(out).config.kind.value == "sit"


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_latent_folder_trains(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from patchforcing.data import prepare_latents

    make_vae(tmp_path / "vae")
    latents = prepare_latents(str(_image_folder(tmp_path / "pets")), str(tmp_path / "vae"), str(tmp_path / "lat"), resolution=16, batch_size=4)
    out = tmp_path / "run"
    assert run_train(out, "--data", str(latents), "--steps", "2", "--batch-size", "4", "--sample-every", "1", "--val-every", "2") == 0
    assert "no sample grids" in capsys.readouterr().out and not (out / "samples").exists()
    net = pf.load_model(out)
    assert (net.config.in_channels, net.config.input_size, net.config.num_classes) == (4, 8, 2)
    assert any("val_loss" in m for m in metrics(out))


def test_run_folder_of_an_older_version_resumes(tmp_path):
    """A checkpoint written before a model-config field existed (here the REPA fields) still resumes."""
    out = tmp_path / "run"
    assert run_train(out, *QUIET, "--steps", "2", "--ckpt-every", "2") == 0
    path = out / "checkpoints" / "step-00000002.pt"
    ckpt = torch.load(path, weights_only=True)
    for key in ("repa_dim", "repa_depth", "repa_projector_dim"):
        assert key in ckpt["model_config"]
        del ckpt["model_config"][key]
    torch.save(ckpt, path)
    assert run_train(out, *QUIET, "--steps", "4", "--ckpt-every", "2") == 0
    assert checkpoint(out, 4)["step"] == 4
    # a real difference is still refused
    assert run_train(out, *QUIET, "--steps", "6", "--hidden-size", "64") == 1
