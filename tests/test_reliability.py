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
from patchforcing.evaluation import parts

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
    from patchforcing.evaluation import generate
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

    monkeypatch.setattr(generate, "run_plan", lambda *a, **k: pytest.fail("a part on disk was made again"))
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


# --- 5. every bad input is one error line that names the fix -----------------------------------------------
def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _bad_safetensors_config(tmp: Path, ckpt: Path) -> str:
    from safetensors.torch import load_file, save_file

    path = tmp / "broken.safetensors"
    save_file(load_file(ckpt), path, metadata={"format": "patchforcing-model", "version": "1", "config": "{truncated"})
    return str(path)


def _pickle_that_runs_code(tmp: Path) -> str:
    import os

    class Runs:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    torch.save({"state_dict": Runs()}, tmp / "evil.pt")
    return str(tmp / "evil.pt")


EVALUATE = ["evaluate", "--sampler", "euler-pf", "--nfe", "2", "--num-samples", "8", "--device", "cpu"]
BAD_INPUTS = {  # name: (argv builder (tmp, ckpt) -> argv, words the one error line must hold)
    "prompts file not UTF-8": (lambda tmp, ck: ["sample", "--checkpoint", str(ck), "--prompts-file",
                                                _write(tmp / "p.txt", b"fine\n\xff\xfe\n"), "--out", str(tmp / "o.png")],
                               "is not UTF-8 text (line 2); save it as UTF-8"),
    "prompt not UTF-8": (lambda tmp, ck: ["sample", "--checkpoint", str(ck), "--prompt", "a \udcff b", "--out", str(tmp / "o.png")],
                         "is not UTF-8 text; type the prompt in a UTF-8 terminal"),
    "config not UTF-8": (lambda tmp, ck: ["train", *TRAIN, "--config", _write(tmp / "c.toml", b"steps = 1\n# \xff\n"),
                                          "--out", str(tmp / "run")], "is not UTF-8 text (byte 12); save it as UTF-8"),
    "safetensors config not JSON": (lambda tmp, ck: ["sample", "--checkpoint", _bad_safetensors_config(tmp, ck), "--out", str(tmp / "o.png")],
                                    "the config in its metadata is not valid JSON"),
    "pickle that runs code": (lambda tmp, ck: ["sample", "--checkpoint", _pickle_that_runs_code(tmp), "--out", str(tmp / "o.png")],
                              "is refused: loading it would run code (its pickle imports posix.system"),
    "plan.json corrupt": (lambda tmp, ck: [*EVALUATE, "--checkpoint", str(ck), "--out",
                                           str(Path(_write(tmp / "e" / "parts" / "plan.json", b"{\x00")).parent.parent)],
                          "plan.json is unreadable or not a JSON object"),
    "beta1 nan": (lambda tmp, ck: ["train", *TRAIN, "--beta1", "nan", "--out", str(tmp / "run")], "beta1 must be a finite number"),
    "beta1 2": (lambda tmp, ck: ["train", *TRAIN, "--beta1", "2", "--out", str(tmp / "run")], "beta1 must lie in [0, 1), got 2.0"),
    "weight decay nan": (lambda tmp, ck: ["train", *TRAIN, "--weight-decay", "nan", "--out", str(tmp / "run")],
                         "weight_decay must be zero or positive, got nan"),
    "REPA with text-to-image": (lambda tmp, ck: ["train", "--preset", "digits-t2i", "--repa-encoder", "digits-cnn", *TRAIN,
                                                 "--out", str(tmp / "run")], "drop --repa-encoder, or choose a PF-* --model"),
    "text length huge": (lambda tmp, ck: ["train", "--preset", "digits-t2i", *TRAIN, "--text-length", "100000000",
                                          "--out", str(tmp / "run")], "text_length must lie in [1, 4096] tokens"),
    "train seed -5": (lambda tmp, ck: ["train", *TRAIN, "--seed", "-5", "--out", str(tmp / "run")], "seed must be an integer in [0, 2^63)"),
    "sample seed -5": (lambda tmp, ck: ["sample", "--checkpoint", str(ck), "--seed", "-5", "--out", str(tmp / "o.png")],
                       "--seed must be an integer in [0, 2^63), got -5"),
    "evaluate seed -5": (lambda tmp, ck: [*EVALUATE, "--checkpoint", str(ck), "--seed", "-5", "--out", str(tmp / "e")],
                         "--seed must be an integer in [0, 2^63), got -5"),
    "huge label": (lambda tmp, ck: ["sample", "--checkpoint", str(ck), "--labels", "99999999999999999999", "--out", str(tmp / "o.png")],
                   "--labels value 99999999999999999999 is not a class"),
    "sample batch size 0": (lambda tmp, ck: ["sample", "--checkpoint", str(ck), "--batch-size", "0", "--out", str(tmp / "o.png")],
                            "--batch-size must be at least 1, got 0"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_naming_the_fix(tmp_path, capsys, ckpt, name):
    build, words = BAD_INPUTS[name]
    argv = build(tmp_path, ckpt)
    capsys.readouterr()
    assert main(argv) != 0
    lines = _error_lines(capsys)
    assert len(lines) == 1 and words in lines[0], lines


@pytest.mark.parametrize("failure", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB. GPU 0 has a total capacity of 139 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB"),
    MemoryError(),
])
def test_out_of_memory_is_one_line_naming_the_flags_that_lower_it(tmp_path, capsys, monkeypatch, ckpt, failure):
    import patchforcing.evaluation.generate

    def exhausted(*args, **kwargs):
        raise failure

    monkeypatch.setattr(patchforcing.evaluation.generate, "run_plan", exhausted)
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.png")]) == 1
    [line] = _error_lines(capsys)
    assert line.startswith("error: out of memory (") and "lower --batch-size" in line and "--num-samples" in line


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path, monkeypatch, ckpt):
    import patchforcing.evaluation.generate

    monkeypatch.setattr(patchforcing.evaluation.generate, "run_plan", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # a bug stays a traceback to report, not advice
        main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.png")])


def _png(path: Path, value: int) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_captions_that_are_not_utf8_or_name_no_file_are_skipped_and_named(tmp_path, capsys):
    import json

    from patchforcing.data import load_dataset

    txt = tmp_path / "txt"
    for i in range(4):
        _png(txt / f"img{i}.png", 40 * i)
        (txt / f"img{i}.txt").write_bytes(b"caption \xff\xfe" if i == 1 else f"caption {i}".encode())
    data = load_dataset(str(txt), resolution=8)
    assert f"{txt / 'img1.txt'}: not UTF-8 text" in capsys.readouterr().out and "caption \ufffd" not in data.captions

    jsonl = tmp_path / "jsonl"
    for i in range(4):
        _png(jsonl / f"{i}.png", 50 * i)
    lines = [json.dumps({"file": f"{i}.png", "caption": f"c{i}"}).encode() for i in range(3)]
    lines += [b'{"file": "3.png", "caption": "\xff"}', json.dumps({"file": "3.png\u0000x", "caption": "nul"}).encode()]
    (jsonl / "captions.jsonl").write_bytes(b"\n".join(lines))
    data = load_dataset(str(jsonl), resolution=8)
    out = capsys.readouterr().out
    assert "captions.jsonl line 4: not UTF-8 text" in out and "captions.jsonl line 5: not a" in out
    assert set(data.captions) <= {"c0", "c1", "c2"}


# --- 6. NaN data gets no learning-rate advice --------------------------------------------------------------
def test_nan_in_the_data_is_named_instead_of_learning_rate_advice(tmp_path, monkeypatch):
    import patchforcing.training.loop as loop
    from patchforcing.errors import TrainingError
    from patchforcing.training import resolve_config

    real = loop.load_dataset

    def poisoned(*args, **kwargs):
        data = real(*args, **kwargs)
        data.images[3] = float("nan")
        return data

    monkeypatch.setattr(loop, "load_dataset", poisoned)
    cfg = resolve_config("digits", out=str(tmp_path / "run"), steps=400, log_every=1, val_every=0, sample_every=0,
                         depth=1, hidden_size=32, num_heads=2, batch_size=64, device="cpu")
    with pytest.raises(TrainingError, match=r"the training data holds NaN or inf values \(rows \[3\] of --data 'digits'\)") as info:
        pf.train(cfg)
    assert "--lr" not in str(info.value)


@pytest.mark.parametrize("flags", [[], ["--show-difficulty"], ["--sampler", "random-look-ahead"]])
def test_sample_draws_in_batches_with_the_same_images(tmp_path, monkeypatch, ckpt, flags):
    import numpy as np
    from PIL import Image

    import patchforcing.evaluation.generate

    real, calls = patchforcing.evaluation.generate.run_plan, []

    def counted(model, noise, *args, **kwargs):
        calls.append(noise.shape[0])
        return real(model, noise, *args, **kwargs)

    monkeypatch.setattr(patchforcing.evaluation.generate, "run_plan", counted)
    args = ["sample", "--checkpoint", str(ckpt), "--num-samples", "7", "--steps", "3", "--labels", "1,2,3,4,5,6,7", *flags]
    assert main([*args, "--out", str(tmp_path / "one.png")]) == 0
    assert main([*args, "--batch-size", "3", "--out", str(tmp_path / "three.png")]) == 0
    assert calls == [7, 3, 3, 1]
    one, three = (np.asarray(Image.open(tmp_path / name)) for name in ("one.png", "three.png"))
    assert np.array_equal(one, three)
