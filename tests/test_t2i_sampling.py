"""Sampling a text-to-image network from prompts: every sampler, guidance with the empty prompt."""

from __future__ import annotations

import pytest
import torch

import patchforcing as pf
from patchforcing.conditioning import Condition
from patchforcing.errors import ShapeError
from patchforcing.models import T2IConfig, create_model
from patchforcing.text import load_text_encoder, text_condition

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = dict(input_size=8, in_channels=1, depth=2, hidden_dim=32, head_dim=16, mapping_dim=16, mapping_depth=1, txt_in_dim=64,
           txt_refiner_dim=32, txt_refiner_head_dim=16, txt_refiner_depth=1, text_encoder="byte-toy", text_length=16)


@pytest.fixture(scope="module")
def net_and_condition():
    torch.manual_seed(0)
    net = create_model(T2IConfig(**TOY)).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    enc = load_text_encoder("byte-toy", max_length=16)
    return net.eval(), text_condition(enc, ["a bold seven", "a thin two"])


@pytest.mark.parametrize("sampler", ["euler-pf", "dual-loop", "look-ahead", "random-look-ahead"])
def test_every_sampler_runs_from_prompts_and_computes_the_text_once(net_and_condition, sampler, monkeypatch):
    net, cond = net_and_condition
    net._cache.value = None
    calls = []
    original = net.refine_text
    monkeypatch.setattr(net, "refine_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, info = pf.sample(net, noise, sampler=sampler, steps=4, condition=cond, cfg_scale=2.0, return_info=True,
                        generator=torch.Generator().manual_seed(0))
    assert x.shape == noise.shape and torch.isfinite(x).all() and info["nfe"] == pf.expected_nfe(sampler, 4)
    assert len(calls) == 1  # the guided batch [null; prompts] is refined once for the whole run


def test_guidance_mixes_the_empty_prompt_and_the_prompt(net_and_condition):
    net, cond = net_and_condition
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = 3.0
    x = pf.sample(net, noise, sampler="euler-pf", steps=1, condition=cond, cfg_scale=w)
    t = torch.zeros(2, net.num_patches, dtype=torch.float64)
    with torch.no_grad():
        v_c = net(noise, t, cond.value).velocity
        v_u = net(noise, t, cond.null).velocity
    torch.testing.assert_close(x, noise + v_u + w * (v_c - v_u), atol=1e-10, rtol=0)
    x_other = pf.sample(net, noise, sampler="euler-pf", steps=1, condition=cond.select([1, 0]), cfg_scale=w)
    assert (x_other - x).abs().max() > 1e-4  # the prompt matters


def test_text_network_without_a_condition_names_the_fix(net_and_condition):
    net, _ = net_and_condition
    with pytest.raises(ShapeError, match="text_condition"):
        pf.sample(net, torch.randn(1, 1, 8, 8), sampler="euler-pf", steps=2)
    assert isinstance(Condition.from_text(torch.zeros(1, 16, 64), torch.zeros(16, 64)), Condition)
