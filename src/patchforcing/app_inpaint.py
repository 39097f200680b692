"""The app's inpainting tab: paint a mask with a brush on a generated or uploaded picture, complete it
with any sampler and mode, then scrub through the steps (``docs/inpainting.md``).

The tab's endpoint ``/inpaint`` takes the named parameters ``picture`` (Gradio's ImageEditor value:
the background and the painted layers), ``class_or_prompt``, ``mode`` (``same``, ``ahead``, ``clean``),
``sampler``, ``nfe`` and ``seed``; ``/inpaint_step`` takes ``frame``. Painted pixels (any layer's
alpha > 0) are generated, the rest is kept. The picture is taken to the network's size (a square
centre crop, then an area resize: a picture the page upscaled comes back exactly) and to its channels
(grey or colour); a pixel of the network is generated if any painted pixel falls in it. The result is
``pf.inpaint`` on the pipeline's noise for the seed (``PatchForcingPipeline.prepare_noise``), as the
pipeline's ``image=``, ``mask_image=`` call makes it; each frame shows what the network saw: the kept
patches noised to their mode's time, and that time in the patch-time map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
import torch

from patchforcing.errors import PatchForcingError
from patchforcing.hub.inpaint import image_request
from patchforcing.images import to_uint8_nhwc
from patchforcing.inpainting import default_mode, patch_any
from patchforcing.sampling import MODES, SAMPLERS
from patchforcing.sampling.region import AHEAD_RATIO, KnownMode, Region

TAB = "Inpaint"
STEP_LABEL = "frame: one per outer step and per inner evaluation, then the result"


def editor_inputs(pipe, value: Any) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """The ImageEditor's value -> (picture, mask picture: white = generate) at the size the pipeline takes."""
    if not isinstance(value, dict) or value.get("background") is None:
        raise gr.Error("upload a picture (or press 'Use the generated image'), then paint the region to generate")
    background = _pil(value["background"])
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        array = np.asarray(_pil(layer).convert("RGBA"))
        if array.shape[:2] == painted.shape:
            painted |= array[..., 3] > 0
    if not painted.any():
        raise gr.Error("paint the region to generate with the brush (nothing is painted yet)")
    side = _picture_side(pipe)
    grey = (pipe.vae.config.in_channels if pipe.vae is not None else pipe.network.config.in_channels) == 1
    picture = _square(background.convert("L" if grey else "RGB")).resize((side, side), PIL.Image.Resampling.BOX)
    mask = _square(PIL.Image.fromarray(painted.astype(np.uint8) * 255)).resize((side, side), PIL.Image.Resampling.BOX)
    return picture, PIL.Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))


@torch.no_grad()
def run_inpaint(pipe, value: Any, condition: dict[str, Any] | None, mode: str, sampler: str, nfe: int, seed: int,
                render_frames: Callable) -> tuple[torch.Tensor, list[dict[str, Any]], dict[str, Any]]:
    """One completion: ``(picture (1, C, R, R) in [-1, 1], frames (render_frames), info)``."""
    picture, mask = editor_inputs(pipe, value)
    plan = pipe.plan(sampler, nfe=nfe)
    if condition is None:  # the null class: the known part alone says what to draw
        given, batch = {"labels": torch.tensor([pipe.network.config.null_label], device=pipe._execution_device)}, 1
    else:
        given, batch = pipe.condition(**condition)
    generator = torch.Generator().manual_seed(seed)
    noise = pipe.prepare_noise(batch, generator)
    request = image_request(pipe, picture, mask, None, mode, batch)
    x, info = request.run(pipe.network, noise, plan, generator=generator, return_info=True, record_trajectory=True, **given)
    trajectory = network_view(request, plan, noise, info.pop("trajectory"), pipe.network.config.patch_size)
    frames = render_frames(pipe, trajectory, x, given)
    return request.finish(pipe.decode(x)), frames, info


def network_view(request, plan, noise: torch.Tensor, trajectory: list[dict], patch_size: int) -> list[dict]:
    """The recorded frames as the network saw them: kept patches noised to their mode's time, and that time."""
    known = ~patch_any(request.mask > 0, patch_size).cpu()
    ratio = float(getattr(plan.options, "context_ratio", AHEAD_RATIO))
    region = Region(request.x_in.cpu().float(), known, patch_size, mode=KnownMode.parse(request.mode), context_ratio=ratio)
    out = []
    for frame in trajectory:
        t = frame["t"]
        out.append({**frame, "x": region.network_state(frame["x"], noise.cpu().float(), t), "t": region.network_times(t)})
    return out


