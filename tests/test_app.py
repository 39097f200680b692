"""The interactive page: its endpoint returns ``pf.sample``'s image for the seed, bad values get a
message, what the sessions keep stays within its bound, and the page is served on loopback only
(Gradio's client against a launched page); a real browser in a slow test."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import torch

import patchforcing as pf
from conftest import free_port, make_model, serve_tiny_app

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("diffusers")
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from PIL import Image  # noqa: E402

from patchforcing.app import SessionLimits, build_app, serve, shown_panels  # noqa: E402
from patchforcing.hub.transformer import PatchForcingTransformerModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served():
    """A tiny network's page, launched on a free local port; yields (network, url)."""
    yield from serve_tiny_app()


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
    first = client.predict(1, api_name="/step")  # scrubbing: the session's frames, first outer step
    assert first[-1].startswith(f"frame 1/{result[2]['maximum']}: outer step 1/{steps}; network evaluation 1 of ") and len(first) == 5
    state, time_map = np.asarray(Image.open(first[0])), np.asarray(Image.open(first[3]))
    assert state.shape[:2] == (256, 256) and not np.array_equal(state, image)  # the noisy state, not the result
    assert len(np.unique(time_map.reshape(-1, time_map.shape[-1]), axis=0)) == 1  # all patches at t = 0


