"""Bad input of every kind ends in one clear error that names the fix, before any work is done,
and never costs what was written before it."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch

import patchforcing as pf
from patchforcing import runs
from patchforcing.cli import main
from patchforcing.errors import CheckpointError, ConfigError, DataError, ShapeError, TrainingError
from patchforcing.loss import example_loss
from patchforcing.models import ModelConfig

TRAIN = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "16", "--device", "cpu",
         "--val-every", "0", "--sample-every", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    net = pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2)
    path = tmp_path / "pf.safetensors"
    pf.save_model(net, path)
    return path


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if the network is ever called: errors must come before the work."""
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the error")

    monkeypatch.setattr(pf.PatchForcingTransformer, "forward", refuse)


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


# --- checkpoints and statistics files ---------------------------------------------------------------
def test_empty_checkpoint_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="could not read .*empty.pt.*re-download"):
        pf.load_model(tmp_path / "empty.pt")


@pytest.mark.parametrize("drop", ["model_config", "ema"])
def test_training_checkpoint_without_its_parts(tmp_path, drop):
    net = pf.create_model("PF-XS/2", depth=1, hidden_size=32, num_heads=2)
    obj = {"format": "patchforcing-train", "model_config": net.config.to_dict(), "ema": net.state_dict()}
    del obj[drop]
    torch.save(obj, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=rf"without \['{drop}'\]"):
        pf.load_model(tmp_path / "c.pt")


def test_training_checkpoint_with_weights_that_are_not_tensors(tmp_path):
    net = pf.create_model("PF-XS/2", depth=1, hidden_size=32, num_heads=2)
    ema = {k: v.tolist() for k, v in net.state_dict().items()}
    torch.save({"format": "patchforcing-train", "model_config": net.config.to_dict(), "ema": ema}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"weights \['blocks.0.adaLN_modulation.1.bias', .* are not tensors"):
        pf.load_model(tmp_path / "c.pt")


def test_statistics_file_with_an_object_array(tmp_path):
    from patchforcing.evaluation.frechet import load_statistics

    np.savez(tmp_path / "obj.npz", mu=np.array([1.0, "a"], dtype=object), sigma=np.eye(2))
    with pytest.raises(DataError, match="not plain numeric arrays.*save_statistics"):
        load_statistics(tmp_path / "obj.npz")


def test_a_url_is_not_mangled_into_a_path():
    with pytest.raises(CheckpointError, match=r"'https://example.com/pf-xl2.pt' is a URL; .*download the file first"):
        pf.load_model("https://example.com/pf-xl2.pt")


def _training_checkpoint(run: Path, step: int) -> Path:
    torch.manual_seed(step)
    net = pf.create_model("PF-XS/2", depth=1, hidden_size=32, num_heads=2)
    obj = {"format": "patchforcing-train", "version": 1, "step": step, "model_config": net.config.to_dict(),
           "ema": net.state_dict()}
    return runs.atomic_save(obj, runs.checkpoint_path(run, step))


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_corrupt_newest_checkpoint_names_the_previous_one(tmp_path, capsys, command, no_sampling):
    run = tmp_path / "run"
    good = _training_checkpoint(run, 2)
    _training_checkpoint(run, 4).write_bytes(b"\x80\x02 truncated by a full disk")
    args = ["--sampler", "euler-pf", "--nfe", "4", "--num-samples", "8"] if command == "evaluate" else []
    assert main([command, "--checkpoint", str(run), *args, "--out", str(tmp_path / "o.png")]) == 1
    last = last_error_line(capsys)
    assert f"the previous checkpoint is {good}: pass it instead" in last and "weights_only" not in last
    assert pf.load_model(good).config.depth == 1  # the named file is the good one


# --- the network config --------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("depth", -1), ("depth", 0), ("depth", 2.5), ("hidden_size", 0), ("patch_size", 0), ("num_heads", 0),
    ("input_size", 0), ("in_channels", 0), ("num_classes", -1), ("mlp_ratio", 0.0), ("mlp_ratio", -4.0),
    ("mlp_ratio", float("nan")), ("class_dropout_prob", 1.5), ("class_dropout_prob", -0.1), ("class_dropout_prob", float("nan")), ("learn_sigma", "yes"),
    ("kind", "dit"),
])
def test_every_network_field_is_checked(field, value):
    with pytest.raises(ConfigError, match=field.replace("_", ".") if field != "kind" else "unknown network kind"):
        pf.create_model("PF-XS/2", **{field: value})


def test_valid_edge_values_still_build():
    cfg = ModelConfig(input_size=4, in_channels=1, patch_size=4, hidden_size=4, depth=1, num_heads=1, num_classes=0,
                      class_dropout_prob=0.0, mlp_ratio=0.25)
    velocity, logvar = pf.create_model(cfg)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1), None)
    assert velocity.shape == logvar.shape == (1, 1, 4, 4)


# --- sampling ---------------------------------------------------------------------------------------------
def test_sample_refuses_integer_noise_and_non_finite_guidance(pf_model):
    noise = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ShapeError, match="dtype torch.int64; pass floating-point noise"):
        pf.sample(pf_model, noise.round().long(), sampler="euler-pf", steps=2)
    for scale in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ConfigError, match="cfg_scale must be a finite number"):
            pf.sample(pf_model, noise, sampler="euler-pf", steps=2, labels=torch.tensor([1, 2]), cfg_scale=scale)


