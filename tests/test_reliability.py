"""Reliability: locks never follow links, resumed evaluations never mix networks, hostile files are
refused before memory is spent, and temporaries of the user are never deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import patchforcing as pf
from patchforcing import runs
from patchforcing.evaluation import parts
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


# --- 2. a resumed evaluation never mixes networks -------------------------------------------------------
def _tiny_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2).eval()


EVAL = dict(sampler="euler-pf", nfe=2, num_samples=8, batch_size=8)


def test_parts_of_other_weights_are_refused_and_the_same_weights_resume(tmp_path, monkeypatch):
    from patchforcing.errors import ConfigError
    from patchforcing.evaluation import parts
    from patchforcing.evaluation.evaluate import evaluate_model

    net, folder = _tiny_net(0), tmp_path / "parts"
    first = evaluate_model(net, parts_dir=folder, **EVAL)
    plan = (folder / "plan.json").read_text()
    assert pf.checkpoints.network_digest(net) in plan and '"guide_network": null' in plan

    with torch.no_grad():  # the run trained on: same config, other weights
        next(net.parameters()).add_(0.01)
    with pytest.raises(ConfigError, match=r"holds parts of another evaluation, never mixed .*network: sha256 \w{12}\.\.\. "
                                          r"there, sha256 \w{12}\.\.\. now\); delete .*parts to start over, or use a new --out"):
        evaluate_model(net, parts_dir=folder, **EVAL)
    with pytest.raises(ConfigError, match="guide_network: None there, sha256"):
        evaluate_model(_tiny_net(0), parts_dir=folder, guide_model=_tiny_net(1), **EVAL)

    monkeypatch.setattr(parts, "generate_images", lambda *a, **k: pytest.fail("a part on disk was made again"))
    again = evaluate_model(_tiny_net(0), parts_dir=folder, **EVAL)  # the same weights, another object: resumes
    assert again["fid"] == first["fid"]


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / "plan.json").write_text("{not json"), r"plan.json is unreadable or not a JSON object .*delete"),
    (lambda folder: (folder / "plan.json").write_text("[1, 2]"), r"plan.json is unreadable or not a JSON object .*delete"),
    (lambda folder: parts.part_path(folder, 0).write_bytes(b""), r"cannot read .*part-000000.npz .*delete it and rerun"),
    (lambda folder: parts.part_path(folder, 0).write_bytes(parts.part_path(folder, 0).read_bytes()[:300]),
     r"cannot read .*part-000000.npz \(BadZipFile.*delete it and rerun"),
])
def test_damaged_parts_are_named_with_the_fix(tmp_path, damage, message):
    from patchforcing.errors import DataError
    from patchforcing.evaluation.evaluate import evaluate_model

    folder = tmp_path / "parts"
    evaluate_model(_tiny_net(0), parts_dir=folder, **EVAL)
    damage(folder)
    with pytest.raises(DataError, match=message):
        evaluate_model(_tiny_net(0), parts_dir=folder, **EVAL)


# --- 6. non-finite samples are never scored ----------------------------------------------------------------
@pytest.mark.parametrize("in_parts", [False, True])
def test_an_all_nan_network_gets_no_metrics(tmp_path, in_parts):
    from patchforcing.errors import CheckpointError
    from patchforcing.evaluation.evaluate import evaluate_model

    net = _tiny_net(0)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="8 of 8 samples hold NaN or inf .*evaluate an earlier checkpoint"):
        evaluate_model(net, parts_dir=tmp_path / "parts" if in_parts else None, **EVAL)
