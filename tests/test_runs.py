"""Run folders: checkpoint names, one owner per folder (an OS lock), durable atomic writes with
normal permissions, and clean-up of what a killed writer left behind."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import patchforcing as pf
from patchforcing import runs
from patchforcing.cli import main
from patchforcing.errors import CheckpointError, ConfigError, RunFolderError

TINY = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "16", "--device", "cpu",
        "--val-every", "0", "--sample-every", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- checkpoint names -----------------------------------------------------------------------------
def test_checkpoint_names_sort_by_step_and_skip_temporaries(tmp_path):
    for step in (3, 12, 100_000_000):  # the 9-digit step still sorts after the 8-digit ones
        runs.checkpoint_path(tmp_path, step).parent.mkdir(parents=True, exist_ok=True)
        runs.checkpoint_path(tmp_path, step).write_bytes(b"x")
    (tmp_path / "checkpoints" / ".step-00000020.pt.pf-tmp-abcd1234").write_bytes(b"half")
    (tmp_path / "checkpoints" / "step-notanumber.pt").write_bytes(b"x")
    found = runs.list_checkpoints(tmp_path)
    assert [runs.checkpoint_step(p) for p in found] == [3, 12, 100_000_000]
    assert runs.newest_step(tmp_path) == 100_000_000
    assert runs.previous_checkpoint(found[-1]) == found[1] and runs.previous_checkpoint(found[0]) is None
    assert runs.newest_step(tmp_path / "empty") is None
    with pytest.raises(CheckpointError, match="without checkpoints/step"):
        runs.newest_checkpoint(tmp_path / "empty")


# --- atomic writes ----------------------------------------------------------------------------------
def test_files_get_normal_permissions(tmp_path, umask_022, pf_model):
    from patchforcing.evaluation.evaluate import save_samples_npz
    from patchforcing.evaluation.frechet import save_statistics

    written = [
        runs.atomic_save({"a": torch.zeros(2)}, tmp_path / "ckpt.pt"),
        pf.save_model(pf_model, tmp_path / "model.safetensors"),
        runs.atomic_write_text(tmp_path / "config.json", "{}\n"),
        save_samples_npz(tmp_path / "samples.npz", np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int64)),
    ]
    save_statistics(tmp_path / "stats.npz", np.zeros(2), np.eye(2))
    for path in [*written, tmp_path / "stats.npz"]:
        assert _mode(Path(path)) == 0o644, path
    os.umask(0o077)  # a stricter umask is honoured too
    assert _mode(runs.atomic_write_text(tmp_path / "private.json", "{}")) == 0o600


def test_training_writes_files_with_normal_permissions(tmp_path, umask_022):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--steps", "2", "--log-every", "1"]) == 0
    assert main(["train", "--out", str(out), *TINY, "--steps", "3", "--log-every", "1"]) == 0  # resume rewrites metrics
    for path in (out / "config.json", out / "metrics.jsonl", out / "checkpoints" / "step-00000003.pt"):
        assert _mode(path) == 0o644, path


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(runs.os, "fsync", fsync)
    monkeypatch.setattr(runs.os, "replace", replace)
    runs.atomic_save({"step": 1}, tmp_path / "c.pt")
    assert events == ["fsync-file", "rename", "fsync-dir"]
    assert torch.load(tmp_path / "c.pt", weights_only=True) == {"step": 1}


def test_stale_temporaries_are_removed_at_the_next_start(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--steps", "2"]) == 0
    stale = [out / "checkpoints" / ".step-00000004.pt.pf-tmp-k1x2ab3c", out / ".config.json.pf-tmp-zz9zz9zz"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = out / "checkpoints" / ".hidden-but-not-ours"
    users_tmp = out / ".notes.txt.tmp"  # hidden and ending in .tmp, but not named like ours
    users_tmp.write_bytes(b"mine")
    keep.write_bytes(b"x")
    assert runs.newest_step(out) == 2  # a temporary is never taken for a checkpoint
    assert main(["train", "--out", str(out), *TINY, "--steps", "3"]) == 0
    assert "removed 2 temporary file(s) of interrupted writes" in capsys.readouterr().out
    assert not any(p.exists() for p in stale) and keep.exists() and runs.newest_step(out) == 3
    assert users_tmp.read_bytes() == b"mine"


# --- one owner per run folder -----------------------------------------------------------------------
def test_a_locked_folder_refuses_a_second_owner_until_released(tmp_path):
    first = runs.lock_run_folder(tmp_path / "run")
    with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()} on "):
        runs.lock_run_folder(tmp_path / "run")
    first.release()
    runs.lock_run_folder(tmp_path / "run").release()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        runs.lock_run_folder(tmp_path / "file")


_HOLD = "import sys, time; from patchforcing import runs; runs.lock_run_folder(sys.argv[1]); print('locked', flush=True); time.sleep(60)"


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_training_into_a_busy_folder_stops_and_loses_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--steps", "2", "--log-every", "1"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != runs.LOCK_FILE}
    holder = _holder(out)
    try:
        assert main(["train", "--out", str(out), *TINY, "--steps", "4", "--log-every", "1"]) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{out} is in use by another run (pid {holder.pid} on" in last and "choose another --out" in last
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != runs.LOCK_FILE}
        assert after == before  # no metrics line, checkpoint or config was touched
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_owner_releases_the_folder(tmp_path):
    holder = _holder(tmp_path / "run")
    with pytest.raises(RunFolderError):
        runs.lock_run_folder(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    deadline = time.time() + 10
    while True:  # the kernel drops the lock with the process
        try:
            runs.lock_run_folder(tmp_path / "run").release()
            break
        except RunFolderError:
            assert time.time() < deadline
            time.sleep(0.05)
    assert json.loads((tmp_path / "run" / runs.LOCK_FILE).read_text())["pid"] == os.getpid()  # it names its last holder


@pytest.mark.slow
def test_torchrun_ranks_all_stop_on_a_busy_folder(tmp_path):
    """Rank 0 holds the lock for its job; when it cannot, every rank exits with the same error (none hangs)."""
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        torchrun = Path(sys.executable).parent / "torchrun"
        done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "patchforcing", "train",
                               *TINY, "--steps", "2", "--out", str(out)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    assert done.stderr.count(f"error: {out} is in use by another run (pid {holder.pid} on") == 2
    assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_FILE]  # nothing was written


def test_a_short_safetensors_write_is_an_error_and_keeps_the_old_file(tmp_path, monkeypatch, pf_model):
    import safetensors.torch

    path = pf.save_model(pf_model, tmp_path / "model.safetensors")
    old = path.read_bytes()
    real_save_file = safetensors.torch.save_file

    def short(tensors, filename, metadata=None):  # a writer that lost its last buffer without an error
        real_save_file(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) - 16)

    monkeypatch.setattr(safetensors.torch, "save_file", short)
    with pytest.raises(OSError, match="short write"):
        pf.save_model(pf_model, path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


# --- the run folder's paths ------------------------------------------------------------------------
def test_run_folder_names_every_path_of_the_layout(tmp_path):
    folder = runs.RunFolder(tmp_path / "run")
    root = tmp_path / "run"
    assert (folder.config, folder.metrics, folder.samples, folder.lock, folder.checkpoints, folder.model_file) == (
        root / "config.json", root / "metrics.jsonl", root / "samples", root / "run.lock", root / "checkpoints",
        root / "model.safetensors")
    assert folder.sample_grid(12) == root / "samples" / "step-00000012.png"
    assert folder.checkpoint(12) == runs.checkpoint_path(root, 12) == root / "checkpoints" / "step-00000012.pt"
    assert not root.exists()  # naming creates nothing


def test_run_folder_is_found_from_a_checkpoint_and_needs_more_than_a_config(tmp_path):
    root = tmp_path / "run"
    folder = runs.RunFolder(root)
    folder.checkpoints.mkdir(parents=True)
    ckpt = folder.checkpoint(3)
    ckpt.write_bytes(b"")
    assert [f.path for f in runs.RunFolder.around(ckpt)] == [folder.checkpoints, root]
    assert [f.path for f in runs.RunFolder.around(root)] == [root, tmp_path, tmp_path.parent]
    assert not folder.is_run()  # no config.json yet
    folder.config.write_text("{}")
    assert folder.is_run()
    other = runs.RunFolder(tmp_path / "exported")
    other.path.mkdir()
    other.config.write_text("{}")  # a config.json alone (an exported component) is no run folder
    assert not other.is_run()
