"""``PatchForcingPipeline``: Patch Forcing sampling the way diffusers users already generate images.

    >>> import torch, patchforcing as pf
    >>> pipe = pf.PatchForcingPipeline.from_pretrained("exported/digits")   # a folder or a cached Hub id
    >>> images = pipe(class_labels=[0, 1, 2, 3], nfe=32, generator=torch.Generator().manual_seed(0)).images

The images equal ``pf.sample`` on the same noise, then the VAE decode: the noise is one diffusers
``randn_tensor`` of the whole batch drawn from ``generator`` (a list of generators: one per
image), and the same ``generator`` then draws the random masks of the ``random-*`` samplers.
Components: ``transformer`` (the network, ``PatchForcingTransformerModel``) and ``vae`` (a
diffusers ``AutoencoderKL`` for latent networks, else None). The sampler settings (sampler, NFE
budget, guidance, sampler options, time grid ``schedule``), the latent scale and shift, and the
text encoder's name are saved configuration (``model_index.json``); a folder saved before the
schedule was a setting loads with the uniform grid, as it sampled then.

The call follows diffusers' contract: DiT's positional order ``pipe(class_labels, guidance_scale,
generator, num_inference_steps, output_type, return_dict)`` (a text network takes its prompt
first: ``pipe("a bold seven")``), ``latents=`` starts from given noise, and
``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` runs once per outer step
with ``callback_kwargs["latents"]``; the dict it returns may replace the latents.
``num_inference_steps`` counts outer steps, not network evaluations: look-ahead with 50 outer
steps costs 97 NFE on the uniform grid; ``nfe=`` is the budget form (the most outer steps that fit).

diffusers' generic ``DiffusionPipeline.from_pretrained(folder)`` looks the pipeline class up in
the diffusers package only; for this package's class the one line is
``pf.PatchForcingPipeline.from_pretrained(folder)``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from patchforcing.autoencoder import decode_latents, latent_decoder, load_vae, vae_scale_factor, vae_shift_factor
from patchforcing.checkpoints import load_model
from patchforcing.conditioning import Condition
from patchforcing.errors import CheckpointError, ConfigError, PatchForcingError, ShapeError
from patchforcing.hub.folder import PIPELINE_INDEX, is_pipeline_folder, read_pipeline_index, resolve_source
from patchforcing.hub.inpaint import image_request
from patchforcing.hub.transformer import PatchForcingTransformerModel
from patchforcing.images import to_uint8_nhwc
from patchforcing.sampling import Guidance, SamplingPlan, sample
from patchforcing.sampling.registry import OPTION_ALIASES, REGISTRY, default_sampler, get_sampler
from patchforcing.sampling.schedules import UNIFORM, canonical_schedule
from patchforcing.text import TextEncoder, check_encoder_fits, load_text_encoder

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class PatchForcingPipelineOutput(ImagePipelineOutput):
    """``images`` as diffusers returns them, plus the sampling run's ``nfe`` and outer ``steps``."""

    nfe: int = 0
    steps: int = 0


