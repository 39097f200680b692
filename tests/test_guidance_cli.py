"""`--guidance-interval` and `--guide-checkpoint` on `patchforcing sample` and `evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import patchforcing as pf
from patchforcing.checkpoints import TRAIN_FORMAT
from patchforcing.cli import main
from patchforcing.errors import CheckpointError, ConfigError
from patchforcing.guides import resolve_guide as resolve_guide_path
from patchforcing.runs import checkpoint_path
from patchforcing.sampling import GuidanceInterval

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int, **overrides):
    torch.manual_seed(seed)
    net = pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2, **overrides)  # 16x16 digits
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _run_folder(tmp_path, weak):
    """A run folder whose step-10 training checkpoint holds ``weak`` as its EMA network."""
    run = tmp_path / "run"
    path = checkpoint_path(run, 10)
    path.parent.mkdir(parents=True)
    torch.save({"format": TRAIN_FORMAT, "model_config": weak.config.to_dict(), "ema": weak.state_dict()}, path)
    return run


def _first_tile(png, side=16):
    img = np.asarray(Image.open(png))
    scale = max(1, 64 // side)
    return img[2 * scale + scale // 2:(2 + side) * scale:scale, 2 * scale + scale // 2:(2 + side) * scale:scale, 0]


def _uint8(x):
    return ((x[0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().astype(int)


def test_sample_cli_autoguidance_with_interval_matches_the_library(tmp_path):
    main_net, weak = _net(0), _net(1)
    ckpt = pf.save_model(main_net, tmp_path / "main.safetensors")
    run = _run_folder(tmp_path, weak)
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(ckpt), "--sampler", "look-ahead", "--steps", "6", "--labels", "3",
                 "--num-samples", "1", "--seed", "2", "--cfg-scale", "2.5", "--guidance-interval", "0.2,0.7",
                 "--guide-checkpoint", f"{run}@step=10", "--device", "cpu", "--out", str(out)]) == 0
    noise = pf.sampling.noise_for_seeds([2], (1, 16, 16))
    kw = dict(sampler="look-ahead", steps=6, labels=torch.tensor([3]), cfg_scale=2.5)
    guided = pf.sample(main_net, noise, guidance_interval=(0.2, 0.7), guide_model=weak, **kw)
    assert np.abs(_first_tile(out) - _uint8(guided)).max() <= 1
    assert np.abs(_uint8(pf.sample(main_net, noise, **kw)) - _uint8(guided)).max() > 1  # guidance changed it


def test_evaluate_cli_records_guidance(tmp_path):
    main_net, weak = _net(0), _net(1)
    ckpt = pf.save_model(main_net, tmp_path / "main.safetensors")
    weak_file = pf.save_model(weak, tmp_path / "weak.safetensors")
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--sampler", "euler-pf", "--nfe", "4", "--num-samples", "20",
                 "--cfg-scale", "2", "--guide-checkpoint", str(weak_file), "--guidance-interval", "0,0.5",
                 "--device", "cpu", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["autoguidance"] is True and metrics["guidance_interval"] == [0.0, 0.5]
    assert metrics["nfe"] == 4 and metrics["guide_nfe"] == 3  # grid 0, 0.25, 0.5, 0.75: three steps in [0, 0.5]


def test_guide_checkpoint_syntax_and_errors(tmp_path, capsys):
    run = _run_folder(tmp_path, _net(1))
    assert resolve_guide_path(f"{run}@step=10") == checkpoint_path(run, 10)
    assert resolve_guide_path(str(run)) == run  # a run folder: load_model takes its newest checkpoint
    with pytest.raises(CheckpointError, match=r"steps \[10\]"):
        resolve_guide_path(f"{run}@step=7")
    assert tuple(GuidanceInterval.parse(" 0.1, 0.9")) == (np.float32(0.1).item(), np.float32(0.9).item())  # the grid's float32
    with pytest.raises(ConfigError, match="LO,HI"):
        GuidanceInterval.parse("0.1")
    with pytest.raises(ConfigError, match="LO <= HI"):
        GuidanceInterval.parse("0.9,0.1")
    ckpt = pf.save_model(_net(0), tmp_path / "main.safetensors")
    small = pf.save_model(_net(2, patch_size=4), tmp_path / "p4.safetensors")
    assert main(["sample", "--checkpoint", str(ckpt), "--guide-checkpoint", str(small), "--cfg-scale", "2",
                 "--labels", "1", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "x.png")]) == 1
    assert "same kind and shape" in capsys.readouterr().err
