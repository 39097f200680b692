"""`evaluate_model` / `patchforcing evaluate`: NFE budgets, seeded results, data parallelism, errors.

The tiny network is saved in float64 so that images do not change by one uint8 level when the
batch composition (batch size, number of processes, BLAS kernel) changes float32 rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import patchforcing as pf
from patchforcing import runs
from patchforcing.cli import main
from patchforcing.data import load_dataset
from patchforcing.errors import ConfigError, ShapeError
from patchforcing.evaluation.conditions import ClassLabels
from patchforcing.evaluation.evaluate import EvalSpec, check_evaluation, evaluate_model, validation_report
from patchforcing.images import save_grid as save_image_grid
from patchforcing.images import to_uint8_nhwc
from patchforcing.sampling import noise_for_seeds

REQUIRED_KEYS = {"fid", "precision", "recall", "nfe", "nfe_budget", "steps", "num_samples", "sampler",
                 "cfg_scale", "seed", "accuracy", "seconds"}
REPO = Path(__file__).resolve().parents[1]


def _perturbed(preset: str, seed: int = 0) -> pf.PatchForcingTransformer:
    """A 1x16x16, 10-class network with every weight nudged (a fresh one outputs exactly zero)."""
    torch.manual_seed(seed)
    net = pf.create_model(preset, depth=2, hidden_size=32, num_heads=2).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "pos_embed":
                scale = 1.0 if name.startswith("t_embedder.mlp.0") else 0.1  # make time visible
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "pf.safetensors"
    pf.save_model(_perturbed("PF-XS/2"), path)
    return path


@pytest.fixture(scope="module")
def net(ckpt) -> pf.PatchForcingTransformer:
    return pf.load_model(ckpt)


def _plan_evaluation(net, *, sampler: str, nfe: int, num_samples: int, **options) -> tuple[int, int]:
    """The steps and NFE of a budget, after every check an evaluation makes before sampling."""
    plan = pf.SamplingPlan.from_nfe(sampler, nfe, **options)
    check_evaluation(net, plan, EvalSpec(num_samples))
    return plan.steps, plan.nfe


def _run(*argv: str) -> int:
    return main(["evaluate", *map(str, argv)])


# --- NFE budgets -------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", list(pf.SAMPLERS))
def test_budget_gives_the_most_steps_that_fit(net, sampler):
    for budget in range(1, 25):
        one_step = pf.expected_nfe(sampler, 1)
        if one_step > budget:
            with pytest.raises(ConfigError, match="budget of"):
                _plan_evaluation(net, sampler=sampler, nfe=budget, num_samples=8)
            continue
        steps, used = _plan_evaluation(net, sampler=sampler, nfe=budget, num_samples=8)
        assert used == pf.expected_nfe(sampler, steps) <= budget
        assert pf.expected_nfe(sampler, steps + 1) > budget  # maximal


def test_budget_16_examples(net):
    assert _plan_evaluation(net, sampler="euler-pf", nfe=16, num_samples=8) == (16, 16)
    assert _plan_evaluation(net, sampler="dual-loop", nfe=16, num_samples=8) == (4, 16)  # K = 4
    assert _plan_evaluation(net, sampler="dual-loop", nfe=16, num_samples=8, n_inner=2) == (8, 16)
    # look-ahead: the warm-up step (t_0 = 0 <= 0.05) costs 1 NFE, every other step 2.
    steps, used = _plan_evaluation(net, sampler="look-ahead", nfe=16, num_samples=8)
    assert steps in (8, 9) and used == 1 + 2 * (steps - 1) <= 16


@pytest.mark.parametrize("sampler", list(pf.SAMPLERS))
def test_reported_nfe_is_the_counted_network_calls(net, sampler, one_thread):
    calls = []
    hook = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = evaluate_model(net, sampler=sampler, nfe=16, num_samples=4, batch_size=4)
    finally:
        hook.remove()
    steps, used = _plan_evaluation(net, sampler=sampler, nfe=16, num_samples=4)
    assert len(calls) == result["nfe"] == used <= 16  # one batch: calls per image == calls
    assert result["steps"] == steps and result["nfe_budget"] == 16 and result["sampler"] == sampler


def test_guidance_counts_one_call_per_evaluation(net, one_thread):
    calls = []
    hook = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = evaluate_model(net, sampler="dual-loop", nfe=9, num_samples=4, batch_size=4, cfg_scale=2.0)
    finally:
        hook.remove()
    assert len(calls) == result["nfe"] == 8 and result["steps"] == 2 and result["cfg_scale"] == 2.0


# --- end to end --------------------------------------------------------------------------------
def test_cli_writes_metrics_grid_and_npz(ckpt, net, tmp_path, one_thread):
    out = tmp_path / "eval"
    assert _run("--checkpoint", ckpt, "--sampler", "euler-pf", "--nfe", 3, "--num-samples", 104, "--seed", 7,
                "--save-npz", "--device", "cpu", "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(metrics)
    assert (metrics["nfe"], metrics["steps"], metrics["num_samples"], metrics["seed"]) == (3, 3, 104, 7)
    assert all(np.isfinite(metrics[k]) for k in ("fid", "precision", "recall", "accuracy"))
    with np.load(out / "samples.npz") as f:
        pixels, labels = f["arr_0"], f["arr_1"]
    assert pixels.shape == (104, 16, 16, 3) and pixels.dtype == np.uint8  # gray replicated to RGB (ADM)
    assert np.array_equal(labels, ClassLabels.balanced(104, 10, 7).targets.numpy())
    lib = evaluate_model(net, sampler="euler-pf", nfe=3, num_samples=104, seed=7, return_images=True)
    assert np.array_equal(pixels, np.repeat(lib["images_uint8"], 3, axis=-1))  # the CLI only wraps the library
    assert metrics["fid"] == pytest.approx(lib["fid"], abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(lib["accuracy"])
    first100 = torch.from_numpy(pixels[:100]).permute(0, 3, 1, 2).double() / 127.5 - 1  # (100, 1, 16, 16)
    save_image_grid(first100, tmp_path / "first100.png", ncols=10)
    assert np.array_equal(np.asarray(Image.open(out / "samples.png")), np.asarray(Image.open(tmp_path / "first100.png")))


def test_results_do_not_depend_on_batch_size(net, one_thread):
    kw = dict(sampler="look-ahead", nfe=6, num_samples=12, seed=3, return_images=True)
    a = evaluate_model(net, batch_size=12, **kw)
    b = evaluate_model(net, batch_size=5, **kw)
    assert np.array_equal(a["images_uint8"], b["images_uint8"])
    assert a["fid"] == pytest.approx(b["fid"], abs=1e-9) and a["recall"] == b["recall"]
    assert len({img.tobytes() for img in a["images_uint8"]}) == 12  # one seed per image: all differ
    # Image i is the sampler's output for noise seed 3 + i and label labels[i], whatever the batch.
    for i in (0, 7, 11):
        noise = noise_for_seeds([3 + i], (1, 16, 16), dtype=torch.float64)
        x = pf.sample(net, noise, sampler="look-ahead", steps=a["steps"], labels=a["labels"][i:i + 1])
        assert np.array_equal(to_uint8_nhwc(x)[0], a["images_uint8"][i])


@pytest.mark.parametrize("sampler", ["random-dual-loop", "random-look-ahead"])
def test_random_masks_do_not_depend_on_batch_size(net, one_thread, sampler):
    kw = dict(sampler=sampler, nfe=8, num_samples=10, seed=1, return_images=True)
    a = evaluate_model(net, batch_size=10, **kw)
    b = evaluate_model(net, batch_size=3, **kw)
    assert np.array_equal(a["images_uint8"], b["images_uint8"])


def test_two_processes_equal_one(ckpt, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    args = ["--checkpoint", ckpt, "--sampler", "dual-loop", "--nfe", 8, "--num-samples", 10, "--batch-size", 4,
            "--save-npz", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in (1, 2):
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(n), "-m", "patchforcing", "evaluate",
               *map(str, args), "--out", str(tmp_path / f"n{n}")]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"n{n}" / "metrics.json").read_text()) for n in (1, 2))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["fid"] == pytest.approx(one["fid"], abs=1e-6)
    assert (two["precision"], two["recall"], two["accuracy"]) == (one["precision"], one["recall"], one["accuracy"])
    with np.load(tmp_path / "n1" / "samples.npz") as a, np.load(tmp_path / "n2" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


# --- held-out diagnostics ----------------------------------------------------------------------
def test_calibration_and_validation_loss(ckpt, net, tmp_path, one_thread):
    out = tmp_path / "eval"
    assert _run("--checkpoint", ckpt, "--sampler", "euler-pf", "--nfe", 2, "--num-samples", 8,
                "--calibration", "--val-loss", "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["t"] for row in metrics["calibration"]] == [0.2, 0.4, 0.6, 0.8]
    assert all(-1 <= row["spearman"] <= 1 and row["num_patches"] == 297 * 64 for row in metrics["calibration"])
    assert len(metrics["val_loss_segments"]) == 8
    assert metrics["val_loss"] == pytest.approx(np.mean(metrics["val_loss_segments"]))
    # Same as the validation loss of docs/method.md §4.4 over the whole test split at once, with noise seed i for image i.
    test = load_dataset("digits", split="test")
    x0 = noise_for_seeds(range(len(test)), (1, 16, 16), dtype=torch.float64)
    mean, per_segment = pf.validation_loss(net, test.images.double(), x0=x0, labels=test.labels)
    assert metrics["val_loss_segments"] == pytest.approx(per_segment.tolist(), rel=1e-9)
    assert validation_report(net, batch_size=50)["val_loss"] == pytest.approx(float(mean), rel=1e-9)


# --- one evaluation per output folder ----------------------------------------------------------
def test_a_second_evaluation_into_a_busy_folder_stops_before_writing(ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    with runs.lock_run_folder(out):  # a first evaluation (flock: a second open file conflicts even in one process)
        assert _run("--checkpoint", ckpt, "--sampler", "euler-pf", "--nfe", 3, "--num-samples", 20,
                    "--device", "cpu", "--out", out) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{out} is in use by another run (pid {os.getpid()} on" in last and "choose another --out" in last
    assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_FILE]  # nothing was written


def test_an_evaluation_removes_stale_temporaries_and_releases_its_folder(ckpt, tmp_path, capsys, one_thread):
    out = tmp_path / "eval"
    stale = [out / ".metrics.json.pf-tmp-k1x2ab3c", out / "parts" / ".part-000000.npz.pf-tmp-zz9zz9zz"]
    inner = out / "inner"  # another output folder inside this one: its own owner cleans it
    kept = [inner / ".metrics.json.pf-tmp-a1b2c3d4", out / ".hidden-but-not-ours"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    (inner / runs.LOCK_FILE).touch()
    assert _run("--checkpoint", ckpt, "--sampler", "euler-pf", "--nfe", 3, "--num-samples", 20,
                "--device", "cpu", "--out", out) == 0
    assert "removed 2 temporary file(s) of interrupted writes" in capsys.readouterr().out
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    runs.lock_run_folder(out).release()  # the command let go of the folder


# --- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random-bytes", "foreign", "missing"])
def test_bad_checkpoint_is_one_line_error(tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "foreign":
        torch.save({"foo": 1}, path)
    rc = _run("--checkpoint", path, "--sampler", "euler-pf", "--nfe", 4, "--num-samples", 8, "--out", tmp_path / "o")
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and str(path) in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_sit_network_with_dual_loop_is_a_clear_error(tmp_path, capsys):
    sit = tmp_path / "sit.safetensors"
    pf.save_model(_perturbed("SiT-XS/2"), sit)
    rc = _run("--checkpoint", sit, "--sampler", "dual-loop", "--nfe", 8, "--num-samples", 8, "--out", tmp_path / "o")
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "SiT" in err and "--sampler euler" in err
    net = pf.load_model(sit)
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ConfigError, match="Patch Forcing network"):
        evaluate_model(net, sampler="look-ahead", nfe=8, num_samples=8)
    assert not calls  # refused before sampling
    assert evaluate_model(net, sampler="euler", nfe=2, num_samples=4)["nfe"] == 2  # the baseline's sampler works


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(sampler="rk4"), ConfigError, "unknown sampler 'rk4'"),
    (dict(nfe=0), ConfigError, "at least 1"),
    (dict(sampler="dual-loop", nfe=3), ConfigError, "budget of"),
    (dict(num_samples=3), ConfigError, "at least 4 samples"),
    (dict(stats="ref.npz"), ConfigError, "drop --stats"),  # digits use the built-in classifier
    (dict(sampler="euler", p=0.5), ConfigError, "no option"),
])
def test_bad_inputs_fail_before_sampling(net, kwargs, error, match):
    calls = []
    hook = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(error, match=match):
            evaluate_model(net, **{"sampler": "euler-pf", "nfe": 4, "num_samples": 8, **kwargs})
    finally:
        hook.remove()
    assert not calls


def test_digits_metrics_need_a_digits_shaped_network():
    net = pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2, input_size=8, in_channels=3)
    with pytest.raises(ShapeError, match="1x16x16"):
        evaluate_model(net, sampler="euler-pf", nfe=2, num_samples=8)


def test_metrics_that_cannot_be_computed_say_why(net, tmp_path):
    """No reference statistics, or no Inception package/weights here: sampled, scored None, reason given."""
    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.zeros(4), sigma=np.eye(4))
    bare = evaluate_model(net, sampler="euler-pf", nfe=2, num_samples=8, data="photos")
    assert bare["fid"] is None and "--stats" in bare["not_computed"]["fid"]
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:  # the case of this machine: the optional Inception package is not installed
        out = evaluate_model(net, sampler="euler-pf", nfe=2, num_samples=8, data="photos", stats=stats)
        assert out["fid"] is None and "Inception" in out["not_computed"]["fid"] and out["nfe"] == 2
    with pytest.raises(pf.DataError, match="does not exist"):
        evaluate_model(net, sampler="euler-pf", nfe=2, num_samples=8, data="photos", stats=tmp_path / "none.npz")
