"""Evaluating a network at a fixed compute budget: samplers are compared at equal NFE (docs/method.md, samplers).

``evaluate(model, plan, spec)`` draws ``spec.num_samples`` images with the plan (usually from an
NFE budget: ``SamplingPlan.from_nfe``), one seed per image (image ``i`` uses noise seed ``seed + i``),
and scores them; ``evaluate_model`` takes the same as keywords. The metrics are computed on the images as they are saved (rounded to uint8, as the
ADM-style ``.npz`` evaluators see them), so they depend neither on the batch size nor on the
number of processes.

Single process and data-parallel (rank ``r`` of ``W`` draws images ``r, r + W, ...``; rank 0
gathers them in index order, scores them and writes the files)::

    patchforcing evaluate --checkpoint PF-XS.safetensors --sampler look-ahead --nfe 32 \\
        --num-samples 1000 --out eval/look-ahead-32
    torchrun --standalone --nproc_per_node 8 -m patchforcing evaluate --checkpoint ... --out ...

Metrics: on ``digits`` (1x16x16 networks) FID, precision and recall (k = 3) in the feature space
of the shipped digits classifier, plus class accuracy for class-conditional samples; on other data
FID with Inception-v3 features against reference statistics (``stats=``, an ``.npz`` with ``mu``
and ``sigma``), which needs the optional Inception package.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError, PatchForcingError, ShapeError
from patchforcing.evaluation.conditions import ClassLabels, ConditionSource, Prompts
from patchforcing.evaluation.digits import digits_metrics
from patchforcing.evaluation.frechet import feature_statistics, frechet_distance, load_statistics
from patchforcing.evaluation.generate import generate_images
from patchforcing.evaluation.held_out import (  # noqa: F401 - re-exported: the held-out diagnostics
    DIGITS,
    calibration_report,
    held_out_data,
    validation_report,
)
from patchforcing.evaluation.inception import inception_features, load_inception
from patchforcing.evaluation.parts import generate_parts, load_parts, parts_identity, require_finite
from patchforcing.evaluation.t2i import ATTRIBUTE_METRICS, attribute_scores, digit_prompt_source
from patchforcing.images import pixels_to_float, to_uint8_nhwc
from patchforcing.runs import atomic_write
from patchforcing.runtime import Processes, gather_to_main, require_group, run_on_main
from patchforcing.sampling import SamplingPlan

DIGITS_DATA = (DIGITS, "digits-captions")  # scored by the digits classifier (captions: plus the attributes)
DIGITS_SHAPE = (1, 16, 16)  # (C, H, W) of the networks the digits classifier can score
PR_NEIGHBOURS = 3  # k of improved precision/recall
MAX_EVAL_SAMPLES = 1_000_000  # 20 times FID's usual 50,000; every image is held in memory to be scored


@dataclass(frozen=True)
class EvalSpec:
    """What an evaluation draws and how it is scored (the ``SamplingPlan`` says how to sample).

    Attributes:
        num_samples: images in total (over all processes); image i has seed ``seed + i``.
        seed: the first image's noise seed.
        conditions: what image i is conditioned on (``evaluation.conditions``); None: balanced
            class labels, or for text networks the balanced digits-captions prompts.
        data: ``digits`` (built-in metrics; ``digits-captions`` for text networks) or the name of
            the network's data set (with ``stats``).
        stats: for non-digits data, an ``.npz`` with Inception ``mu`` and ``sigma`` of the reference.
        inception_weights: FID Inception weights file (default: the torch hub cache).
        decoder: for latent networks, maps (B, c, h, w) latents to (B, 3, H, W) images in [-1, 1]
            (``patchforcing.autoencoder.latent_decoder``); each process decodes its own images.
        batch_size: images per sampler call on each process (does not change the results).
        parts_dir: write the images there in parts as they are made (``evaluation.parts``): a
            killed evaluation rerun with the same arguments makes only the missing parts, and no
            process holds more than one part of images (for FID-50k). None: gather in memory.
        calibration: add the difficulty head's calibration on the held-out split of ``data``.
        val_loss: add the 8-segment validation loss on the held-out split of ``data``.
        encoder: the text encoder of a text network's default prompts (default: the one it records).
    """

    num_samples: int
    seed: int = 0
    conditions: ConditionSource | None = None
    data: str = DIGITS
    stats: str | os.PathLike | None = None
    inception_weights: str | os.PathLike | None = None
    decoder: Callable[[Tensor], Tensor] | None = None
    batch_size: int = 256
    parts_dir: str | os.PathLike | None = None
    calibration: bool = False
    val_loss: bool = False
    encoder: Any = None


# --- checks before any image is drawn ----------------------------------------------------------
def check_evaluation(model: nn.Module, plan: SamplingPlan, spec: EvalSpec,
                     guide_model: nn.Module | None = None) -> tuple[str | None, str | None]:
    """Every error a user can cause, raised before minutes of sampling; returns ``scoring``'s
    ``(feature network, why not)``.

    The errors: a sampler the network cannot run, guidance without a null condition, a guide
    network of another shape, too few samples, a batch size below one, latents without a decoder,
    ``stats`` the chosen data cannot use, unreadable statistics, a text network on data it has no
    prompts for, held-out diagnostics the network or data cannot give. Metrics that cannot be
    computed (no reference statistics, no Inception package or weights) are not errors: the result
    names them and why.
    """
    plan.check(model, guide_model)
    check_num_samples(spec.num_samples)
    if spec.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {spec.batch_size}")
    if spec.calibration and not model.config.has_difficulty_head:
        raise ConfigError("--calibration needs a Patch Forcing network with a difficulty head; "
                          "this checkpoint is a SiT network: drop --calibration")
    if spec.calibration or spec.val_loss:
        held_out_data(model, spec.data, "test")
    return scoring(model, spec.data, spec.stats, spec.inception_weights, spec.decoder)


def check_num_samples(num_samples: int) -> None:
    """From ``PR_NEIGHBOURS + 1`` to ``MAX_EVAL_SAMPLES`` images (a ``ConfigError`` naming the range otherwise)."""
    if num_samples <= PR_NEIGHBOURS:
        raise ConfigError(f"num_samples={num_samples}: the metrics need at least {PR_NEIGHBOURS + 1} samples "
                          f"(precision/recall use k={PR_NEIGHBOURS} neighbours)")
    if num_samples > MAX_EVAL_SAMPLES:
        raise ConfigError(f"num_samples={num_samples:,} is more than an evaluation holds (at most {MAX_EVAL_SAMPLES:,}, 20 times "
                          "FID's usual 50,000; every image is kept in memory to be scored): lower --num-samples")


def scoring(model: nn.Module, data: str, stats, inception_weights, decoder: Callable | None) -> tuple[str | None, str | None]:
    """Which feature network scores the images: ``("digits", None)``, ``("inception", None)``, or
    ``(None, why not)`` when no metric can be computed here.

    Raises:
        ConfigError: latents without a decoder, or ``stats`` with data that does not use them.
        ShapeError: pixels of another shape than the digits classifier's, with ``data="digits"``.
    """
    cfg = model.config
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    if cfg.is_text and data not in DIGITS_DATA:
        raise ConfigError(f"text-to-image networks are evaluated on the digits-captions prompts here, not on {data!r}: "
                          "drop --data (or pass --data digits-captions)")
    if data in DIGITS_DATA:
        data = DIGITS
    check_decoder(model, decoder)
    if decoder is None and cfg.in_channels not in (1, 3):
        raise ConfigError(f"this network samples {cfg.in_channels}-channel latents; pass --vae PATH (the autoencoder "
                          "its latent folder was encoded with) to decode them, or evaluate its training run folder, "
                          "which records the VAE")
    if data == DIGITS:
        if inception_weights is not None:
            raise ConfigError("--inception-weights is for Inception FID, but digits are scored by the built-in "
                              "classifier: drop it, or pass --data NAME --stats REF.npz")
        if stats is not None:
            raise ConfigError("--stats holds Inception reference statistics, but digits are scored by the built-in "
                              "classifier: drop --stats, or pass --data NAME (the network's own data) for Inception FID")
        if decoder is not None:
            return None, ("the digits classifier scores 1x16x16 pixel networks; these samples are decoded latents "
                          "(pass --data NAME --stats REF.npz for Inception FID)")
        if shape != DIGITS_SHAPE:
            raise ShapeError(f"digits metrics score 1x16x16 images; this network samples "
                             f"{'x'.join(map(str, shape))}. Pass the network's own data set "
                             "(--data NAME --stats REF.npz) for Inception FID")
        return DIGITS, None
    if stats is None:
        return None, "no reference statistics: pass --stats REF.npz (an ADM reference batch, or mu and sigma)"

    load_statistics(stats)  # a missing or malformed file fails now
    try:
        load_inception(inception_weights)
    except PatchForcingError as err:  # the optional package or its weights are missing
        return None, f"Inception-v3 is not available here ({err})"
    return "inception", None


def check_decoder(model: nn.Module, decoder: Callable | None) -> None:
    """A VAE decoder must decode latents of the network's channel count (pixel networks take none)."""
    cfg = model.config
    latent = getattr(getattr(getattr(decoder, "vae", None), "config", None), "latent_channels", None)
    if latent is not None and latent != cfg.in_channels:
        raise ConfigError(f"the VAE {getattr(decoder, 'vae_name', '')!r} decodes {latent}-channel latents but this network "
                          f"samples {cfg.in_channels}-channel {'images' if cfg.in_channels in (1, 3) else 'latents'}: "
                          "drop --vae (or pass the VAE its latent folder was encoded with)")