@pytest.mark.parametrize("values, message", [
    (("3", "look-ahead", 0, 1.0, 0.0, 1.0, 0, "uniform"), "NFE must be a whole number from 1"),
    (("3", "look-ahead", 8, 1.0, 0.7, 0.2, 0, "uniform"), "guidance interval"),
    (("3", "look-ahead", 8, 1.0, 0.0, 1.0, -1, "uniform"), "the seed must be a whole number from 0 to 9223372036854775807"),
    (("3", "look-ahead", 8, 1.0, 0.0, 1.0, "2.5", "uniform"), "the seed must be a whole number"),
    (("3", "look-ahead", 8, 1.0, 0.0, 1.0, str(2**63), "uniform"), "the seed must be a whole number"),
    (("3", "look-ahead", 8, 1.0, -0.5, 0.5, 0, "uniform"), r"guidance interval: guidance_interval needs 0 <= lo <= hi <= 1"),
    (("3", "look-ahead", 8, 1.0, 0.5, 2.0, 0, "uniform"), r"guidance interval: guidance_interval needs 0 <= lo <= hi <= 1"),
    (("3", "look-ahead", 8, 1e30, 0.0, 1.0, 0, "uniform"), r"guidance scale 1e\+30 made the samples infinite or NaN"),
    (("3", "euler-pf", 8, -1e30, 0.2, 0.9, 0, "uniform"), r"guidance scale -1e\+30 made the samples infinite or NaN"),
    (("3", "dual-loop", 2, 1.0, 0.0, 1.0, 0, "uniform"), "budget"),
    (("3", "look-ahead", 8, 1.0, 0.0, 1.0, 0, "cosine"), "time grid: unknown schedule 'cosine'; choose uniform, shift:ALPHA"),
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
    assert len(frames) == 9 and frames[-1]["caption"] == "frame 9/9: the result (t = 1 everywhere) of 2 outer steps, 8 network evaluations"
    assert all(f["panels"]["state"].shape == (8, 8, 1) and f["panels"]["state"].dtype == np.uint8 for f in frames)  # stored small
    assert all([p.size for p in shown_panels(f)] == [(256, 256)] * 4 for f in frames)  # shown upscaled
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
    for bad, message in [("cosine", "unknown schedule 'cosine'; choose uniform, shift:ALPHA"), ("shift:-2", "shift needs a finite number > 0")]:
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
    # the captions count the network evaluations each frame stands for: together exactly the run's NFE
    spans = [re.search(r"network evaluations? (\d+)(?:-(\d+))? of (\d+)", f["caption"]).groups() for f in frames[:-1]]
    ends = [int(b or a) for a, b, _ in spans]
    assert [int(a) for a, _, _ in spans] == [1, *[e + 1 for e in ends[:-1]]] and ends[-1] == info["nfe"]
    assert {int(total) for _, _, total in spans} == {info["nfe"]}
    outer = [f for f in frames if re.search(r": outer step \d+/", f["caption"])]
    assert len(outer) == info["steps"] and re.match(rf"frame \d+/{len(frames)}: outer step {info['steps']}/{info['steps']}\b",
                                                    outer[-1]["caption"])
    assert frames[-1]["caption"].endswith(f"of {info['steps']} outer steps, {info['nfe']} network evaluations")


# --- the endpoints by name, the grids offered, exact seeds ------------------------------------------------
def test_endpoints_take_named_parameters_and_the_grid_presets_include_edm3(served, client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == [
        "class_or_prompt", "sampler", "nfe", "guidance_scale", "guide_from", "guide_to", "seed", "time_grid"]
    assert [p["parameter_name"] for p in api["/step"]["parameters"]] == ["frame"]  # the session's frames stay on the server
    named = client.predict(class_or_prompt="3", sampler="look-ahead", nfe=8, guidance_scale=1.0, guide_from=0.0, guide_to=1.0,
                           seed="11", time_grid="uniform", api_name="/generate")
    assert np.array_equal(np.asarray(Image.open(named[0])), _expected(served[0], 3, 11, "look-ahead", 8, 1.0))
    assert client.predict(frame=named[2]["maximum"], api_name="/step")[-1].startswith(f"frame {named[2]['maximum']}/")
    with pytest.raises(Exception, match=rf"greater than maximum value {named[2]['maximum']}") as err:  # the session's slider
        client.predict(frame=named[2]["maximum"] + 1, api_name="/step")
    assert "Traceback" not in str(err.value)
    grids = next(c["props"]["choices"] for c in client.config["components"] if str(c["props"].get("label", "")).startswith("time grid"))
    assert [g[0] for g in grids] == ["uniform", "shift:3", "edm:3", "edm:7"]


def test_seeds_beyond_two_to_the_53_stay_exact():
    from patchforcing.app import check_request, run_request

    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net))
    images = {}
    for seed in (2**53, 2**53 + 1, 2**63 - 1):
        for given in (seed, str(seed)):  # an integer (the client) or the page's text
            request = check_request(pipe, "1", "euler-pf", 4, 1.0, 0.0, 1.0, given)
            assert request.seed == seed and type(request.seed) is int
        images[seed] = run_request(pipe, request)[0]
        g = torch.Generator().manual_seed(seed)
        want = pf.sample(net, randn_tensor((1, 1, 8, 8), generator=g), sampler="euler-pf", steps=4, labels=torch.tensor([1]))
        assert torch.equal(images[seed], want.clamp(-1, 1))
    assert not torch.equal(images[2**53], images[2**53 + 1])  # as floats these two seeds were the same number
    with pytest.raises(gr.Error, match=r"arrived as a floating-point number, exact only up to 2\*\*53"):
        check_request(pipe, "1", "euler-pf", 4, 1.0, 0.0, 1.0, float(2**53 + 2))


# --- what the sessions keep -----------------------------------------------------------------------------------
def _held(page) -> list[int]:
    """Bytes of the frames each session holds now, over all the page's tabs (what Gradio's state holder keeps)."""
    from patchforcing.app import frames_nbytes

    held = [[v for v in s.state_data.values() if isinstance(v, list)] for s in page.state_holder.session_data.values()]
    return [sum(map(frames_nbytes, lists)) for lists in held if lists]


def test_sessions_never_hold_more_than_the_bound():
    """Six clients at NFE 64 against a page that keeps 2 sessions of at most 12 KiB: the oldest
    sessions are dropped, the others hold evenly spaced uint8 frames within their budget."""
    torch.set_num_threads(1)
    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), nfe=8)
    pipe.set_progress_bar_config(disable=True)
    limits = SessionLimits(sessions=2, frame_bytes=12 * 2**10)
    page = build_app(pipe, limits=limits)
    url = serve(page, limits=limits, port=free_port(), block=False)
    try:
        clients, held = [gradio_client.Client(url, verbose=False) for _ in range(6)], []
        for c in clients:
            summary, slider = c.predict("2", "dual-loop", 64, 1.0, 0.0, 1.0, "5", "uniform", api_name="/generate")[1:3]
            held.append(_held(page))
        # 65 frames do not fit 12 KiB: evenly spaced ones do, the first and the result among them
        kept = int(re.search(r"the slider shows (\d+) of its 65 frames \(this tab keeps 6 KiB of frames\)", summary)[1])
        assert 2 <= kept < 65 and slider["maximum"] == kept
        assert [len(h) for h in held] == [1, 2, 2, 2, 2, 2] and max(map(max, held)) <= limits.frame_bytes
        assert sum(held[-1]) <= limits.total_bytes
        assert clients[-1].predict(1, api_name="/step")[-1].startswith("frame 1/65: outer step 1/16")
        assert clients[-1].predict(kept, api_name="/step")[-1].startswith("frame 65/65: the result")
        with pytest.raises(Exception, match="this page holds no frames: press Generate") as err:
            clients[0].predict(1, api_name="/step")  # the oldest session was dropped
        assert "Traceback" not in str(err.value)
        tiles = [a for s in page.state_holder.session_data.values() for v in s.state_data.values() if isinstance(v, list)
                 for f in v for a in f["panels"].values()]
        assert tiles and all(a.dtype == np.uint8 and a.shape[:2] in {(8, 8), (4, 4), (1, 1)} for a in tiles)  # network resolution
    finally:
        page.close()


