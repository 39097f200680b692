"""``patchforcing app``: a local page to sample a network and scrub through its sampler's steps.

    patchforcing app --checkpoint runs/digits --port 7860   # then open http://127.0.0.1:7860

Pick a class (or type a prompt for a text network), a sampler, the NFE budget, the time grid of
the outer steps (``uniform``, ``shift:ALPHA`` or ``edm:RHO``; default the pipeline's saved schedule),
the guidance scale and interval and a seed; the page shows the image, then a slider walks through
the sampler's recorded frames, one per outer step and one per inner evaluation (dual-loop's hard
patches, a Heun correction), then the result: the current state, the clean image the network
predicts from it, the difficulty map of the head and the per-patch time map (as the demo's GIFs,
``patchforcing.report.animation``); each frame's caption names the network evaluations it stands
for. The image is ``pf.sample`` on the pipeline's noise for that seed
(``PatchForcingPipeline.prepare_noise``). Bad values get a message in the page.

The Inpaint tab (``app_inpaint.py``) paints a mask on a generated or uploaded picture and completes
it (endpoint ``/inpaint``). The sampling endpoint ``/generate`` takes the named parameters ``class_or_prompt``, ``sampler``,
``nfe``, ``guidance_scale``, ``guide_from``, ``guide_to``, ``seed`` (a whole number, as text, up to
2**63 - 1) and ``time_grid``; ``/step`` takes ``frame``.

What a session keeps is bounded (``SessionLimits``): its frames as uint8 tiles at the network's
resolution (upscaled only when shown), at most ``frame_bytes`` of them over its tabs (half each;
evenly spaced frames beyond), for the ``sessions`` most recent sessions, dropped ``minutes`` after
the session's last Generate.
The page is served on 127.0.0.1 and never through a share link; another address is an explicit
``host`` (``--host``), with a warning.

Needs Gradio (extra ``[app]``) and diffusers (extra ``[vae]``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
import torch
from torch import Tensor

from patchforcing.app_inpaint import inpaint_tab
from patchforcing.app_settings import HOST, PORT, SessionLimits, check_port, is_loopback, mib
from patchforcing.errors import ConfigError, PatchForcingError
from patchforcing.flow import patch_time_to_pixels
from patchforcing.hub.pipeline import PatchForcingPipeline
from patchforcing.images import to_uint8_nhwc
from patchforcing.runtime import resolve_device
from patchforcing.sampling import SAMPLERS, sample
from patchforcing.sampling.guidance import check_interval
from patchforcing.sampling.schedules import UNIFORM, canonical_schedule
from patchforcing.viz import colormap, patch_map_to_pixels

MAX_NFE = 512  # a page that asks for more is probably a typo; the CLI's plans stop at sampling.registry.MAX_PLAN_NFE
MAX_SEED = 2**63 - 1  # seeds are whole numbers, taken as text so a browser never rounds them to a float
DISPLAY_PX = 256  # frames are upscaled (nearest) to at least this many pixels when shown
PANELS = ("state", "prediction", "difficulty", "patch time")
STEP_LABEL = "frame: one per outer step and per inner evaluation, then the result"
# The time grid's suggestions (edm:3 the recommended one, docs/sampling.md); any shift:ALPHA or edm:RHO may be typed.
SCHEDULES = (UNIFORM, "shift:3", "edm:3", "edm:7")
OPENING = "opening"  # a session's frame state before its first Generate: the opening image's frames
TABS = 2  # the sampling tab and the Inpaint tab (app_inpaint.py), each with its frames


def _refused(message: str) -> gr.Error:
    """The page's message for a bad value (shown in the page; no traceback on the server's console)."""
    return gr.Error(message, print_exception=False)


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
    """A whole number from ``low`` to ``high``, exact for integers and text of any size (no float on the way)."""
    if isinstance(value, float) and math.isfinite(value) and abs(value) > 2**53:
        raise _refused(f"{name} {value!r} arrived as a floating-point number, exact only up to 2**53: pass it as an integer or as text")
    try:
        number = Decimal(value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value).strip())
    except (TypeError, ValueError, InvalidOperation):
        number = None
    if isinstance(value, bool) or number is None or not number.is_finite() or number != number.to_integral_value() or not low <= number <= high:
        raise _refused(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def check_request(pipe: PatchForcingPipeline, choice: Any, sampler: Any, nfe: Any, guidance_scale: Any,
                  interval_lo: Any, interval_hi: Any, seed: Any, schedule: Any = None) -> Request:
    """The page's values as a ``Request``; a bad value raises ``gr.Error`` with the fix.
    ``schedule`` None (or left empty) is the pipeline's saved time grid; the interval is checked as
    every interval is (``sampling.guidance.check_interval``)."""
    cfg = pipe.network.config
    if cfg.is_text:
        if not isinstance(choice, str) or not choice.strip():
            raise _refused("type a prompt: this is a text-to-image network")
        condition: dict[str, Any] = {"prompt": [choice]}
    elif cfg.num_classes > 0:
        label = _integer(choice, "the class", 0, cfg.num_classes - 1)
        condition = {"class_labels": [label]}
    else:
        condition = {}
    if sampler not in SAMPLERS:
        raise _refused(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    try:
        scale = float(guidance_scale)
    except (TypeError, ValueError):
        raise _refused("the guidance scale must be a number") from None
    if not math.isfinite(scale):
        raise _refused(f"the guidance scale must be a finite number, got {guidance_scale!r}; 1 turns guidance off")
    try:
        lo, hi = check_interval((interval_lo, interval_hi))
    except ConfigError as err:
        raise _refused(f"the guidance interval: {err}") from None
    interval = None if lo <= 0.0 and hi >= 1.0 else (lo, hi)
    if schedule is None or (isinstance(schedule, str) and not schedule.strip()):
        schedule = pipe.config.schedule
    try:
        grid = canonical_schedule(schedule)
    except ConfigError as err:
        raise _refused(f"time grid: {err}") from None
    return Request(condition, sampler, _integer(nfe, "NFE", 1, MAX_NFE), scale, interval, _integer(seed, "the seed", 0, MAX_SEED),
                   grid)


@torch.no_grad()
def run_request(pipe: PatchForcingPipeline, request: Request) -> tuple[Tensor, list[dict[str, Any]], dict[str, Any]]:
    """Sample one image: ``(image (1, C, H, W) in [-1, 1], frames (render_frames), info)``.

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
    """Per recorded frame, then the result ``final`` (1, C, H, W): uint8 panels at the network's
    resolution (``show`` upscales them) of the state, the clean image the network predicts from it
    (conditional, for display; not counted as NFE), the difficulty map (log scale, relative per
    frame) and the per-patch time map (0 noise, 1 clean), and a caption naming the network
    evaluations the frame stands for (a look-ahead frame two: the state and its context)."""
    net = pipe.network
    cfg = net.config
    weight = next(net.parameters())
    y = given["condition"].value if "condition" in given else given["labels"]
    if y is None:  # an unconditional network samples its null class
        y = torch.full((final.shape[0],), cfg.null_label, dtype=torch.long, device=weight.device)
    side = cfg.input_size // cfg.patch_size  # the patch grid
    steps = sum(not f["inner"] for f in trajectory)
    nfe = sum(2 if f["context"] else 1 for f in trajectory)
    frames, difficulty, done, outer = [], None, 0, 0
    for k, frame in enumerate(trajectory):
        x, t = frame["x"].to(weight.device, weight.dtype), frame["t"].to(weight.device)
        if t.ndim == 1:  # a global-time network: one time for every patch
            t = t[:, None].expand(-1, cfg.num_patches)
        if frame["difficulty"] is not None:  # fixed in inner steps: the same tile is kept once
            difficulty = colormap(torch.log(frame["difficulty"][:, 0].float().clamp_min(1e-12)))[0]
        t_state = t.min(dim=1, keepdim=True).values.expand_as(t) if frame["context"] else t  # a context frame records the context times
        t_in = t_state if cfg.has_difficulty_head else t_state[:, 0]  # a global-time network takes (B,)
        v = net(x, t_in.to(weight.dtype), y).velocity
        prediction = x + (1 - patch_time_to_pixels(t_state.to(weight.dtype), cfg.patch_size, *x.shape[-2:])) * v
        state = to_uint8_nhwc(pipe.decode(x))[0]
        panels = {"state": state, "prediction": to_uint8_nhwc(pipe.decode(prediction))[0],
                  "difficulty": difficulty if difficulty is not None else np.full((1, 1, 3), 128, dtype=np.uint8),
                  "patch time": colormap(patch_map_to_pixels(t.float().cpu(), side, side), 0.0, 1.0)[0]}
        evals = 2 if frame["context"] else 1
        spent = f"network evaluation{'s' if evals > 1 else ''} {done + 1}{f'-{done + evals}' if evals > 1 else ''} of {nfe}"
        done += evals
        outer += not frame["inner"]
        what = ("an inner evaluation (hard patches, or a correction)" if frame["inner"]
                else f"outer step {outer}/{steps}{' and its look-ahead context' if frame['context'] else ''}")
        frames.append({"panels": panels, "caption": f"frame {k + 1}/{len(trajectory) + 1}: {what}; {spent}; "
                                                    f"mean patch time {float(t.float().mean()):.2f}"})
    result = to_uint8_nhwc(pipe.decode(final))[0]
    frames.append({"panels": {"state": result, "prediction": result, "difficulty": frames[-1]["panels"]["difficulty"],
                              "patch time": colormap(torch.ones(1, side, side), 0.0, 1.0)[0]},
                   "caption": f"frame {len(trajectory) + 1}/{len(trajectory) + 1}: the result (t = 1 everywhere) of {steps} "
                              f"outer steps, {nfe} network evaluations"})
    return frames