# --- the evaluation ----------------------------------------------------------------------------
def evaluate(model: nn.Module, plan: SamplingPlan, spec: EvalSpec, *, guide_model: nn.Module | None = None,
             procs: Processes | None = None, keep: str | None = None) -> dict[str, Any]:
    """Sample ``spec.num_samples`` images with ``plan`` and score them: the one evaluation.

    One path for every network and every size: the condition source (balanced class labels, fixed
    labels, prompts) feeds generate -> NFE check -> decode -> finite check -> uint8, in memory or in
    parts (``spec.parts_dir``), on one process or many; rank 0 scores the images in index order.

    Args:
        model: a network from ``load_model``/``create_model`` (on its evaluation device).
        plan: how to sample (``SamplingPlan.from_nfe(sampler, nfe, ...)``).
        spec: what to draw and how to score it (``EvalSpec``).
        guide_model: the weak network of autoguidance (``patchforcing.guides.load_guide_model``).
        procs: this process among those of ``patchforcing.runtime.setup`` (default: a single process).
        keep: also return, on rank 0, ``"pixels"``: ``images_uint8`` (num_samples, H, W, C) and
            ``labels``; ``"images"``: those and ``images`` (num_samples, C, H, W) in [-1, 1], exactly
            the saved uint8 values.

    Returns:
        On every rank: ``fid``, ``precision``, ``recall``, ``accuracy`` (None when unconditional
        or not measurable; ``not_computed`` maps each missing metric to the reason), with prompts
        that carry attributes ``thickness_adherence``, ``slant_adherence``, ``attribute_adherence``;
        ``plan`` (the plan's JSON), ``nfe`` (actually used), ``nfe_budget``, ``steps``,
        ``num_samples``, ``sampler``, ``options``, ``cfg_scale``, ``guidance_interval``,
        ``autoguidance``, ``guide_nfe``, ``seed``, ``data``, ``conditions``, ``world_size``,
        ``seconds`` (wall time of sampling and scoring) and ``seconds_sampling`` (slowest rank);
        with ``spec.val_loss`` ``val_loss``, ``val_loss_segments`` and ``segment_times``, with
        ``spec.calibration`` ``calibration`` (rows per time).
    """
    start = time.perf_counter()
    if keep not in (None, "pixels", "images"):
        raise ConfigError(f"keep must be None, 'pixels' or 'images', got {keep!r}")
    procs = procs or Processes()
    kind, reason = check_evaluation(model, plan, spec, guide_model)
    data = "digits-captions" if model.config.is_text else spec.data
    conditions = spec.conditions or default_conditions(model, spec.num_samples, spec.seed, spec.encoder)
    if conditions.num_samples != spec.num_samples:
        raise ConfigError(f"the condition source holds {conditions.num_samples} conditions for {spec.num_samples} images")
    require_group(procs)  # before minutes of sampling

    def make(indices: Tensor) -> tuple[np.ndarray, Tensor, int]:
        """Images ``indices`` as saved: ``(pixels (M, H, W, C) uint8, targets (M,), guide NFE)``."""
        _, images, targets, info = generate_images(model, plan, num_samples=spec.num_samples, seed=spec.seed,
                                                   conditions=conditions, guide_model=guide_model,
                                                   batch_size=spec.batch_size, indices=indices)
        if images.shape[0] and info["nfe"] != plan.nfe:  # the budget must be what the sampler really spent
            raise RuntimeError(f"{plan.sampler} used {info['nfe']} NFE where {plan.nfe} were expected")
        if spec.decoder is not None and images.shape[0]:
            images = spec.decoder(images)  # (M, 3, H, W) in [-1, 1]
        require_finite(images)  # NaN samples would round to uint8 images and get a finite FID
        return to_uint8_nhwc(images), targets, info["guide_nfe"] or 0

    if spec.parts_dir is not None:
        identity = {"sampling": plan.to_json(), "num_samples": spec.num_samples, "seed": spec.seed, "nfe": plan.nfe,
                    "conditions": conditions.describe(), **parts_identity(model, guide_model, spec.decoder)}
        mine = generate_parts(spec.parts_dir, identity, procs, make, spec.num_samples)
        seconds, guide_nfe = gather_to_main(mine["seconds"], procs), mine["guide_nfe"]
        collect = lambda: (*load_parts(spec.parts_dir, spec.num_samples), max(seconds))  # noqa: E731
    else:
        indices = torch.arange(procs.rank, spec.num_samples, procs.world_size)
        pixels, targets, guide_nfe = make(indices)
        parts = gather_to_main((indices.numpy(), pixels, targets.numpy(), time.perf_counter() - start), procs)
        collect = lambda: _in_index_order(parts, spec.num_samples)  # noqa: E731
    kept: dict[str, Any] = {}  # the images stay on rank 0; only the metrics go to every rank

    def score() -> dict[str, Any]:
        pixels, y, sampling_seconds = collect()  # (M, H, W, C) uint8 and (M,), index order
        if keep == "images":
            kept.update(images=pixels_to_float(pixels))
        if keep is not None:
            kept.update(images_uint8=pixels, labels=y)
        g = plan.guidance
        metrics = {
            **_metrics(pixels, y, kind, reason, data, spec, model, conditions),
            "plan": plan.to_json(), "nfe": plan.nfe, "nfe_budget": plan.nfe_budget, "steps": plan.steps,
            "num_samples": spec.num_samples, "sampler": plan.sampler, "options": plan.options.to_dict(),
            "cfg_scale": g.scale, "guidance_interval": None if g.interval is None else list(g.interval),
            "autoguidance": guide_model is not None, "guide_nfe": guide_nfe,
            "seed": spec.seed, "data": data, "conditions": conditions.describe(), "world_size": procs.world_size,
            "seconds_sampling": sampling_seconds, "seconds": time.perf_counter() - start,
        }
        return {**metrics, **_held_out(model, spec)}

    return {**run_on_main(score, procs), **kept}