def test_a_session_s_frames_are_dropped_after_its_time_out():
    torch.set_num_threads(1)
    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), nfe=4)
    pipe.set_progress_bar_config(disable=True)
    limits = SessionLimits(minutes=1 / 60)  # one second
    page = build_app(pipe, limits=limits)
    url = serve(page, limits=limits, port=free_port(), block=False)
    try:
        client = gradio_client.Client(url, verbose=False)
        client.predict("2", "euler-pf", 4, 1.0, 0.0, 1.0, "5", "uniform", api_name="/generate")
        assert client.predict(1, api_name="/step")[-1].startswith("frame 1/5")
        deadline = time.monotonic() + 30
        while _held(page) and time.monotonic() < deadline:
            time.sleep(0.5)  # Gradio drops expired state once a second
        assert _held(page) == []
        with pytest.raises(Exception, match="this page holds no frames: press Generate"):
            client.predict(1, api_name="/step")
    finally:
        page.close()


# --- where the page is served ------------------------------------------------------------------------------
def test_the_page_is_served_on_loopback_without_a_share_link_whatever_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("GRADIO_SHARE", "True")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), nfe=4)
    pipe.set_progress_bar_config(disable=True)
    page = build_app(pipe)
    port = free_port()
    try:
        assert serve(page, port=port, block=False) == f"http://127.0.0.1:{port}"
        assert page.share is False and page.share_url is None and page.server_name == "127.0.0.1"
    finally:
        page.close()
    out = capsys.readouterr()
    assert out.out.startswith(f"serving the page on http://127.0.0.1:{port} (Ctrl+C stops it); it keeps the frames of at most 16 sessions")
    assert "share=True" not in out.out + out.err and "public link" not in out.out + out.err and "warning" not in out.err


def test_another_address_is_explicit_and_warned_and_a_taken_port_is_one_line(capsys):
    from patchforcing.app_settings import is_loopback
    from patchforcing.errors import ConfigError

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), nfe=4)
    pipe.set_progress_bar_config(disable=True)
    page = build_app(pipe)
    port = free_port()
    try:
        serve(page, host="0.0.0.0", port=port, block=False)
        assert page.server_name == "0.0.0.0" and page.share is False
    finally:
        page.close()
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: serving on 0.0.0.0:{port}: anyone who can reach this machine") and "drop --host" in warning
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot serve on 127.0.0.1:{busy} .*pass another --port") as err:
            serve(build_app(pipe), port=busy, block=False)
    assert "\n" not in str(err.value)


def test_app_help_states_the_bound_the_address_and_the_port(capsys):
    from patchforcing.cli import main

    with pytest.raises(SystemExit):
        main(["app", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "served on http://127.0.0.1:7860 (--port changes the port; --host another address, with a warning), never through a share link" in text
    assert "keeps the frames of at most 16 sessions, 32 MiB each as uint8 tiles (at most 512 MiB in all)" in text
    assert "--port PORT the port the page is served on [default: 7860]" in text and "--max-sessions" in text
