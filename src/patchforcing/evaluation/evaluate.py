"""Evaluating a network at a fixed compute budget: samplers are compared at equal NFE (docs/method.md, samplers).

``evaluate_model`` turns an NFE budget into the largest number of outer steps that fits it, draws
``num_samples`` images with one seed per image (image ``i`` uses noise seed ``seed + i``), and
scores them. The metrics are computed on the images as they are saved (rounded to uint8, as the
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
from patchforcing.sampling.plan import GUIDE_IN_MEMORY, as_plan

DIGITS_DATA = (DIGITS, "digits-captions")  # scored by the digits classifier (captions: plus the attributes)
DIGITS_SHAPE = (1, 16, 16)  # (C, H, W) of the networks the digits classifier can score
PR_NEIGHBOURS = 3  # k of improved precision/recall
MAX_EVAL_SAMPLES = 1_000_000  # 20 times FID's usual 50,000; every image is held in memory to be scored


# --- checks before any image is drawn ----------------------------------------------------------
def plan_evaluation(model: nn.Module, plan: SamplingPlan | None = None, *, num_samples: int, data: str = DIGITS,
                    stats: str | os.PathLike | None = None, inception_weights: str | os.PathLike | None = None,
                    decoder: Callable | None = None, guide_model: nn.Module | None = None,
                    **loose: Any) -> tuple[int, int]:
    """Check that the evaluation can run and return ``(steps, nfe actually used)``.

    Every error a user can cause is raised here, before minutes of sampling: an unknown sampler
    or option, a budget below one step, a sampler the network cannot run, guidance without a null
    condition, a guide network of another shape, too few samples, latents without a decoder,
    ``stats`` the chosen data cannot use, unreadable statistics, a text network on data it has no
    prompts for. Metrics that cannot be computed (no reference statistics, no Inception package
    or weights) are not errors: the result names them and why.

    Args:
        plan: the sampling plan; or, as before, ``sampler=``, ``nfe=`` (a budget), ``cfg_scale=``
            and options as loose keywords.
    """
    plan = as_plan(plan, guide=None if guide_model is None else GUIDE_IN_MEMORY, **loose)
    plan.check(model, guide_model)
    check_num_samples(num_samples)
    scoring(model, data, stats, inception_weights, decoder)  # raises on misuse; reasons come back later
    return plan.steps, plan.nfe


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
def evaluate_model(
    model: nn.Module,
    plan: SamplingPlan | None = None,
    *,
    num_samples: int,
    seed: int = 0,
    conditions: ConditionSource | None = None,
    data: str = DIGITS,
    batch_size: int = 256,
    stats: str | os.PathLike | None = None,
    rank: int = 0,
    world_size: int = 1,
    return_images: bool = False,
    return_pixels: bool = False,
    inception_weights: str | os.PathLike | None = None,
    decoder: Callable[[Tensor], Tensor] | None = None,
    parts_dir: str | os.PathLike | None = None,
    guide_model: nn.Module | None = None,
    encoder=None,
    **loose: Any,
) -> dict[str, Any]:
    """Sample ``num_samples`` images with a plan (usually from an NFE budget) and score them.

    One pipeline for every network: the condition source (balanced class labels, fixed labels,
    prompts) feeds generate -> parts -> processes -> decode -> score.

    Args:
        model: a network from ``load_model``/``create_model`` (on its evaluation device).
        plan: how to sample (``SamplingPlan.from_nfe(sampler, nfe, ...)``); or, as before,
            ``sampler=``, ``nfe=``, ``cfg_scale=``, ``guidance_interval=`` and options as loose keywords.
        num_samples: images in total (over all processes); image i has seed ``seed + i``.
        conditions: what image i is conditioned on (``evaluation.conditions``); default: balanced
            class labels, or for text networks the balanced digits-captions prompts.
        data: ``digits`` (built-in metrics; ``digits-captions`` for text networks) or the name of
            the network's data set (with ``stats``).
        batch_size: images per sampler call on each process (does not change the results).
        stats: for non-digits data, an ``.npz`` with Inception ``mu`` and ``sigma`` of the reference.
        rank, world_size: this process among those of ``patchforcing.runtime.setup``.
        return_images: also return (on rank 0) ``images`` (num_samples, C, H, W) in [-1, 1],
            exactly the saved uint8 values, ``images_uint8`` (num_samples, H, W, C) and ``labels``.
        return_pixels: return (on rank 0) only ``images_uint8`` and ``labels`` (4x less memory).
        inception_weights: FID Inception weights file (default: the torch hub cache).
        decoder: for latent networks, maps (B, c, h, w) latents to (B, 3, H, W) images in [-1, 1]
            (``patchforcing.autoencoder.latent_decoder``); each process decodes its own images.
        parts_dir: write the images there in parts as they are made (``evaluation.parts``): a
            killed evaluation rerun with the same arguments makes only the missing parts, and no
            process holds more than one part of images (for FID-50k). None: gather in memory.
        guide_model: the weak network of autoguidance (the plan names it).
        encoder: the text encoder of a text network's default prompts (default: the one it records).

    Returns:
        On every rank: ``fid``, ``precision``, ``recall``, ``accuracy`` (None when unconditional
        or not measurable; ``not_computed`` maps each missing metric to the reason), with prompts
        that carry attributes ``thickness_adherence``, ``slant_adherence``, ``attribute_adherence``;
        ``plan`` (the plan's JSON), ``nfe`` (actually used), ``nfe_budget``, ``steps``,
        ``num_samples``, ``sampler``, ``options``, ``cfg_scale``, ``guidance_interval``,
        ``autoguidance``, ``guide_nfe``, ``seed``, ``data``, ``conditions``, ``world_size``,
        ``seconds`` (wall time of the whole evaluation) and ``seconds_sampling`` (slowest rank).
    """
    start = time.perf_counter()
    plan = as_plan(plan, guide=None if guide_model is None else GUIDE_IN_MEMORY, **loose)
    steps, used = plan_evaluation(model, plan, num_samples=num_samples, data=data, stats=stats,
                                  inception_weights=inception_weights, decoder=decoder, guide_model=guide_model)
    if model.config.is_text:
        data = "digits-captions"
    if conditions is None:
        conditions = default_conditions(model, num_samples, seed, encoder)
    elif conditions.num_samples != num_samples:
        raise ConfigError(f"the condition source holds {conditions.num_samples} conditions for {num_samples} images")
    procs = Processes(rank=rank, world_size=world_size)
    require_group(procs)  # before minutes of sampling
    generate = dict(num_samples=num_samples, seed=seed, conditions=conditions, guide_model=guide_model, batch_size=batch_size)
    if parts_dir is not None:
        record = {"sampling": plan.to_json(), "num_samples": num_samples, "seed": seed, "nfe": used,
                  "conditions": conditions.describe(), **parts_identity(model, guide_model, decoder)}
        mine = generate_parts(model, parts_dir, plan=record, procs=procs, expected_nfe=used, decoder=decoder,
                              **plan.to_kwargs(), **generate)
        info = {"guide_nfe": mine["guide_nfe"]}
        parts = gather_to_main(mine["seconds"], procs)
        collect = lambda: (*load_parts(parts_dir, num_samples), max(parts))  # noqa: E731
    else:
        indices, images, labels, info = generate_images(model, plan, rank=rank, world_size=world_size, **generate)
        sampling = time.perf_counter() - start
        if images.shape[0] and info["nfe"] != used:  # the budget must be what the sampler really spent
            raise RuntimeError(f"{plan.sampler} used {info['nfe']} NFE where {used} were expected")
        if decoder is not None and images.shape[0]:
            images = decoder(images)  # (b, 3, H, W) in [-1, 1]
        require_finite(images)  # NaN samples would round to uint8 images and get a finite FID
        parts = gather_to_main((indices.numpy(), to_uint8_nhwc(images), labels.numpy(), sampling), procs)
        collect = lambda: _in_index_order(parts, num_samples)  # noqa: E731
    kept: dict[str, Any] = {}  # the images stay on rank 0; only the metrics go to every rank

    def score() -> dict[str, Any]:
        pixels, y, sampling_seconds = collect()  # (M, H, W, C) uint8 and (M,), index order
        if return_images:
            kept.update(images=pixels_to_float(pixels))
        if return_images or return_pixels:
            kept.update(images_uint8=pixels, labels=y)
        g = plan.guidance
        return {
            **_metrics(pixels, y, data, stats, inception_weights, model, decoder, conditions),
            "plan": plan.to_json(), "nfe": used, "nfe_budget": plan.nfe_budget, "steps": steps,
            "num_samples": num_samples, "sampler": plan.sampler, "options": plan.options.to_dict(),
            "cfg_scale": g.scale, "guidance_interval": None if g.interval is None else list(g.interval),
            "autoguidance": guide_model is not None, "guide_nfe": info.get("guide_nfe") or 0,
            "seed": seed, "data": data, "conditions": conditions.describe(), "world_size": world_size,
            "seconds_sampling": sampling_seconds, "seconds": time.perf_counter() - start,
        }

    return {**run_on_main(score, procs), **kept}


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


def _metrics(pixels: np.ndarray, labels: Tensor, data: str, stats, inception_weights, model: nn.Module,
             decoder: Callable | None = None, conditions: ConditionSource | None = None,
             chunk: int = 5000) -> dict[str, Any]:
    """FID, precision, recall and accuracy of (M, H, W, C) uint8 images (turned to floats ``chunk`` at a time
    for Inception: 50k 256 px images as float32 would take 39 GB); with prompts that carry attributes,
    their adherence too (``evaluation.t2i.attribute_scores``)."""
    conditional = bool((labels >= 0).all())
    kind, reason = scoring(model, data, stats, inception_weights, decoder)
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
    mu_r, sigma_r = load_statistics(stats)
    features = [inception_features(pixels_to_float(pixels[i:i + chunk]), inception_weights, device=device)
                for i in range(0, len(pixels), chunk)]
    mu_f, sigma_f = feature_statistics(np.concatenate([np.asarray(f) for f in features]))
    missing = "the reference statistics hold no per-image features (precision/recall need them)"
    return {"fid": frechet_distance(mu_f, sigma_f, mu_r, sigma_r), "precision": None, "recall": None,
            "accuracy": None, "feature_network": "inception-v3", "stats": str(stats),
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