def evaluate_model(model: nn.Module, plan: SamplingPlan | None = None, *, num_samples: int,
                   guide_model: nn.Module | None = None, rank: int = 0, world_size: int = 1,
                   return_images: bool = False, return_pixels: bool = False, **keywords: Any) -> dict[str, Any]:
    """``evaluate`` with keywords: ``plan`` (or ``sampler=`` with ``nfe=`` or ``steps=``, ``cfg_scale=``,
    ``guidance_interval=``, ``schedule=`` and the sampler's options, as ``pf.sample`` takes them),
    ``EvalSpec``'s fields (``seed=``, ``conditions=``, ``data=``, ``batch_size=``, ``stats=``,
    ``parts_dir=``, ...), ``rank``/``world_size`` of this process, and ``return_images`` /
    ``return_pixels`` (``keep="images"`` / ``"pixels"``)."""
    plan, spec = _plan_and_spec(plan, num_samples=num_samples, **keywords)
    keep = "images" if return_images else "pixels" if return_pixels else None
    return evaluate(model, plan, spec, guide_model=guide_model, procs=Processes(rank=rank, world_size=world_size),
                    keep=keep)


def _plan_and_spec(plan: SamplingPlan | None, **keywords: Any) -> tuple[SamplingPlan, EvalSpec]:
    """The plan and the ``EvalSpec`` that ``evaluate_model``'s keywords describe."""
    fields = set(EvalSpec.__dataclass_fields__)
    spec = EvalSpec(**{k: keywords.pop(k) for k in list(keywords) if k in fields})
    return SamplingPlan.from_keywords(plan, **keywords), spec


