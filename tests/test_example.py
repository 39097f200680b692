"""The training example is drawn in one place, the loss draws nothing, and one held-out loop."""

from __future__ import annotations

import pytest
import torch

import patchforcing as pf
from conftest import make_model
from patchforcing.loss import NUM_SEGMENTS, Example, example_loss, held_out_loss, segment_times
from patchforcing.streams import STREAM_STEP, make_generator
from patchforcing.timesteps import timestep_distribution
from patchforcing.training.batches import StepBatches
from patchforcing.training.example import draw_example

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def test_draw_example_draws_noise_times_then_dropout_from_the_one_generator():
    x1, labels = torch.randn(6, 3, 8, 8, dtype=F64), torch.arange(6)
    dist = timestep_distribution("ltg")
    ex = draw_example(x1, labels, torch.Generator().manual_seed(3), timesteps=dist, num_patches=16, null_label=10,
                      drop_prob=0.5)
    g = torch.Generator().manual_seed(3)  # the same draws, by hand, in the same order
    x0 = torch.randn(x1.shape, generator=g, dtype=F64)
    t = dist(6, 16, generator=g, dtype=F64)
    drop = torch.rand((6,), generator=g) < 0.5
    assert torch.equal(ex.x0, x0) and torch.equal(ex.t, t) and ex.x1 is x1
    assert torch.equal(ex.condition, torch.where(drop, torch.full_like(labels, 10), labels))
    assert 0 < int(drop.sum()) < 6  # both branches of the dropout are exercised
    sit = draw_example(x1, labels, torch.Generator().manual_seed(3), timesteps=dist, num_patches=16, null_label=10,
                       drop_prob=0.5, global_time=True)
    assert torch.equal(sit.t, t[:, 0])


def test_step_batches_draw_through_draw_example():
    images, labels = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    dist = timestep_distribution("ltg")
    batches = StepBatches(images, labels, seed=4, batch_size=8, rank=0, world_size=1, timesteps=dist, num_patches=16,
                          null_label=10, drop_prob=0.3, global_time=False)
    got = batches[2]
    index = batches.indices(2)
    ex = draw_example(images[index], labels[index], make_generator(4, STREAM_STEP, 2), timesteps=dist, num_patches=16,
                      null_label=10, drop_prob=0.3)
    assert torch.equal(got.x0, ex.x0) and torch.equal(got.t, ex.t) and torch.equal(got.condition, ex.condition)


def test_the_loss_is_a_pure_function_of_network_and_example():
    model = make_model("patch-forcing", 2).train()
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(4, 3, 8, 8, generator=g, dtype=F64)
    ex = draw_example(x1, torch.arange(4), g, timesteps=timestep_distribution("uniform-patch"), num_patches=16,
                      null_label=model.config.null_label, drop_prob=model.config.class_dropout_prob)
    state = torch.get_rng_state()
    a, b = example_loss(model, ex), example_loss(model, ex)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn, even in training mode
    assert all(torch.equal(a[k], b[k]) for k in a)
    g2 = torch.Generator().manual_seed(0)
    torch.randn(4, 3, 8, 8, generator=g2, dtype=F64)  # x1 above came from this stream first
    again = pf.training_loss(model, x1, labels=torch.arange(4), timesteps="uniform-patch", generator=g2)
    assert all(torch.equal(again[k], a[k]) for k in a)  # the wrapper = draw_example + example_loss


def test_example_rows_slice_every_field():
    ex = Example(torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2), torch.rand(4, 1), (torch.arange(4), None),
                 torch.rand(4, 3, 5))
    part = ex.rows(slice(1, 3))
    assert part.x1.shape[0] == part.x0.shape[0] == part.t.shape[0] == part.repa_target.shape[0] == 2
    assert torch.equal(part.condition[0], torch.tensor([1, 2])) and part.condition[1] is None


def test_held_out_loss_does_not_depend_on_the_batching():
    model = make_model("patch-forcing", 2).eval()
    g = torch.Generator().manual_seed(5)
    x1, x0 = torch.randn(6, 3, 8, 8, generator=g, dtype=F64), torch.randn(6, 3, 8, 8, generator=g, dtype=F64)
    y = torch.arange(6)
    whole = held_out_loss(model, [(x1, x0, y)])
    split = held_out_loss(model, [(x1[:4], x0[:4], y[:4]), (x1[4:], x0[4:], y[4:])])
    assert len(whole[1]) == NUM_SEGMENTS and segment_times() == [(k + 0.5) / 8 for k in range(8)]
    torch.testing.assert_close(torch.tensor(split[1], dtype=F64), torch.tensor(whole[1], dtype=F64), rtol=1e-12, atol=0)
    mean, per = pf.validation_loss(model, x1, x0=x0, labels=y)
    assert whole[1] == per.tolist() and whole[0] == pytest.approx(float(mean), rel=1e-15)
