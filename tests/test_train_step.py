"""``train_step`` is the step: the trainer's step k equals it by hand, bit for bit, and the benchmarks import it."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

import patchforcing as pf
from patchforcing.data import load_dataset
from patchforcing.loss import Example
from patchforcing.models import Kind, build_model
from patchforcing.timesteps import timestep_distribution
from patchforcing.training import resolve_config
from patchforcing.training import step as step_module
from patchforcing.training.batches import StepBatches
from patchforcing.training.config import network_config
from patchforcing.training.example import step_example
from patchforcing.training.step import make_ema_and_optimizer, step_options, train_step

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TIMED = ("gpu_check", "gpu_throughput", "train_throughput", "train_step_cost", "t2i_text_cost")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("preset, grad_accum", [("digits", 1), ("digits", 2), ("digits-sit", 1)])
def test_trainer_step_equals_train_step_by_hand(tmp_path, preset, grad_accum):
    """Two trainer steps against ``StepBatches`` + ``step_example`` + ``train_step`` from the same seed."""
    cfg = resolve_config(preset, out=str(tmp_path / "run"), steps=2, log_every=1, ckpt_every=2, val_every=0, sample_every=0,
                         depth=1, hidden_size=32, num_heads=2, batch_size=8, grad_accum=grad_accum, device="cpu")
    pf.train(cfg)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-00000002.pt", weights_only=True)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]

    data, cpu = load_dataset(cfg.data, split="train", resolution=cfg.resolution), torch.device("cpu")
    mcfg = network_config(cfg, data)
    torch.manual_seed(cfg.seed)
    net = build_model(mcfg).train()
    ema, optimizer, scheduler = make_ema_and_optimizer(net, cfg)
    batches = StepBatches(data.images, data.labels, seed=cfg.seed, batch_size=cfg.batch_size, rank=0, world_size=1,
                          timesteps=timestep_distribution(cfg.timestep_name, **cfg.timestep_params()),
                          num_patches=mcfg.num_patches, null_label=mcfg.null_label, drop_prob=mcfg.class_dropout_prob,
                          global_time=mcfg.kind is Kind.SIT)
    for k in (1, 2):
        losses = train_step(net, ema, optimizer, step_example(batches[k], cpu), scheduler=scheduler, **step_options(cfg, cpu))
        assert {name: float(v) for name, v in losses.items()} == {name: logged[k - 1][name] for name in losses}
    for name, mine in (("model", net.state_dict()), ("ema", ema.state_dict())):
        assert saved[name].keys() == mine.keys() and all(torch.equal(saved[name][key], mine[key]) for key in mine), name
    assert scheduler.last_epoch == 2 and optimizer.param_groups[0]["lr"] == logged[-1]["lr"]


def test_train_step_returns_named_detached_losses_and_skips_an_absent_ema(model_factory):
    net = model_factory().train()
    _, optimizer, _ = make_ema_and_optimizer(net, resolve_config("digits"))
    dtype = next(net.parameters()).dtype
    x1 = torch.randn(4, net.config.in_channels, net.config.input_size, net.config.input_size, dtype=dtype)
    example = Example(x1, torch.randn_like(x1), torch.rand(4, net.config.num_patches, dtype=dtype), torch.zeros(4, dtype=torch.long))
    before = [p.detach().clone() for p in net.parameters()]
    out = train_step(net, None, optimizer, example)
    assert list(out) == ["loss", "flow_loss", "uncertainty_loss", "grad_norm"]
    assert all(v.ndim == 0 and not v.requires_grad for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))  # the weights moved
    assert all(p.grad is None for p in net.parameters())  # gradients cleared for the next step


@pytest.mark.parametrize("name", TIMED)
def test_every_benchmark_times_the_trainers_step(name, monkeypatch):
    """Each benchmark that times a training step imports ``train_step`` itself (none writes its own)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    try:
        if name == "gpu_check":  # it times the steps of gpu_throughput and train_step_cost
            assert sys.modules["gpu_throughput"].train_step is step_module.train_step
            assert sys.modules["train_step_cost"].train_step is step_module.train_step
        assert module.train_step is step_module.train_step
        assert "torch.optim.AdamW(" not in (BENCHMARKS / f"{name}.py").read_text()  # no optimizer of its own
    finally:
        for mod in ("gpu_check", "gpu_throughput", "train_step_cost", "train_throughput", "t2i_text_cost", "common"):
            sys.modules.pop(mod, None)
