"""The app's Inpaint tab through Gradio's client: a painted mask on a picture gives ``pf.inpaint``'s result for
the seed, with the kept pixels exact; the frames show the kept patches at their mode's time; bad input is a message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchforcing as pf
from conftest import serve_tiny_app

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("diffusers")
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from gradio_client import handle_file  # noqa: E402
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SCALE = 32  # the page shows 8 px pictures at 256 px


@pytest.fixture(scope="module")
def served():
    """A tiny network's page on a free local port; yields (network, Gradio client)."""
    for net, url in serve_tiny_app():
        yield net, gradio_client.Client(url, verbose=False)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """An 8 px grey picture shown at 256 px, and a painted layer over its right half (columns 5..7 of 8)."""
    root = tmp_path_factory.mktemp("inpaint-app")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(np.kron(pixels, np.ones((SCALE, SCALE), dtype=np.uint8))).convert("RGBA").save(root / "background.png")
    layer = np.zeros((8 * SCALE, 8 * SCALE, 4), dtype=np.uint8)
    layer[40:200, 5 * SCALE + 3:, :] = (255, 0, 255, 255)  # a stroke inside columns 5..7 (patch columns 2, 3 of 4)
    Image.fromarray(layer).save(root / "layer.png")
    return root, pixels


def _editor(root, layer=True):
    return {"background": handle_file(str(root / "background.png")),
            "layers": [handle_file(str(root / "layer.png"))] if layer else [], "composite": None}


@pytest.mark.parametrize("mode, sampler", [("ahead", "look-ahead"), ("same", "random-dual-loop")])
def test_the_tab_returns_pf_inpaint_for_the_seed(served, picture, mode, sampler):
    net, client = served
    root, pixels = picture
    result = client.predict(_editor(root), "3", mode, sampler, 8, "11", api_name="/inpaint")
    got = np.asarray(Image.open(result[0]))[::SCALE, ::SCALE]
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 5:] = 1
    g = torch.Generator().manual_seed(11)
    x = pf.inpaint(net, torch.from_numpy(pixels).float()[None, None] / 127.5 - 1, mask, pf.SamplingPlan.from_nfe(sampler, 8),
                   noise=randn_tensor((1, 1, 8, 8), generator=g), labels=torch.tensor([3]), mode=mode, generator=g)
    want = ((x[0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(got, want) and np.array_equal(got[:, :4], pixels[:, :4])  # patch columns 0, 1 kept exactly
    assert f"mode {mode}" in result[1] and f"{pf.SamplingPlan.from_nfe(sampler, 8).nfe} network evaluations" in result[1]
    first = client.predict(1, api_name="/inpaint_step")  # scrubbing the tab's own frames
    time_map = np.asarray(Image.open(first[3]).convert("RGB"))[::SCALE, ::SCALE]
    assert first[-1].startswith("frame 1/") and np.array_equal(time_map[:, 0], time_map[:, 2])  # same: all at t = 0
    if mode == "ahead":  # the kept patches enter at min(1.4 t, 1): t = 0 at the first frame too
        last_evaluated = client.predict(int(result[2]["maximum"]) - 1, api_name="/inpaint_step")
        late = np.asarray(Image.open(last_evaluated[3]).convert("RGB"))[::SCALE, ::SCALE]
        assert not np.array_equal(late[:, 0], late[:, 7])  # kept patches further along than the generated ones


def test_the_tab_refuses_a_picture_without_paint_with_a_message(served, picture):
    _, client = served
    root, _ = picture
    with pytest.raises(Exception, match="paint the region to generate"):
        client.predict(_editor(root, layer=False), "3", "same", "look-ahead", 8, "0", api_name="/inpaint")