def respond(pipe: PatchForcingPipeline, values: tuple, frame_bytes: int) -> dict[str, Any]:
    """What the page shows for the values of its form (``check_request``'s order): ``image``, ``summary``
    and the ``frames`` the session keeps (within ``frame_bytes``); a bad value, or a run the
    library refuses, raises ``gr.Error`` with the library's one line."""
    request = check_request(pipe, *values)
    try:
        image, frames, info = run_request(pipe, request)
    except PatchForcingError as err:
        raise _refused(str(err)) from None
    kept = keep_within(frames, frame_bytes)
    summary = (f"{info['sampler']}: {info['steps']} outer steps, {info['nfe']} network evaluations, seed {request.seed}"
               + ("" if request.schedule == UNIFORM else f", time grid {request.schedule}")
               + ("" if len(kept) == len(frames) else
                  f"; the slider shows {len(kept)} of its {len(frames)} frames (this tab keeps {mib(frame_bytes)} of frames)"))
    return {"image": _shown(to_uint8_nhwc(image)[0]), "summary": summary, "frames": kept}


def frames_nbytes(frames: list[dict[str, Any]]) -> int:
    """Bytes of the tiles ``frames`` hold (a tile shared by several frames counted once)."""
    tiles = {id(a): a for f in frames for a in f["panels"].values()}
    return sum(a.nbytes for a in tiles.values())