def _held_out(model: nn.Module, spec: EvalSpec) -> dict[str, Any]:
    """The held-out diagnostics ``spec`` asks for (``validation_report``, ``calibration_report``)."""
    out: dict[str, Any] = {}
    if spec.val_loss:
        report = validation_report(model, spec.data, "test", seed=spec.seed, batch_size=spec.batch_size)
        out.update({k: v for k, v in report.items() if k.startswith(("val_loss", "segment_times"))})
    if spec.calibration:
        out["calibration"] = calibration_report(model, spec.data, "test", seed=spec.seed)
    return out


def default_conditions(model: nn.Module, num_samples: int, seed: int = 0, encoder=None) -> ConditionSource:
    """Balanced class labels, or for a text network the balanced digits-captions prompts."""
    if model.config.is_text:
        return digit_prompt_source(model, num_samples, seed, encoder)
    return ClassLabels.balanced(num_samples, model.config.num_classes, seed)


def _in_index_order(parts: list[tuple], num_samples: int) -> tuple[np.ndarray, Tensor, float]:
    """The ranks' ``(indices, pixels, labels, seconds)`` merged into index order."""
    idx = np.concatenate([p[0] for p in parts])
    order = np.argsort(idx, kind="stable")
    if not np.array_equal(idx[order], np.arange(num_samples)):
        raise RuntimeError("the gathered images do not cover every index exactly once")
    pixels = np.concatenate([p[1] for p in parts])[order]  # (M, H, W, C) uint8
    labels = torch.from_numpy(np.concatenate([p[2] for p in parts])[order])  # (M,)
    return pixels, labels, max(p[3] for p in parts)