@pytest.mark.parametrize("flags, message", [
    (["--num-samples", "-1"], "--num-samples must be at least 1, got -1"),
    (["--num-samples", "0"], "--num-samples must be at least 1, got 0"),
    (["--cfg-scale", "nan"], "--cfg-scale must be a finite number, got nan; 1 turns guidance off"),
    (["--cfg-scale", "inf"], "--cfg-scale must be a finite number, got inf"),
    (["--device", "gpu7"], "unknown device 'gpu7'"),
])
def test_sample_flags_are_checked_before_work(tmp_path, capsys, ckpt, no_sampling, flags, message):
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(ckpt), *flags, "--out", str(out)]) == 1
    assert message in last_error_line(capsys) and not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--cfg-scale", "nan"], "--cfg-scale must be a finite number, got nan"),
    (["--device", "gpu7"], "unknown device 'gpu7'"),
])
def test_evaluate_flags_are_checked_before_work(tmp_path, capsys, ckpt, no_sampling, flags, message):
    argv = ["evaluate", "--checkpoint", str(ckpt), "--sampler", "euler-pf", "--nfe", "4", "--num-samples", "8"]
    assert main([*argv, *flags, "--out", str(tmp_path / "eval")]) == 1
    assert message in last_error_line(capsys)


def test_train_refuses_an_unknown_device_before_creating_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--device", "gpu7", "--steps", "1", "--out", str(out)]) == 1
    assert "unknown device 'gpu7'" in last_error_line(capsys) and not out.exists()


# --- outputs: checked before the work, OS errors as one line -------------------------------------------
@pytest.mark.parametrize("command", ["sample", "evaluate", "train"])
def test_out_below_a_file(tmp_path, capsys, ckpt, no_sampling, command):
    (tmp_path / "file").write_text("keep me")
    below = tmp_path / "file" / "sub"
    argv = {
        "sample": ["sample", "--checkpoint", str(ckpt), "--out", str(below / "grid.png")],
        "evaluate": ["evaluate", "--checkpoint", str(ckpt), "--sampler", "euler-pf", "--nfe", "4", "--num-samples", "8",
                     "--out", str(below)],
        "train": ["train", *TRAIN, "--steps", "1", "--out", str(below)],
    }[command]
    assert main(argv) == 1
    last = last_error_line(capsys)
    assert "a parent of it is a file, not a folder" in last and str(tmp_path / "file") in last and "choose another --out" in last
    assert (tmp_path / "file").read_text() == "keep me"


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "the file system is read-only"), (errno.EACCES, "permission denied"),
                                         (errno.ENOSPC, "the disk is full")])
def test_unwritable_output_is_named_before_sampling(tmp_path, capsys, monkeypatch, ckpt, no_sampling, code, cause):
    def mkstemp(*args, dir=None, **kwargs):
        raise OSError(code, "simulated", dir)

    monkeypatch.setattr(runs.tempfile, "mkstemp", mkstemp)
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out" / "grid.png")]) == 1
    last = last_error_line(capsys)
    assert f"'{tmp_path / 'out'}': {cause}" in last and "choose another --out" in last


def test_full_disk_during_training_keeps_the_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TRAIN, "--steps", "2", "--log-every", "1"]) == 0
    kept = {p: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # what torch 2.13 does on a full disk (seen on a 1 MiB tmpfs)
        real_save(obj, f, *args, **kwargs)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:  # torch raises its RuntimeError while handling the OSError
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 996928 vs 996816") from err

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(["train", "--out", str(out), *TRAIN, "--steps", "4", "--log-every", "1"]) == 1
    last = last_error_line(capsys)
    assert "the disk is full; free some space or write elsewhere" in last and str(out / "checkpoints") in last
    assert {p: p.read_bytes() for p in (out / "checkpoints").iterdir()} == kept  # step 2 intact, no temporary left
    assert [line for line in (out / "metrics.jsonl").read_text().splitlines()]  # the log is still there


# --- training advice ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip, suggests_clip", [("1", False), ("0", True), ("5", True)])
def test_nan_advice_suggests_only_what_changes_something(tmp_path, monkeypatch, clip, suggests_clip):
    import patchforcing.training.step as step
    from patchforcing.training import resolve_config

    def poisoned(*args, **kwargs):
        out = example_loss(*args, **kwargs)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(step, "example_loss", poisoned)  # the loss train_step calls
    cfg = resolve_config("digits", out=str(tmp_path / "run"), steps=2, log_every=1, val_every=0, sample_every=0,
                         depth=1, hidden_size=32, num_heads=2, batch_size=8, device="cpu", grad_clip=float(clip))
    with pytest.raises(TrainingError) as info:
        pf.train(cfg)
    message = str(info.value)
    assert f"lower --lr (now {cfg.lr:g})" in message and f"lengthen --warmup-steps (now {cfg.warmup_steps})" in message
    assert ("set --grad-clip 1" in message) is suggests_clip