def keep_within(frames: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """``frames``, or as many evenly spaced ones (the first and the result always) as fit ``budget``
    bytes; only the result when not even two fit."""
    k = len(frames)
    while k > 1 and frames_nbytes(kept := _spread(frames, k)) > budget:
        k = min(k - 1, max(1, int(k * budget / frames_nbytes(kept))))
    return _spread(frames, k)


def _spread(frames: list, k: int) -> list:
    if k >= len(frames):
        return frames
    if k == 1:
        return frames[-1:]
    return [frames[i] for i in sorted(set(np.linspace(0, len(frames) - 1, k).round().astype(int).tolist()))]


def _shown(tile: np.ndarray, size: tuple[int, int] | None = None) -> PIL.Image.Image:
    """(H, W, C) uint8 -> a PIL image upscaled (nearest) to ``size`` (W, H), or to at least ``DISPLAY_PX`` pixels."""
    image = PIL.Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile)
    if size is None:
        scale = max(1, DISPLAY_PX // max(image.size))
        size = (image.width * scale, image.height * scale)
    return image if image.size == size else image.resize(size, PIL.Image.Resampling.NEAREST)


def shown_panels(frame: dict[str, Any]) -> list[PIL.Image.Image]:
    """A frame's panels as the page shows them, in ``PANELS`` order, each the size of the upscaled state."""
    state = _shown(frame["panels"]["state"])
    return [state, *[_shown(frame["panels"][p], state.size) for p in PANELS[1:]]]


def build_app(pipe: PatchForcingPipeline, title: str = "Patch Forcing", limits: SessionLimits | None = None) -> gr.Blocks:
    """The page for ``pipe``, opened with the image of the default values (sampled once here);
    its sampling endpoint is ``/generate`` and its scrubbing endpoint ``/step`` (Gradio's client can
    call both, by parameter name). Serve it with ``serve`` (the session cap is a launch setting)."""
    limits = limits or SessionLimits()
    tab_bytes = limits.frame_bytes // TABS  # the tabs share a session's frame budget
    cfg = pipe.network.config
    is_text = cfg.is_text
    samplers = list(SAMPLERS) if cfg.has_difficulty_head else ["euler"]
    default_choice = "a bold seven, upright" if is_text else ("0" if cfg.num_classes > 0 else "unconditional network")
    defaults = (default_choice, pipe.config.sampler if pipe.config.sampler in samplers else samplers[0], pipe.config.nfe,
                pipe.config.guidance_scale, 0.0, 1.0, "0", pipe.config.schedule)
    schedules = list(dict.fromkeys([pipe.config.schedule, *SCHEDULES]))  # the saved grid first

    def results(*values) -> dict[str, Any]:
        return respond(pipe, values, tab_bytes)

    def generate(class_or_prompt, sampler, nfe, guidance_scale, guide_from, guide_to, seed, time_grid):
        out = results(class_or_prompt, sampler, nfe, guidance_scale, guide_from, guide_to, seed, time_grid)
        frames = out["frames"]
        slider = gr.Slider(minimum=1, maximum=len(frames), value=len(frames), step=1, label=STEP_LABEL)
        return (out["image"], out["summary"], slider, frames, *shown_panels(frames[-1]), frames[-1]["caption"])

    def show(frames, frame):
        if isinstance(frames, str) and frames == OPENING:
            frames = first["frames"]
        if not frames:
            raise _refused(f"this page holds no frames: press Generate (the page keeps {limits.describe()})")
        chosen = frames[_integer(frame, "the frame", 1, len(frames)) - 1]
        return (*shown_panels(chosen), chosen["caption"])

    first = results(*defaults)  # the page opens with an image (and works without JavaScript events)
    n, last = len(first["frames"]), first["frames"][-1]
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(300, int(limits.minutes * 60))) as page:
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
                nfe = gr.Number(value=defaults[2], label=f"NFE (network evaluations, 1 to {MAX_NFE})", precision=0)
                schedule = gr.Dropdown(choices=schedules, value=defaults[7], allow_custom_value=True,
                                       label="time grid (uniform, shift:ALPHA or edm:RHO; type any ALPHA or RHO > 0)")
                scale = gr.Number(value=defaults[3], label="guidance scale (1 = off)")
                with gr.Row():
                    lo = gr.Number(value=defaults[4], label="guide from t =")
                    hi = gr.Number(value=defaults[5], label="to t =")
                seed = gr.Textbox(value=defaults[6], label="seed (a whole number from 0 to 2**63 - 1)")
                button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=1):
                image = gr.Image(value=first["image"], label="image", type="pil", format="png", elem_id="pf-image")
                summary = gr.Markdown(first["summary"])
        frames = gr.State(None)  # per session; None once dropped (time-out set below, with every tab's)
        step = gr.Slider(minimum=1, maximum=n, value=n, step=1, label=STEP_LABEL, elem_id="pf-step")
        with gr.Row():
            panel_views = [gr.Image(value=v, label=p, type="pil", format="png") for p, v in zip(PANELS, shown_panels(last), strict=True)]
        caption = gr.Markdown(last["caption"])
        gr.Markdown("Colours: dark blue = low, yellow = high (difficulty: easy -> hard; patch time: noise -> clean).")
        button.click(generate, [choice, sampler, nfe, scale, lo, hi, seed, schedule],
                     [image, summary, step, frames, *panel_views, caption], api_name="generate")
        step.change(show, [frames, step], [*panel_views, caption], api_name="step")
        page.load(lambda: OPENING, None, frames, api_visibility="private")
        inpaint_tab(pipe, render_frames=render_frames, keep_within=keep_within, shown_panels=shown_panels,
                    frame_bytes=tab_bytes, state_seconds=limits.minutes * 60, source=image)  # app_inpaint.py: endpoint /inpaint
    for block in page.blocks.values():  # every tab's session state expires alike
        if isinstance(block, gr.State):
            block.time_to_live = limits.minutes * 60
    return page