class PatchForcingPipeline(DiffusionPipeline):
    """Sample a Patch Forcing network with any of its samplers (``docs/method.md``, section 5).

    Args:
        transformer: the network as a diffusers component.
        vae: the autoencoder of a latent network (None: the network samples pixels in [-1, 1]).
        sampler: default sampler (``pf.SAMPLERS``).
        nfe: default budget of network evaluations; the outer steps are ``steps_for_nfe(sampler, nfe)``.
        guidance_scale: default classifier-free guidance weight (1 = off).
        guidance_interval: default ``(lo, hi)``: guide only outer steps with ``lo <= t_k <= hi``.
        sampler_options: default options (``p_frac`` or ``p``, ``n_inner``, ``context_ratio``) of the samplers that take them.
        schedule: default time grid of the outer steps: ``uniform`` (``t_k = k / S``, the paper's),
            ``shift:ALPHA`` or ``edm:RHO`` (``pf.SamplingPlan.schedule``; saved in its canonical spelling).
        latent_scale, latent_shift: latents are stored as ``(z - shift) * scale`` (None: the VAE's config).
        text_encoder: text networks: the encoder's name, Hub id or folder (None: the one the network records).
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]  # what callback_on_step_end may read and replace

    def __init__(self, transformer: PatchForcingTransformerModel, vae: AutoencoderKL | None = None, sampler: str = "look-ahead",
                 nfe: int = 32, guidance_scale: float = 1.0, guidance_interval: Sequence[float] | None = None,
                 sampler_options: dict[str, Any] | None = None, latent_scale: float | None = None,
                 latent_shift: float | None = None, text_encoder: str | None = None, schedule: str = UNIFORM):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae)
        interval = None if guidance_interval is None else [float(v) for v in guidance_interval]
        self.register_to_config(sampler=sampler, nfe=int(nfe), guidance_scale=float(guidance_scale), guidance_interval=interval,
                                sampler_options=dict(sampler_options or {}), latent_scale=latent_scale,
                                latent_shift=latent_shift, text_encoder=text_encoder, schedule=canonical_schedule(schedule))
        self._encoder: TextEncoder | None = None

    # --- building -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **settings: Any) -> PatchForcingPipeline:
        """Load a folder written by ``save_pretrained`` or ``patchforcing export``, or a Hub id already in
        the local Hugging Face cache (an id that is not cached raises ``CheckpointError`` naming the
        command that downloads it); ``settings`` (``sampler``, ``nfe`` ...) override the saved ones.

        The folder is read by this project's own reader, never by diffusers' generic loader:
        ``model_index.json`` must name this pipeline and its two components (``hub.folder.read_pipeline_index``),
        the network is read and checked as ``pf.load_model`` reads any checkpoint, the VAE is loaded
        as a diffusers ``AutoencoderKL``; nothing the folder names is imported.
        """
        folder = resolve_source(str(pretrained_model_name_or_path))
        saved = read_pipeline_index(folder)
        has_vae, names = saved.pop("vae"), _setting_names(cls)
        for given, unknown in (("from_pretrained", set(settings) - names), (str(folder / PIPELINE_INDEX), set(saved) - names)):
            if unknown:
                raise ConfigError(f"{given} holds settings this pipeline does not take ({sorted(unknown)}); the settings "
                                  f"are {sorted(names)} (a folder of a newer version: update patchforcing)")
        network = load_model(folder)
        vae = load_vae(str(folder / "vae")) if has_vae else None
        try:
            pipe = cls(PatchForcingTransformerModel.around(network), vae=vae, **{**saved, **settings})
            pipe.plan()  # the saved sampler, budget, guidance and time grid fit the network
            return pipe
        except (TypeError, ValueError) as err:
            if isinstance(err, PatchForcingError):
                raise
            raise CheckpointError(f"{str(folder / PIPELINE_INDEX)!r} holds an invalid setting ({err}); export the network "
                                  "again with `patchforcing export`") from None

    @classmethod
    def from_checkpoint(cls, source: str | os.PathLike, *, vae: str | None = None, device: str | torch.device = "cpu",
                        **settings: Any) -> PatchForcingPipeline:
        """A pipeline around a checkpoint ``load_model`` reads (a run folder records its VAE and
        latent scale; ``vae`` overrides it); an exported folder or cached id loads as saved.

        Args:
            source: a run folder, a checkpoint file, an exported folder or a cached Hub id.
            vae: an ``AutoencoderKL`` folder or cached id for a latent network.
            device: where the network and VAE run.
            **settings: sampler settings of ``__init__`` (``sampler``, ``nfe``, ``guidance_scale``, ``schedule`` ...); the
                sampler defaults to ``look-ahead``, for a global-time (SiT) network to ``euler``.
        """
        if is_pipeline_folder(resolve_source(source)) and vae is None:
            return cls.from_pretrained(str(source), **settings).to(device)
        network = load_model(source, map_location=device)
        settings.setdefault("sampler", default_sampler(network.config))  # SiT: global time only
        decoder = latent_decoder(source, vae=vae, device=device)
        latents = {} if decoder is None else {"vae": decoder.vae, "latent_scale": decoder.scale_factor,
                                               "latent_shift": decoder.shift_factor}
        return cls(PatchForcingTransformerModel.from_network(network), **latents, **settings)

    # --- the pieces of a call (also used by the app) ----------------------------------------------
    @property
    def network(self) -> torch.nn.Module:
        """The network itself, as ``pf.sample`` takes it."""
        return self.transformer.network

    def plan(self, sampler: str | None = None, num_inference_steps: int | None = None, nfe: int | None = None,
             options: dict[str, Any] | None = None, guidance_scale: float | None = None,
             guidance_interval: Any = None, schedule: str | None = None) -> SamplingPlan:
        """The ``SamplingPlan`` of a call: ``num_inference_steps`` outer steps, or the most that fit
        ``nfe`` network evaluations (default: the saved budget) on the time grid of ``schedule``;
        settings left at None take the saved configuration (of the saved options, those the
        sampler takes; a folder saved without a schedule samples on the uniform grid)."""
        spec = get_sampler(sampler or self.config.sampler)
        grid = self.config.schedule if schedule is None else schedule  # SamplingPlan checks and spells it
        fields = {f.name for f in dataclasses.fields(spec.options_type)}
        takes = fields | {old for old, new in OPTION_ALIASES.items() if new in fields}
        options = {**{k: v for k, v in self.config.sampler_options.items() if k in takes}, **(options or {})}
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        interval = self.config.guidance_interval if guidance_interval is None else guidance_interval
        guidance = Guidance(scale, tuple(interval) if isinstance(interval, (list, tuple)) else interval)
        if num_inference_steps is not None and nfe is not None:
            raise ConfigError("pass num_inference_steps (outer steps) or nfe (a budget of network evaluations), not both")
        if num_inference_steps is not None:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ConfigError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
            return SamplingPlan(spec.name, num_inference_steps, options, guidance, schedule=grid)
        budget = self.config.nfe if nfe is None else nfe
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise ConfigError(f"nfe must be a positive integer, got {budget!r}")
        return SamplingPlan.from_nfe(spec.name, budget, guidance=guidance, schedule=grid, **options)

    def text_encoder_for_prompts(self) -> TextEncoder:
        """The text encoder of a text network (loaded once, from a local folder or the cache)."""
        cfg = self.network.config
        if self._encoder is None:
            encoder = load_text_encoder(self.config.text_encoder or cfg.text_encoder, max_length=cfg.text_length, device=self._execution_device)
            check_encoder_fits(encoder, self.network)
            self._encoder = encoder
        return self._encoder

    def condition(self, class_labels: int | Sequence[int] | Tensor | None = None, prompt: str | Sequence[str] | None = None,
                  negative_prompt: str | Sequence[str] | None = None, num_images_per_prompt: int = 1) -> tuple[dict[str, Any], int]:
        """``pf.sample``'s condition keyword (``labels=`` or ``condition=``) and the batch size B.

        Text networks take ``prompt`` (and ``negative_prompt``, the null of guidance; default the
        empty prompt); class networks take ``class_labels``; unconditional networks neither.
        """
        cfg = self.network.config
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ConfigError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        device = self._execution_device
        if cfg.is_text:
            if class_labels is not None or prompt is None:
                raise ConfigError("this is a text-to-image network: pass prompt='...' (or a list of prompts), not class_labels")
            prompts = _as_list(prompt, "prompt")
            prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
            encoder = self.text_encoder_for_prompts()
            states = encoder.encode(prompts, device)
            if negative_prompt is None:
                null = encoder.null_states(device)
            else:
                negatives = _as_list(negative_prompt, "negative_prompt")
                if len(negatives) not in (1, len(prompts) // num_images_per_prompt):
                    raise ShapeError(f"{len(negatives)} negative prompts for {len(prompts) // num_images_per_prompt} prompts: give one, or one per prompt")
                null = encoder.encode([n for n in negatives for _ in range(num_images_per_prompt)] if len(negatives) > 1 else negatives, device)
            return {"condition": Condition.from_text(states, null)}, len(prompts)
        if prompt is not None or negative_prompt is not None:
            raise ConfigError("prompt is for text-to-image networks; this network is class-conditional: pass class_labels=[...]")
        if class_labels is None:
            if cfg.num_classes > 0:
                raise ConfigError(f"this network is class-conditional: pass class_labels (integers in [0, {cfg.num_classes}))")
            return {"labels": None}, num_images_per_prompt
        labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else class_labels)
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ShapeError(f"class_labels must be an integer or a list of integers, got {class_labels!r}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes):
            raise ConfigError(f"class_labels must lie in [0, {cfg.num_classes}), got {labels.tolist()}")
        labels = labels.repeat_interleave(num_images_per_prompt).to(device)
        return {"labels": labels}, int(labels.numel())

    def prepare_noise(self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None,
                      latents: Tensor | None = None) -> Tensor:
        """(B, C, H, W) starting noise: one ``randn_tensor`` of the whole batch in the network's dtype,
        or ``latents`` (the caller's noise, checked against the batch and moved to the network's device and dtype)."""
        cfg = self.network.config
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ShapeError(f"{len(generator)} generators for {batch_size} images: pass one generator, or one per image")
        shape = (batch_size, cfg.in_channels, cfg.input_size, cfg.input_size)
        if latents is None:
            return randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.transformer.dtype)
        if not isinstance(latents, Tensor) or tuple(latents.shape) != shape or not latents.is_floating_point():
            got = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ShapeError(f"latents has shape {got}; this call makes {batch_size} images and starts from noise of shape "
                             f"{shape} (floating point), or pass no latents to draw it from generator")
        return latents.to(device=self._execution_device, dtype=self.transformer.dtype)

    def decode(self, x: Tensor) -> Tensor:
        """Samples (B, C, H, W) -> images (B, 3 or C, H, W) in [-1, 1] (through the VAE for latent networks)."""
        if self.vae is None:
            return x.float().clamp(-1, 1)
        scale = vae_scale_factor(self.vae, self.config.latent_scale)
        shift = vae_shift_factor(self.vae) if self.config.latent_shift is None else float(self.config.latent_shift)
        return decode_latents(self.vae, x, scale, shift)

    # --- the call -----------------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        """Outer steps of the last call (what ``callback_on_step_end``'s ``step_index`` counts)."""
        return getattr(self, "_num_timesteps", 0)

    @torch.no_grad()
    def __call__(self, class_labels: int | Sequence[int] | Tensor | str | Sequence[str] | None = None,
                 guidance_scale: float | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int | None = None, output_type: str = "pil", return_dict: bool = True, *,
                 prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 nfe: int | None = None, sampler: str | None = None, guidance_interval: Sequence[float] | None = None,
                 num_images_per_prompt: int = 1, schedule: str | None = None, latents: Tensor | None = None,
                 callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                 image: Any = None, mask_image: Any = None, strength: Any = None, inpaint_mode: str | None = None,
                 **sampler_options: Any):
        """Generate images. Settings left at None take the pipeline's saved configuration
        (``look-ahead``, NFE 32, guidance 1 and the uniform time grid unless saved otherwise).

        The first six arguments take DiT's positional order (``DiTPipeline.__call__``); the rest are
        keywords.

        Args:
            class_labels: class networks: an integer or a list (B,). A text network takes its prompt
                here too (a string or a list of strings), as diffusers' text pipelines take ``prompt`` first.
            guidance_scale: classifier-free guidance weight (1 = off).
            generator: draws the noise (and the random masks); a list: one per image.
            num_inference_steps: outer steps S. They are not network evaluations: an outer step of
                ``look-ahead`` costs two (one during its warm-up), so ``num_inference_steps=50`` costs
                97 NFE on the uniform grid, and one of ``dual-loop`` costs ``n_inner``. Pass ``nfe``
                instead to give a budget of network evaluations (the most outer steps that fit it).
            output_type: ``"pil"``, ``"np"`` (B, H, W, C) in [0, 1], ``"pt"`` (B, C, H, W) in [0, 1]
                or ``"latent"`` (the sampler's output as it is).
            return_dict: return ``PatchForcingPipelineOutput`` (else a tuple ``(images,)``).
            prompt, negative_prompt: text networks: prompts (B) and the guidance null (default "").
            nfe: a budget of network evaluations instead of ``num_inference_steps``.
            sampler: a name of ``pf.SAMPLERS``: the paper's ``euler``, ``euler-pf``, ``dual-loop``, ``look-ahead``,
                ``random-dual-loop``, ``random-look-ahead``, and ``look-ahead-heun``, ``corrected-look-ahead``.
            guidance_interval: ``(lo, hi)``: guide only the outer steps with ``lo <= t_k <= hi``.
            num_images_per_prompt: images per label or prompt.
            schedule: the time grid of the outer steps: ``uniform`` (``t_k = k / S``), ``shift:ALPHA``
                (``ALPHA > 1``: more steps near the noise) or ``edm:RHO`` (``docs/method.md`` §5.10).
            latents: (B, C, H, W) noise to start from instead of drawing it from ``generator`` (which
                then still draws the random masks of the ``random-*`` samplers).
            callback_on_step_end: called once after every outer step as
                ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)``: ``step_index``
                counts outer steps from 0 to ``pipe.num_timesteps - 1``, ``timestep`` is the grid time
                ``t_k`` the step started from (a 0-d float32 tensor; t = 0 noise, t = 1 data) and
                ``callback_kwargs["latents"]`` the sample after the step (at ``t_{k+1}``). It returns
                a dict; a ``"latents"`` entry there replaces the sample for the rest of the run.
                diffusers' ``PipelineCallback`` objects work as they are.
            callback_on_step_end_tensor_inputs: the entries of ``callback_kwargs``: ``["latents"]``
                (``pipe._callback_tensor_inputs``).
            image: an input picture (PIL, or arrays / tensors in [0, 1], as diffusers takes them) to
                inpaint (with ``mask_image``) or edit (with ``strength``): ``pf.inpaint`` / ``pf.edit`` on
                this call's noise (``hub/inpaint.py``, ``docs/inpainting.md``).
            mask_image: white (>= 0.5) = generate, black = keep; the kept pixels of the result are the input's.
            strength: with a mask, the generated region starts from the input noised to ``1 - strength``
                (default 1: from noise); without one, a number or a per-pixel map in [0, 1] (per-region editing).
            inpaint_mode: when the kept patches enter each evaluation: ``same``, ``ahead`` or ``clean`` (default:
                ``clean`` for Patch Forcing networks, as measured in ``docs/inpainting.md``; ``same`` for SiT ones).
            **sampler_options: ``p_frac`` (or ``p``), ``n_inner``, ``context_ratio``, ``correct_last``;
                a keyword that is none of these nor an argument above is refused as an unknown pipeline argument.
        """
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        _check_sampler_options(sampler_options)
        if prompt is None and _is_text(class_labels) and self.network.config.is_text:
            prompt, class_labels = class_labels, None  # a text pipeline's first positional argument is its prompt
        step_end = self._step_end(callback_on_step_end, callback_on_step_end_tensor_inputs)
        plan = self.plan(sampler, num_inference_steps, nfe, sampler_options, guidance_scale, guidance_interval, schedule)
        given, batch = self.condition(class_labels, prompt, negative_prompt, num_images_per_prompt)
        noise = self.prepare_noise(batch, generator, latents)
        request = image_request(self, image, mask_image, strength, inpaint_mode, batch)  # None: plain sampling
        self._num_timesteps = plan.steps
        net = self.network
        with self.progress_bar(total=plan.nfe) as bar:
            def tick(*_: Any) -> None:  # one tick per network evaluation; returns None, so the output is kept
                bar.update()  # (a forward hook's non-None return value would replace the network's output)

            hook = net.register_forward_hook(tick)
            try:
                run = sample if request is None else request.run
                x, info = run(net, noise, plan, generator=generator, return_info=True, on_step_end=step_end, **given)
            finally:
                hook.remove()
        images = x if output_type == "latent" else _convert(self.decode(x) if request is None else request.finish(self.decode(x)),
                                                             output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return PatchForcingPipelineOutput(images=images, nfe=info["nfe"], steps=plan.steps)

    def _step_end(self, callback: Callable[..., dict[str, Any]] | None,
                  tensor_inputs: Sequence[str]) -> Callable[[int, float, Tensor], Tensor | None] | None:
        """``sample``'s ``on_step_end`` for diffusers' ``callback_on_step_end`` (None without a callback)."""
        if callback is None:
            return None
        names = list(getattr(callback, "tensor_inputs", None) or tensor_inputs)  # a PipelineCallback names its own
        bad = [n for n in names if n not in self._callback_tensor_inputs]
        if bad:
            raise ConfigError(f"callback_on_step_end_tensor_inputs {bad}: the callback can read {self._callback_tensor_inputs} only")
        if not callable(callback):
            raise ConfigError(f"callback_on_step_end must be callable as (pipe, step_index, timestep, callback_kwargs), got {callback!r}")

        def on_step_end(k: int, t_k: float, x: Tensor) -> Tensor | None:
            returned = callback(self, k, torch.tensor(t_k, dtype=torch.float32), {n: x for n in names})
            return returned.get("latents") if isinstance(returned, dict) else None

        return on_step_end


def _check_sampler_options(options: dict[str, Any]) -> None:
    """Keywords the call gathered as sampler options must be one of some sampler's (a typo is named here,
    not reported as an option the chosen sampler lacks)."""
    known = {f.name for spec in REGISTRY.values() for f in dataclasses.fields(spec.options_type)} | set(OPTION_ALIASES)
    unknown = sorted(set(options) - known)
    if unknown:
        arguments = [n for n in inspect.signature(PatchForcingPipeline.__call__).parameters if n not in ("self", "sampler_options")]
        raise ConfigError(f"unknown pipeline argument(s) {', '.join(map(repr, unknown))}; PatchForcingPipeline takes "
                          f"{', '.join(arguments)} and the sampler options {', '.join(sorted(known))}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value))


def _setting_names(cls: type) -> set[str]:
    """The saved settings of a pipeline class: its ``__init__`` arguments other than the components."""
    return set(inspect.signature(cls.__init__).parameters) - {"self", "transformer", "vae"}


def _as_list(value: str | Sequence[str], name: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{name} must be a string or a non-empty list of strings, got {value!r}")
    return values


def _convert(images: Tensor, output_type: str) -> Any:
    """Images (B, C, H, W) in [-1, 1] -> the requested output type."""
    if output_type == "pt":
        return (images.float() + 1) / 2
    if output_type == "np":
        return ((images.float() + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    if images.shape[1] not in (1, 3):
        raise ConfigError(f"{images.shape[1]}-channel latents cannot be shown as images: load the pipeline with its vae, "
                          "or pass output_type='latent'")
    arrays = to_uint8_nhwc(images)
    return [PIL.Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]  # grey: mode "L"
