"""Resumable evaluation: images written in parts; a rerun makes only the missing ones, exactly."""

from __future__ import annotations

import numpy as np
import pytest

import patchforcing as pf
from conftest import randomize_
from patchforcing.errors import ConfigError
from patchforcing.evaluation.evaluate import evaluate_model
from patchforcing.evaluation.generate import generate_images
from patchforcing.evaluation.parts import generate_parts, load_parts, part_path
from patchforcing.images import to_uint8_nhwc
from patchforcing.runtime import Processes

PLAN = dict(sampler="look-ahead", steps=2, num_samples=8, seed=3, cfg_scale=1.0)


@pytest.fixture
def net():
    return randomize_(pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2, input_size=8,
                                      in_channels=1, num_classes=10)).eval()


def _make(net, folder, **change):
    """The parts of PLAN (with ``change``) in parts of 3 images, through ``generate_images``."""
    settings = {**PLAN, **change}
    plan = pf.SamplingPlan(settings["sampler"], settings["steps"])

    def make(indices):
        _, images, targets, info = generate_images(net, plan, num_samples=settings["num_samples"],
                                                   seed=settings["seed"], batch_size=2, indices=indices)
        assert info["nfe"] == 3
        return to_uint8_nhwc(images), targets, 0

    return generate_parts(folder, settings, Processes(), make, settings["num_samples"], part_size=3)


def test_parts_resume_and_equal_the_in_memory_images(net, tmp_path, one_thread):
    folder = tmp_path / "parts"
    assert _make(net, folder)["made"] == 3  # 8 images in parts of 3, 3, 2
    pixels, labels = load_parts(folder, 8, part_size=3)
    ref = evaluate_model(net, sampler="look-ahead", nfe=3, num_samples=8, seed=3, data="none", return_pixels=True)
    assert np.array_equal(pixels, ref["images_uint8"]) and np.array_equal(labels, ref["labels"])
    # A killed run: part 1 never landed. The rerun makes only it, with the same bytes as before.
    before = {k: part_path(folder, k).stat().st_mtime_ns for k in (0, 2)}
    part_path(folder, 1).unlink()
    assert _make(net, folder)["made"] == 1
    assert {k: part_path(folder, k).stat().st_mtime_ns for k in (0, 2)} == before
    assert np.array_equal(load_parts(folder, 8, part_size=3)[0], pixels)


def test_parts_of_another_plan_are_refused(net, tmp_path, one_thread):
    _make(net, tmp_path / "parts")
    with pytest.raises(ConfigError, match="seed: 3 there, 4 now"):
        _make(net, tmp_path / "parts", seed=4)


def test_evaluate_with_parts_equals_without(net, tmp_path, one_thread):
    kw = dict(sampler="euler-pf", nfe=2, num_samples=7, seed=1, data="none", return_pixels=True)
    plain = evaluate_model(net, **kw)
    parted = evaluate_model(net, parts_dir=tmp_path / "p", **kw)
    assert np.array_equal(plain["images_uint8"], parted["images_uint8"])
    assert plain["not_computed"] == parted["not_computed"] and parted["nfe"] == 2
