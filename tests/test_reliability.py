"""Reliability: locks never follow links, resumed evaluations never mix networks, hostile files are
refused before memory is spent, and temporaries of the user are never deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import patchforcing as pf
from patchforcing import runs
from patchforcing.cli import main
from patchforcing.errors import RunFolderError

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "8", "--device", "cpu",
         "--val-every", "0", "--sample-every", "0", "--steps", "1"]


@pytest.fixture
def ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    net = pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2)
    return pf.save_model(net, tmp_path / "pf.safetensors")


def _error_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return [line for line in captured.err.splitlines() if line.startswith("error: ")]


# --- 1. the lock never follows a symbolic link ----------------------------------------------------------
def _command(name: str, out: Path, ckpt: Path) -> list[str]:
    return {
        "train": ["train", *TRAIN, "--out", str(out)],
        "evaluate": ["evaluate", "--checkpoint", str(ckpt), "--sampler", "euler-pf", "--nfe", "4", "--num-samples", "8",
                     "--device", "cpu", "--out", str(out)],
        "bench": ["bench", "--out", str(out)],
        "demo": ["demo", "--out", str(out)],
    }[name]


@pytest.mark.parametrize("command", ["train", "evaluate", "bench", "demo"])
def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path, capsys, ckpt, command):
    out, victim = tmp_path / "r1", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n")
    (out / runs.LOCK_FILE).symlink_to(victim)
    assert main(_command(command, out, ckpt)) == 1
    [line] = _error_lines(capsys)
    assert f"{out / runs.LOCK_FILE} is a symbolic link" in line and "without following links" in line
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_FILE]  # nothing else was written


def test_a_dangling_lock_link_creates_nothing(tmp_path):
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runs.LOCK_FILE).symlink_to(target)
    with pytest.raises(RunFolderError, match="is a symbolic link; .*remove the link"):
        runs.lock_run_folder(tmp_path / "run")
    assert not target.exists()


def test_a_plain_lock_file_is_still_taken_and_released(tmp_path):
    with runs.lock_run_folder(tmp_path / "run") as lock:
        assert lock.run_dir == tmp_path / "run" and (tmp_path / "run" / runs.LOCK_FILE).is_file()
    runs.lock_run_folder(tmp_path / "run").release()


# --- 6. only this project's temporaries are cleaned ---------------------------------------------------
def test_only_temporaries_named_by_this_project_are_removed(tmp_path):
    written = runs.atomic_write_text(tmp_path / "a.json", "{}")
    ours = tmp_path / f".a.json{runs.TEMPORARY_TAG}k1x2ab3c"
    users = [tmp_path / ".notes.tmp", tmp_path / ".draft.txt.abc.tmp", tmp_path / ".a.json.pf-tmp-short"]
    for path in [ours, *users]:
        path.write_text("x")
    assert runs.remove_stale_temporaries(tmp_path) == [ours]
    assert all(p.exists() for p in users) and written.read_text() == "{}"


def test_atomic_write_names_its_temporary_so_it_can_be_recognised(tmp_path):
    seen = []
    runs.atomic_write(tmp_path / "x.bin", lambda tmp: (seen.append(tmp), Path(tmp).write_bytes(b"1")))
    assert runs.is_temporary(seen[0]) and Path(seen[0]).name.startswith(f".x.bin{runs.TEMPORARY_TAG}")


# --- 4. a config that claims a huge network is refused before anything is built ---------------------------
def test_a_small_file_claiming_a_huge_network_fails_fast(tmp_path, monkeypatch, ckpt):
    import json

    from safetensors.torch import load_file, save_file

    from patchforcing import checkpoints
    from patchforcing.errors import CheckpointError

    config = {**pf.load_model(ckpt).config.to_dict(), "hidden_size": 16384, "depth": 48, "num_heads": 16}
    path = tmp_path / "huge.safetensors"
    save_file(load_file(ckpt), path, metadata={"format": checkpoints.FORMAT, "version": "1", "config": json.dumps(config)})
    real_build = checkpoints.build_model

    def build_on_meta_only(cfg):  # any real (allocating) build of the claimed network fails the test
        assert torch.empty(0).device.type == "meta", "a network was built in memory before the shapes were checked"
        return real_build(cfg)

    monkeypatch.setattr(checkpoints, "build_model", build_on_meta_only)
    with pytest.raises(CheckpointError, match=r"huge.safetensors'.*do not fit the config .*shape mismatch .*16384"):
        pf.load_model(path)
