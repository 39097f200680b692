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
    assert all(("thin" in p) == (th == 0) for p, th in zip(prompts, thickness.tolist()))


def test_scores_of_images_that_follow_their_prompts():
    data = load_dataset("digits-captions")
    prompts, digits, thickness, slant = t2i.digit_prompts(60)
    rows = []
    for d, th, sl in zip(digits.tolist(), thickness.tolist(), slant.tolist()):
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
