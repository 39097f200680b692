"""The interactive page: its endpoint returns ``pf.sample``'s image for the seed, and bad values
get a message (Gradio's client against a launched page); a real browser in a slow test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import numpy as np
import pytest
import torch

import patchforcing as pf
from conftest import make_model

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("diffusers")
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from PIL import Image  # noqa: E402

from patchforcing.app import build_app  # noqa: E402
from patchforcing.hub.transformer import PatchForcingTransformerModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """A tiny network's page, launched on a free local port; yields (network, url)."""
    torch.set_num_threads(1)
    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), nfe=8)
    pipe.set_progress_bar_config(disable=True)
    page = build_app(pipe)
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield net, f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def client(served):
    return gradio_client.Client(served[1], verbose=False)


def _expected(net, label: int, seed: int, sampler: str, nfe: int, scale: float, schedule: str = "uniform") -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = pf.sample(net, randn_tensor((1, 1, 8, 8), generator=g), sampler=sampler,
                  steps=pf.steps_for_nfe(sampler, nfe, schedule=schedule), schedule=schedule,
                  labels=torch.tensor([label]), cfg_scale=scale, generator=g)
    pixels = ((x[0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return np.kron(pixels, np.ones((32, 32), dtype=np.uint8))  # the page upscales 8 px to 256 px (nearest)


@pytest.mark.parametrize("sampler, scale, schedule", [("look-ahead", 1.0, "uniform"), ("random-dual-loop", 2.0, "uniform"),
                                                      ("look-ahead", 1.0, "shift:3")])
def test_endpoint_returns_the_image_of_sample_for_the_seed(served, client, sampler, scale, schedule):
    net, _ = served
    result = client.predict("3", sampler, 8, scale, 0.0, 1.0, 11, schedule, api_name="/generate")
    image = np.asarray(Image.open(result[0]))
    assert image.shape == (256, 256) and np.array_equal(image, _expected(net, 3, 11, sampler, 8, scale, schedule))
    if schedule != "uniform":  # the grid changes the image, and the summary names it
        assert not np.array_equal(image, _expected(net, 3, 11, sampler, 8, scale)) and f"time grid {schedule}" in result[1]
    steps = pf.steps_for_nfe(sampler, 8, schedule=schedule)
    assert f"{steps} outer steps, {pf.expected_nfe(sampler, steps, schedule=schedule)} network evaluations" in result[1]
    assert result[2]["maximum"] > steps and result[2]["value"] == result[2]["maximum"]  # the slider ends on the result
    first = client.predict(1, api_name="/step")  # scrubbing: the session's frames, first evaluation
    assert first[-1].startswith("evaluation 1/") and len(first) == 5
    state, time_map = np.asarray(Image.open(first[0])), np.asarray(Image.open(first[3]))
    assert state.shape[:2] == (256, 256) and not np.array_equal(state, image)  # the noisy state, not the result
    assert len(np.unique(time_map.reshape(-1, time_map.shape[-1]), axis=0)) == 1  # all patches at t = 0


@pytest.mark.parametrize("values, message", [
    (("3", "look-ahead", 0, 1.0, 0.0, 1.0, 0, "uniform"), "NFE must be a whole number from 1"),
    (("3", "look-ahead", 8, 1.0, 0.7, 0.2, 0, "uniform"), "guidance interval"),
    (("3", "look-ahead", 8, 1.0, 0.0, 1.0, -1, "uniform"), "seed"),
    (("3", "dual-loop", 2, 1.0, 0.0, 1.0, 0, "uniform"), "budget"),
    (("3", "look-ahead", 8, 1.0, 0.0, 1.0, 0, "cosine"), "time grid: unknown schedule 'cosine'; choose uniform, shift:S"),
])
def test_bad_values_get_a_message(client, values, message):
    with pytest.raises(Exception, match=message) as err:
        client.predict(*values, api_name="/generate")
    assert "Traceback" not in str(err.value)


def _chromium() -> str | None:
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)


def _find(shot: np.ndarray, expected: np.ndarray, block: int = 32) -> bool:
    """Whether the (H, W) grey ``expected`` (8x8 blocks of ``block`` px) appears in the (h, w) grey
    screenshot: every block centre below the first row (the label may cover it) matches within 2."""
    h, w = expected.shape
    offsets = np.ones((shot.shape[0] - h + 1, shot.shape[1] - w + 1), dtype=bool)
    for cy in range(block + block // 2, h, block):
        for cx in range(block // 2, w, block):
            region = shot[cy:cy + offsets.shape[0], cx:cx + offsets.shape[1]]
            offsets &= np.abs(region - int(expected[cy, cx])) <= 2
    return bool(offsets.any())


@pytest.mark.slow
def test_page_in_a_headless_browser_shows_the_image_and_the_step_slider(served, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install -y chromium)")
    net, url = served
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
             "--window-size=1280,1400", "--force-device-scale-factor=1"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, env=env).stdout
    assert 'id="pf-image"' in dom and 'id="pf-step"' in dom and 'type="range"' in dom and "Generate" in dom
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, env=env)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    grey = pixels.mean(axis=-1)
    assert _find(grey, _expected(net, 0, 0, "look-ahead", 8, 1.0))  # the page's default image, pixel for pixel
    orange = (pixels[..., 0] > 200) & (pixels[..., 1] > 80) & (pixels[..., 1] < 180) & (pixels[..., 2] < 80)
    assert orange[850:950].sum() > 3000  # the step slider's filled track, below the Generate button (780-820)


def test_app_command_with_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    from patchforcing.cli import main

    assert main(["app", "--checkpoint", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint at") and len(err.strip().splitlines()) == 1


def test_text_network_page_samples_the_prompt_and_renders_every_frame():
    from patchforcing.app import check_request, run_request
    from patchforcing.models import T2IConfig, create_model
    from patchforcing.text import load_text_encoder, text_condition

    torch.manual_seed(0)
    net = create_model(T2IConfig(input_size=8, in_channels=1, depth=2, hidden_dim=32, head_dim=16, mapping_dim=16, mapping_depth=1,
                                 txt_in_dim=64, txt_refiner_dim=32, txt_refiner_head_dim=16, txt_refiner_depth=1,
                                 text_encoder="byte-toy", text_length=16)).eval()
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net))
    request = check_request(pipe, "a thin two", "dual-loop", 8, 2.0, 0.25, 0.75, 5)
    image, frames, info = run_request(pipe, request)
    g = torch.Generator().manual_seed(5)
    cond = text_condition(load_text_encoder("byte-toy", max_length=16), ["a thin two"])
    want = pf.sample(net, randn_tensor((1, 1, 8, 8), generator=g), sampler="dual-loop", steps=2, condition=cond, cfg_scale=2.0,
                     guidance_interval=(0.25, 0.75), generator=g)
    assert torch.equal(image, want.clamp(-1, 1)) and info["nfe"] == 8
    assert len(frames) == 9 and frames[-1]["caption"].startswith("result")  # 8 evaluations, then the result
    assert all(f["panels"]["state"].size == (256, 256) for f in frames)
    with pytest.raises(gr.Error, match="prompt"):
        check_request(pipe, "  ", "dual-loop", 8, 2.0, 0.0, 1.0, 5)


def test_time_grid_goes_into_the_request_and_the_plan():
    from patchforcing.app import check_request, run_request

    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), schedule="shift:2")
    assert check_request(pipe, "2", "look-ahead", 8, 1.0, 0.0, 1.0, 4).schedule == "shift:2"  # default: the saved grid
    assert check_request(pipe, "2", "look-ahead", 8, 1.0, 0.0, 1.0, 4, " ").schedule == "shift:2"
    request = check_request(pipe, "2", "dual-loop", 8, 1.5, 0.0, 1.0, 4, "edm:7.0")
    assert request.schedule == "edm:7"  # canonical spelling
    image, frames, info = run_request(pipe, request)
    g = torch.Generator().manual_seed(4)
    plan = pf.SamplingPlan.from_nfe("dual-loop", 8, schedule="edm:7", guidance=pf.Guidance(1.5))
    want = pf.sample(net, randn_tensor((1, 1, 8, 8), generator=g), plan, labels=torch.tensor([2]), generator=g)
    assert torch.equal(image, want.clamp(-1, 1)) and info["schedule"] == "edm:7" and info["steps"] == plan.steps
    uniform, _, _ = run_request(pipe, check_request(pipe, "2", "dual-loop", 8, 1.5, 0.0, 1.0, 4, "uniform"))
    assert not torch.equal(uniform, image)
    for bad, message in [("cosine", "unknown schedule 'cosine'; choose uniform, shift:S"), ("shift:-2", "shift needs a finite number > 0")]:
        with pytest.raises(gr.Error, match=message):
            check_request(pipe, "2", "dual-loop", 8, 1.5, 0.0, 1.0, 4, bad)


@pytest.mark.parametrize("sampler", list(pf.SAMPLERS))
def test_every_public_sampler_gives_its_image_and_frames(sampler):
    from patchforcing.app import check_request, run_request

    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net))
    image, frames, info = run_request(pipe, check_request(pipe, "3", sampler, 8, 1.0, 0.0, 1.0, 5, "shift:3"))
    g = torch.Generator().manual_seed(5)
    want = pf.sample(net, randn_tensor((1, 1, 8, 8), generator=g), pf.SamplingPlan.from_nfe(sampler, 8, schedule="shift:3"),
                     labels=torch.tensor([3]), generator=g)
    assert torch.equal(image, want.clamp(-1, 1)) and info["sampler"] == sampler
    assert len(frames) >= 2 and all(set(f["panels"]) == {"state", "prediction", "difficulty", "patch time"} for f in frames)