def serve(page: gr.Blocks, *, limits: SessionLimits | None = None, host: str = HOST, port: int = PORT, block: bool = True) -> str:
    """Serve ``page`` on ``host:port`` and return its address; never through a Gradio share link
    (``share=False`` even where ``GRADIO_SHARE`` is set), without Gradio's launch messages, keeping
    at most ``limits.sessions`` sessions. A host other than loopback prints a warning first.

    Raises:
        ConfigError: a port out of range, or an address or port that cannot be bound (one line).
    """
    limits = limits or SessionLimits()
    check_port(port)
    if not is_loopback(host):
        print(f"warning: serving on {host}:{port}: anyone who can reach this machine there can use the page and its "
              f"{'GPU' if torch.cuda.is_available() else 'CPU'} (there is no login); drop --host to serve on {HOST} only",
              file=sys.stderr)
    try:
        page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, show_error=True, quiet=True,
                    state_session_capacity=limits.sessions, ssr_mode=False, mcp_server=False, footer_links=["api"])
    except OSError as err:
        raise ConfigError(f"cannot serve on {host}:{port} ({' '.join(str(err).split('.')[0].split())}): pass another --port, "
                          "or a --host of this machine") from None
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(f"serving the page on {url} (Ctrl+C stops it); it keeps {limits.describe()}", flush=True)
    if block:
        page.block_thread()
    return url


def launch(checkpoint: str, *, vae: str | None = None, host: str = HOST, port: int = PORT, device: str = "auto",
           limits: SessionLimits | None = None, block: bool = True) -> gr.Blocks:
    """Load ``checkpoint`` (run folder, checkpoint file, exported folder or cached Hub id) and ``serve`` its page."""
    pipe = PatchForcingPipeline.from_checkpoint(checkpoint, vae=vae, device=resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    page = build_app(pipe, title=f"Patch Forcing: {checkpoint}", limits=limits)
    serve(page, limits=limits, host=host, port=port, block=block)
    return page
