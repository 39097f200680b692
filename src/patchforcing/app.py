"""``patchforcing app``: a local page to sample a network and scrub through its sampler's steps.

    patchforcing app --checkpoint runs/digits            # then open http://127.0.0.1:7860

Pick a class (or type a prompt for a text network), a sampler, the NFE budget, the time grid of
the outer steps (``uniform``, ``shift:S`` or ``edm:RHO``; default the pipeline's saved schedule),
the guidance scale and interval and a seed; the page shows the image, then a slider walks through
the recorded network evaluations: the current state, the clean image the network predicts from
it, the difficulty map of the head and the per-patch time map (as the demo's GIFs,
``patchforcing.report.animation``). The image is ``pf.sample`` on the pipeline's noise for that
seed (``PatchForcingPipeline.prepare_noise``). Bad values get a message in the page.

The sampling endpoint ``/generate`` takes, in order: the class or prompt, the sampler, the NFE,
the guidance scale, the interval's from and to, the seed and the time grid.

Needs Gradio (extra ``[app]``) and diffusers (extra ``[vae]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
import torch
from torch import Tensor

from patchforcing.errors import ConfigError, PatchForcingError
from patchforcing.flow import patch_time_to_pixels
from patchforcing.hub.pipeline import PatchForcingPipeline
from patchforcing.images import to_uint8_nhwc
from patchforcing.runtime import resolve_device
from patchforcing.sampling import SAMPLERS, sample
from patchforcing.sampling.schedules import UNIFORM, canonical_schedule
from patchforcing.viz import colormap, patch_map_to_pixels

MAX_NFE = 512  # a page that asks for more is probably a typo; the CLI has no such bound
DISPLAY_PX = 256  # images are upscaled (nearest) to at least this many pixels
PANELS = ("state", "prediction", "difficulty", "patch time")
STEP_LABEL = "step: network evaluation, then the result"
SCHEDULES = (UNIFORM, "shift:3", "edm:7")  # the time grid's suggestions; any shift:S or edm:RHO may be typed


@dataclass
class Request:
    """One checked request of the page."""

    condition: dict[str, Any]  # keyword arguments of PatchForcingPipeline.condition
    sampler: str
    nfe: int
    guidance_scale: float
    guidance_interval: tuple[float, float] | None
    seed: int
    schedule: str = UNIFORM  # the time grid, in its canonical spelling


def _integer(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def check_request(pipe: PatchForcingPipeline, choice: Any, sampler: Any, nfe: Any, guidance_scale: Any,
                  interval_lo: Any, interval_hi: Any, seed: Any, schedule: Any = None) -> Request:
    """The page's values as a ``Request``; a bad value raises ``gr.Error`` with the fix.
    ``schedule`` None (or left empty) is the pipeline's saved time grid."""
    cfg = pipe.network.config
    if cfg.is_text:
        if not isinstance(choice, str) or not choice.strip():
            raise gr.Error("type a prompt: this is a text-to-image network")
        condition: dict[str, Any] = {"prompt": [choice]}
    elif cfg.num_classes > 0:
        label = _integer(choice, "the class", 0, cfg.num_classes - 1)
        condition = {"class_labels": [label]}
    else:
        condition = {}
    if sampler not in SAMPLERS:
        raise gr.Error(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    try:
        scale, lo, hi = float(guidance_scale), float(interval_lo), float(interval_hi)
    except (TypeError, ValueError):
        raise gr.Error("the guidance scale and interval must be numbers") from None
    if not math.isfinite(scale):
        raise gr.Error(f"the guidance scale must be a finite number, got {guidance_scale!r}; 1 turns guidance off")
    if not 0.0 <= lo <= hi <= 1.0:
        raise gr.Error(f"the guidance interval needs 0 <= from <= to <= 1, got {lo:g} and {hi:g}")
    interval = None if lo <= 0.0 and hi >= 1.0 else (lo, hi)
    if schedule is None or (isinstance(schedule, str) and not schedule.strip()):
        schedule = pipe.config.schedule
    try:
        grid = canonical_schedule(schedule)
    except ConfigError as err:
        raise gr.Error(f"time grid: {err}") from None
    return Request(condition, sampler, _integer(nfe, "NFE", 1, MAX_NFE), scale, interval, _integer(seed, "the seed", 0, 2**63 - 1),
                   grid)


@torch.no_grad()
def run_request(pipe: PatchForcingPipeline, request: Request) -> tuple[Tensor, list[dict[str, Any]], dict[str, Any]]:
    """Sample one image: ``(image (1, C, H, W) in [-1, 1], rendered frames, info)``.

    The noise is ``pipe.prepare_noise`` from ``torch.Generator().manual_seed(seed)``; the same
    generator then draws the random masks, as in the pipeline's call.
    """
    plan = pipe.plan(request.sampler, nfe=request.nfe, guidance_scale=request.guidance_scale,
                     guidance_interval=request.guidance_interval or (0.0, 1.0), schedule=request.schedule)
    given, batch = pipe.condition(**request.condition)
    generator = torch.Generator().manual_seed(request.seed)
    noise = pipe.prepare_noise(batch, generator)
    x, info = sample(pipe.network, noise, plan, generator=generator, return_info=True, record_trajectory=True, **given)
    frames = render_frames(pipe, info.pop("trajectory"), x, given)
    return pipe.decode(x), frames, info


def render_frames(pipe: PatchForcingPipeline, trajectory: list[dict], final: Tensor,
                  given: dict[str, Any]) -> list[dict[str, Any]]:
    """Per recorded evaluation, then the result ``final`` (1, C, H, W): panels of the state, the
    clean image the network predicts from it (conditional, for display; not counted as NFE), the
    difficulty map (log scale, relative per frame) and the per-patch time map (0 noise, 1 clean)."""
    net = pipe.network
    weight = next(net.parameters())
    y = given["condition"].value if "condition" in given else given["labels"]
    if y is None:  # an unconditional network samples its null class
        y = torch.full((final.shape[0],), net.config.null_label, dtype=torch.long, device=weight.device)
    frames, difficulty = [], None
    for k, frame in enumerate(trajectory):
        x, t = frame["x"].to(weight.device, weight.dtype), frame["t"].to(weight.device)
        if t.ndim == 1:  # a global-time network: one time for every patch
            t = t[:, None].expand(-1, net.config.num_patches)
        difficulty = frame["difficulty"] if frame["difficulty"] is not None else difficulty  # fixed in inner steps
        t_state = t.min(dim=1, keepdim=True).values.expand_as(t) if frame["context"] else t  # a context frame records the context times
        t_in = t_state if net.config.has_difficulty_head else t_state[:, 0]  # a global-time network takes (B,)
        v = net(x, t_in.to(weight.dtype), y).velocity
        prediction = x + (1 - patch_time_to_pixels(t_state.to(weight.dtype), net.config.patch_size, *x.shape[-2:])) * v
        state_img, pred_img = pipe.decode(x), pipe.decode(prediction)
        h, w = state_img.shape[-2:]
        panels = {"state": _upscale(to_uint8_nhwc(state_img)[0]), "prediction": _upscale(to_uint8_nhwc(pred_img)[0])}
        if difficulty is not None:
            d = torch.nn.functional.interpolate(difficulty.float(), size=(h, w), mode="nearest")
            panels["difficulty"] = _upscale(colormap(torch.log(d[:, 0].clamp_min(1e-12)))[0])
        else:
            panels["difficulty"] = _upscale(np.full((h, w, 3), 128, dtype=np.uint8))
        panels["patch time"] = _upscale(colormap(patch_map_to_pixels(t.float().cpu(), h, w), 0.0, 1.0)[0])
        caption = (f"evaluation {k + 1}/{len(trajectory)}{' (inner step: hard patches)' if frame['inner'] else ''}, "
                   f"mean patch time {float(t.float().mean()):.2f}")
        frames.append({"panels": panels, "caption": caption})
    done = _upscale(colormap(torch.ones(1, h, w), 0.0, 1.0)[0])
    result = _upscale(to_uint8_nhwc(pipe.decode(final))[0])
    frames.append({"panels": {"state": result, "prediction": result, "difficulty": frames[-1]["panels"]["difficulty"],
                              "patch time": done}, "caption": "result (t = 1 everywhere)"})
    return frames


def _upscale(tile: np.ndarray) -> PIL.Image.Image:
    """(H, W, C) uint8 -> a PIL image upscaled (nearest) to at least ``DISPLAY_PX`` pixels."""
    image = PIL.Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile)
    scale = max(1, DISPLAY_PX // max(image.size))
    return image.resize((image.width * scale, image.height * scale), PIL.Image.Resampling.NEAREST) if scale > 1 else image


def build_app(pipe: PatchForcingPipeline, title: str = "Patch Forcing") -> gr.Blocks:
    """The page for ``pipe``, opened with the image of the default values (sampled once here);
    its sampling endpoint is ``/generate`` and its scrubbing endpoint ``/step`` (Gradio's client can call both)."""
    cfg = pipe.network.config
    is_text = cfg.is_text
    samplers = list(SAMPLERS) if cfg.has_difficulty_head else ["euler"]
    default_choice = "a bold seven, upright" if is_text else ("0" if cfg.num_classes > 0 else "unconditional network")
    defaults = (default_choice, pipe.config.sampler if pipe.config.sampler in samplers else samplers[0], pipe.config.nfe,
                pipe.config.guidance_scale, 0.0, 1.0, 0, pipe.config.schedule)
    schedules = list(dict.fromkeys([pipe.config.schedule, *SCHEDULES]))  # the saved grid first

    def results(*values) -> dict[str, Any]:
        request = check_request(pipe, *values)
        try:
            image, frames, info = run_request(pipe, request)
        except PatchForcingError as err:
            raise gr.Error(str(err)) from None
        summary = (f"{info['sampler']}: {info['steps']} outer steps, {info['nfe']} network evaluations, seed {request.seed}"
                   + ("" if request.schedule == UNIFORM else f", time grid {request.schedule}"))
        return {"image": _upscale(to_uint8_nhwc(image)[0]), "summary": summary, "frames": frames}

    def generate(*values):
        out = results(*values)
        frames, last = out["frames"], out["frames"][-1]
        slider = gr.Slider(minimum=1, maximum=len(frames), value=len(frames), step=1, label=STEP_LABEL)
        return (out["image"], out["summary"], slider, frames, *[last["panels"][p] for p in PANELS], last["caption"])

    def show(frames, k):
        if not frames:
            raise gr.Error("generate an image first")
        frame = frames[min(max(int(k), 1), len(frames)) - 1]
        return (*[frame["panels"][p] for p in PANELS], frame["caption"])

    first = results(*defaults)  # the page opens with an image (and works without JavaScript events)
    n, last = len(first["frames"]), first["frames"][-1]
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"## {title}\nEvery patch has its own diffusion time; the difficulty head decides which patches run ahead.")
        with gr.Row():
            with gr.Column(scale=1):
                if is_text:
                    choice = gr.Textbox(label="prompt", value=defaults[0])
                elif cfg.num_classes > 0:
                    choice = gr.Dropdown(choices=[str(c) for c in range(cfg.num_classes)], value=defaults[0], label="class")
                else:
                    choice = gr.Textbox(label="class", value=defaults[0], interactive=False)
                sampler = gr.Dropdown(choices=samplers, value=defaults[1], label="sampler")
                nfe = gr.Number(value=defaults[2], label="NFE (network evaluations)", precision=0)
                schedule = gr.Dropdown(choices=schedules, value=defaults[7], allow_custom_value=True,
                                       label="time grid (uniform, shift:S or edm:RHO; type any S or RHO > 0)")
                scale = gr.Number(value=defaults[3], label="guidance scale (1 = off)")
                with gr.Row():
                    lo = gr.Number(value=defaults[4], label="guide from t =")
                    hi = gr.Number(value=defaults[5], label="to t =")
                seed = gr.Number(value=defaults[6], label="seed", precision=0)
                button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=1):
                image = gr.Image(value=first["image"], label="image", type="pil", format="png", elem_id="pf-image")
                summary = gr.Markdown(first["summary"])
        frames = gr.State(first["frames"])
        step = gr.Slider(minimum=1, maximum=n, value=n, step=1, label=STEP_LABEL, elem_id="pf-step")
        with gr.Row():
            panel_views = [gr.Image(value=last["panels"][p], label=p, type="pil", format="png") for p in PANELS]
        caption = gr.Markdown(last["caption"])
        gr.Markdown("Colours: dark blue = low, yellow = high (difficulty: easy -> hard; patch time: noise -> clean).")
        button.click(generate, [choice, sampler, nfe, scale, lo, hi, seed, schedule],
                     [image, summary, step, frames, *panel_views, caption], api_name="generate")
        step.change(show, [frames, step], [*panel_views, caption], api_name="step")
    return page


def launch(checkpoint: str, *, vae: str | None = None, port: int = 7860, device: str = "auto", block: bool = True) -> gr.Blocks:
    """Load ``checkpoint`` (run folder, checkpoint file, exported folder or cached Hub id) and serve the page on 127.0.0.1."""
    pipe = PatchForcingPipeline.from_checkpoint(checkpoint, vae=vae, device=resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    page = build_app(pipe, title=f"Patch Forcing: {checkpoint}")
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=not block, show_error=True)
    return page