def inpaint_tab(pipe, *, render_frames: Callable, keep_within: Callable, shown_panels: Callable, frame_bytes: int,
                state_seconds: float | None = None, source: gr.components.Component | None = None) -> None:
    """Add the tab to the page being built (inside ``gr.Blocks``); the helpers are the page's own.

    Args:
        render_frames, keep_within, shown_panels: ``patchforcing.app``'s frame rendering, session bound and display.
        frame_bytes: the most bytes of frames a session keeps for this tab.
        state_seconds: a session's frames are dropped this long after they were made (None: Gradio's default).
        source: the page's generated image: a button copies it into the editor.
    """
    cfg = pipe.network.config
    samplers = list(SAMPLERS) if cfg.has_difficulty_head else ["euler"]
    modes = list(MODES) if cfg.has_difficulty_head else ["same"]
    default_sampler = pipe.config.sampler if pipe.config.sampler in samplers else samplers[0]

    def inpaint(picture, class_or_prompt, mode, sampler, nfe, seed):
        if mode not in modes:
            raise gr.Error(f"mode must be one of {', '.join(modes)}, got {mode!r}")
        if sampler not in samplers:
            raise gr.Error(f"unknown sampler {sampler!r}; choose one of: {', '.join(samplers)}")
        number, whole = _whole(nfe, "NFE", 1, 512), _whole(seed, "the seed", 0, 2**63 - 1)
        try:
            image, frames, info = run_inpaint(pipe, picture, condition_of(pipe, class_or_prompt), mode, sampler, number,
                                              whole, render_frames)
        except PatchForcingError as err:
            raise gr.Error(str(err)) from None
        kept = keep_within(frames, frame_bytes)
        summary = (f"{info['sampler']}, mode {mode}: {info['steps']} outer steps, {info['nfe']} network evaluations, seed {whole}")
        slider = gr.Slider(minimum=1, maximum=max(len(kept), 2), value=len(kept), step=1, label=STEP_LABEL)
        return (_upscaled(to_uint8_nhwc(image)[0]), summary, slider, kept, *shown_panels(kept[-1]), kept[-1]["caption"])

    def show(frames, frame):
        if not frames:
            raise gr.Error("complete a picture first (Inpaint)")
        chosen = frames[min(max(_whole(frame, "the frame", 1, 2**31), 1), len(frames)) - 1]
        return (*shown_panels(chosen), chosen["caption"])

    with gr.Tab(TAB):
        gr.Markdown("Paint the region to generate; the rest is kept exactly. `same` feeds the kept patches at the current "
                    "time (replacement), `ahead` at look-ahead's context time, `clean` at t = 1 (docs/inpainting.md).")
        with gr.Row():
            with gr.Column(scale=1):
                editor = gr.ImageEditor(label="picture: paint the region to generate", type="pil", image_mode="RGBA",
                                        brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"), transforms=(), layers=False)
                if source is not None:
                    copy = gr.Button("Use the generated image")
                    copy.click(lambda image: {"background": image, "layers": [], "composite": image}, source, editor,
                               api_visibility="private")
                if cfg.is_text:
                    choice = gr.Textbox(label="prompt", value="a bold seven, upright")
                elif cfg.num_classes > 0:
                    choice = gr.Dropdown(choices=["unconditional", *map(str, range(cfg.num_classes))], value="unconditional",
                                         label="class of the completion")
                else:
                    choice = gr.Textbox(label="class", value="unconditional network", interactive=False)
                mode = gr.Radio(choices=modes, value=default_mode(cfg), label="mode of the kept patches")
                sampler = gr.Dropdown(choices=samplers, value=default_sampler, label="sampler")
                nfe = gr.Number(value=pipe.config.nfe, label="NFE (network evaluations, 1 to 512)", precision=0)
                seed = gr.Textbox(value="0", label="seed (a whole number from 0 to 2**63 - 1)")
                button = gr.Button("Inpaint", variant="primary")
            with gr.Column(scale=1):
                result = gr.Image(label="result", type="pil", format="png", elem_id="pf-inpaint-result")
                summary = gr.Markdown("")
        frames = gr.State(None, time_to_live=state_seconds)
        step = gr.Slider(minimum=1, maximum=2, value=1, step=1, label=STEP_LABEL)  # set by each completion
        with gr.Row():
            views = [gr.Image(label=p, type="pil", format="png") for p in ("state", "prediction", "difficulty", "patch time")]
        caption = gr.Markdown("")
        button.click(inpaint, [editor, choice, mode, sampler, nfe, seed], [result, summary, step, frames, *views, caption],
                     api_name="inpaint")
        step.change(show, [frames, step], [*views, caption], api_name="inpaint_step")


def condition_of(pipe, choice: Any) -> dict[str, Any] | None:
    """``PatchForcingPipeline.condition``'s keywords for the tab's class or prompt; None: the null class (unconditional)."""
    cfg = pipe.network.config
    if cfg.is_text:
        if not isinstance(choice, str) or not choice.strip():
            raise gr.Error("type a prompt: this is a text-to-image network")
        return {"prompt": [choice]}
    if cfg.num_classes <= 0:
        return {}
    if choice is None or str(choice).strip() in ("", "unconditional"):
        if cfg.null_label is None:
            raise gr.Error("this network has no null class: pick a class")
        return None
    return {"class_labels": [_whole(choice, "the class", 0, cfg.num_classes - 1)]}


def _upscaled(tile: np.ndarray, px: int = 256) -> PIL.Image.Image:
    """(H, W, C) uint8 -> a PIL image upscaled (nearest) to at least ``px`` pixels."""
    image = PIL.Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile)
    scale = max(1, px // max(image.size))
    return image.resize((image.width * scale, image.height * scale), PIL.Image.Resampling.NEAREST)


def _pil(value: Any) -> PIL.Image.Image:
    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return PIL.Image.fromarray(value)
    if isinstance(value, str):
        return PIL.Image.open(value)
    raise gr.Error(f"the editor sent a {type(value).__name__}; upload a picture")


def _square(picture: PIL.Image.Image) -> PIL.Image.Image:
    """The centre square of a picture."""
    w, h = picture.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return picture.crop((left, top, left + side, top + side))


def _picture_side(pipe) -> int:
    """The side of the pictures the pipeline takes: the network's, times the VAE's factor for latent networks."""
    side = pipe.network.config.input_size
    if pipe.vae is not None:
        side *= 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return side


def _whole(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}") from None
    if isinstance(value, float) and value != number or not low <= number <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return number