def _metrics(pixels: np.ndarray, labels: Tensor, kind: str | None, reason: str | None, data: str, spec: EvalSpec,
             model: nn.Module, conditions: ConditionSource, chunk: int = 5000) -> dict[str, Any]:
    """FID, precision, recall and accuracy of (M, H, W, C) uint8 images in the feature space ``kind``
    of ``scoring`` (turned to floats ``chunk`` at a time for Inception: 50k 256 px images as float32
    would take 39 GB); with prompts that carry attributes, their adherence too
    (``evaluation.t2i.attribute_scores``)."""
    conditional = bool((labels >= 0).all())
    attributes = isinstance(conditions, Prompts) and bool(conditions.attributes)
    if kind is None:
        missing = ("fid", "precision", "recall", "accuracy") + (ATTRIBUTE_METRICS if attributes else ())
        return {**{k: None for k in missing}, "feature_network": None, "not_computed": {k: reason for k in missing}}
    if kind == DIGITS:
        images = pixels_to_float(pixels)
        out = digits_metrics(images, labels if conditional else None, k=PR_NEIGHBOURS)
        extra = attribute_scores(images, labels, conditions.attributes) if attributes else {}
        return {"fid": out["fid"], "precision": out["precision"], "recall": out["recall"],
                "accuracy": out.get("accuracy"), "feature_network": "digits-classifier", **extra}

    device = next(model.parameters()).device
    mu_r, sigma_r = load_statistics(spec.stats)
    features = [inception_features(pixels_to_float(pixels[i:i + chunk]), spec.inception_weights, device=device)
                for i in range(0, len(pixels), chunk)]
    mu_f, sigma_f = feature_statistics(np.concatenate([np.asarray(f) for f in features]))
    missing = "the reference statistics hold no per-image features (precision/recall need them)"
    return {"fid": frechet_distance(mu_f, sigma_f, mu_r, sigma_r), "precision": None, "recall": None,
            "accuracy": None, "feature_network": "inception-v3", "stats": str(spec.stats),
            "not_computed": {"precision": missing, "recall": missing, "accuracy": "no classifier for this data"}}


def save_samples_npz(path: str | os.PathLike, images_uint8: np.ndarray, labels: np.ndarray | Tensor | None) -> Path:
    """Write ADM-style samples: ``arr_0`` (M, H, W, 3) uint8 RGB (gray images replicated to three
    channels, as the ADM evaluator expects) and, when conditional, ``arr_1`` (M,) labels."""
    pixels = np.asarray(images_uint8, dtype=np.uint8)  # (M, H, W, C)
    if pixels.ndim != 4 or pixels.shape[-1] not in (1, 3):
        raise ShapeError(f"samples must be (M, H, W, 1 or 3) uint8, got {pixels.shape}")
    arrays = [np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels]
    if labels is not None and bool((np.asarray(labels) >= 0).all()):
        arrays.append(np.asarray(labels, dtype=np.int64))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, *arrays)

    return atomic_write(path, write)
