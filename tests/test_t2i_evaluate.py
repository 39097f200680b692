"""Evaluation of text-to-image networks on digits-captions prompts."""

from __future__ import annotations

import json

import pytest
import torch

import patchforcing as pf
from patchforcing.cli import main
from patchforcing.data import load_dataset
from patchforcing.evaluation import t2i
from patchforcing.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_digits_net():
    torch.manual_seed(0)
    return create_model("T2I-XS/2", depth=1, hidden_dim=32, head_dim=16, mapping_dim=16, txt_refiner_dim=32, txt_refiner_head_dim=16).eval()


def test_prompts_cover_every_digit_and_attribute_evenly():
    prompts, digits, thickness, slant = t2i.digit_prompts(120, seed=3)
    assert len(prompts) == 120 and torch.bincount(digits).tolist() == [12] * 10
    assert torch.bincount(thickness).tolist() == [60, 60] and torch.bincount(slant).tolist() == [40, 40, 40]
    assert all(("thin" in p) == (th == 0) for p, th in zip(prompts, thickness.tolist(), strict=False))


def test_scores_of_images_that_follow_their_prompts():
    data = load_dataset("digits-captions")
    prompts, digits, thickness, slant = t2i.digit_prompts(60)
    rows = []
    for d, th, sl in zip(digits.tolist(), thickness.tolist(), slant.tolist(), strict=False):
        match = (data.labels == d) & (data.attributes["thickness"] == th) & (data.attributes["slant"] == sl)
        rows.append(int(match.nonzero()[0, 0]))
    scores = t2i.attribute_scores(data.images[rows], digits, {"thickness": thickness, "slant": slant})
    assert scores == {"thickness_adherence": 1.0, "slant_adherence": 1.0, "attribute_adherence": 1.0}
    wrong = t2i.attribute_scores(data.images[rows], digits, {"thickness": 1 - thickness, "slant": slant})
    assert wrong["thickness_adherence"] == 0.0 and wrong["attribute_adherence"] == 0.0


def test_evaluate_command_on_a_text_network(tmp_path, capsys):
    net = _tiny_digits_net()
    pf.save_model(net, tmp_path / "t2i.safetensors")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "t2i.safetensors"), "--sampler", "look-ahead", "--nfe", "4",
                 "--num-samples", "12", "--cfg-scale", "2", "--device", "cpu", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["nfe"] <= 4 and 0 <= metrics["attribute_adherence"] <= 1 and metrics["data"] == "digits-captions"
    assert (tmp_path / "eval" / "samples.png").exists() and "thickness" in capsys.readouterr().out


def test_text_evaluation_by_parts_equals_in_memory_and_records_the_plan(tmp_path):
    import numpy as np

    from patchforcing.evaluation.evaluate import evaluate_model

    net = _tiny_digits_net()
    plan = pf.SamplingPlan.from_nfe("look-ahead", 4, guidance=pf.Guidance(2.0, "sigma:0.5,3"))
    plain = evaluate_model(net, plan, num_samples=7, seed=2, return_pixels=True)
    parted = evaluate_model(net, plan, num_samples=7, seed=2, return_pixels=True, parts_dir=tmp_path / "p")
    assert np.array_equal(plain["images_uint8"], parted["images_uint8"])
    assert parted["plan"] == plan.to_json() and pf.SamplingPlan.from_json(parted["plan"]) == plan
    assert parted["conditions"]["kind"] == "prompts" and parted["data"] == "digits-captions"
    assert 0 <= parted["attribute_adherence"] <= parted["thickness_adherence"] <= 1


def test_text_evaluation_with_two_processes_equals_one(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    pf.save_model(_tiny_digits_net(), tmp_path / "t2i.safetensors")
    args = ["--checkpoint", tmp_path / "t2i.safetensors", "--sampler", "dual-loop", "--nfe", 8, "--num-samples", 9,
            "--batch-size", 4, "--cfg-scale", 2, "--save-npz", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in (1, 2):
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(n), "-m", "patchforcing", "evaluate",
               *map(str, args), "--out", str(tmp_path / f"n{n}")]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"n{n}" / "metrics.json").read_text()) for n in (1, 2))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["attribute_adherence"] == one["attribute_adherence"] and two["fid"] == pytest.approx(one["fid"], abs=1e-6)
    with np.load(tmp_path / "n1" / "samples.npz") as a, np.load(tmp_path / "n2" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


def test_held_out_diagnostics_of_a_text_network_use_the_captions():
    from patchforcing.evaluation.held_out import calibration_report, validation_report
    from patchforcing.text import load_text_encoder

    net = _tiny_digits_net()
    with torch.no_grad():  # a fresh network's head is zero: perturb it so the calibration is defined
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    test = load_dataset("digits-captions", split="test")
    report = validation_report(net, "digits", batch_size=40)  # a text network's digits are the captioned ones
    assert report["num_images"] == len(test) and len(report["val_loss_segments"]) == 8
    # the same loss over the whole split at once, with the captions encoded as the condition
    states = load_text_encoder(net.config.text_encoder, max_length=net.config.text_length).encode(test.captions, "cpu")
    x0 = pf.sampling.noise_for_seeds(range(len(test)), (1, 16, 16))
    _, per_segment = pf.validation_loss(net, test.images, x0=x0, labels=states)
    assert report["val_loss_segments"] == pytest.approx(per_segment.tolist(), rel=1e-5)
    rows = calibration_report(net, "digits-captions")
    assert rows and all(-1 <= r["spearman"] <= 1 for r in rows)
