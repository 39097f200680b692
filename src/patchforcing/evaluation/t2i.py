"""Evaluating text-to-image networks trained on ``digits-captions``.

Prompts are built from (digit, thickness, slant) triples, balanced over all 60 combinations and
cycled over the caption phrasings. Each generated image is scored with:

* ``fid`` (and precision/recall): Fréchet distance to the TRAINING digits in the feature space of
  the shipped digits classifier (``evaluation/digits.py``);
* ``accuracy``: the classifier's digit equals the prompted digit;
* ``thickness_adherence`` / ``slant_adherence``: the attribute measured on the generated image
  (``data/captions.py``, the same measurement and thresholds that wrote the training captions)
  equals the prompted one; ``attribute_adherence``: both do. Chance levels: 1/2, 1/3 and 1/6.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from patchforcing.data.captions import PHRASINGS, digit_caption, measure_digit_attributes
from patchforcing.errors import ConfigError
from patchforcing.sampling import noise_for_seeds, sample, steps_for_nfe


def digit_prompts(num_samples: int, seed: int = 0) -> tuple[list[str], Tensor, Tensor, Tensor]:
    """Prompts and their (digit, thickness, slant) targets (M,) int64, balanced and shuffled by ``seed``."""
    combos = np.array([(d, th, sl) for d in range(10) for th in range(2) for sl in range(3)])  # (60, 3)
    order = np.arange(num_samples) % len(combos)
    np.random.default_rng(seed).shuffle(order)
    chosen = combos[order]
    prompts = [digit_caption(int(d), int(th), int(sl), phrasing=i % len(PHRASINGS)) for i, (d, th, sl) in enumerate(chosen)]
    digits, thickness, slant = (torch.from_numpy(chosen[:, k]).long() for k in range(3))
    return prompts, digits, thickness, slant


@torch.no_grad()
def generate_from_prompts(model: nn.Module, encoder, prompts: list[str], *, sampler: str, steps: int, seed: int = 0,
                          cfg_scale: float = 1.0, batch_size: int = 256, **options: Any) -> tuple[Tensor, dict[str, Any]]:
    """Images (M, C, H, W) float32 on the CPU for ``prompts``; image i uses noise seed ``seed + i``."""
    from patchforcing.text import text_condition

    cfg = model.config
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    out, info = [], {}
    for start in range(0, len(prompts), batch_size):
        chunk = list(range(start, min(start + batch_size, len(prompts))))
        noise = noise_for_seeds([seed + i for i in chunk], (cfg.in_channels, cfg.input_size, cfg.input_size), device=device, dtype=dtype)
        condition = text_condition(encoder, [prompts[i] for i in chunk], device)
        gen = [torch.Generator().manual_seed(seed + i + 1_000_003) for i in chunk]  # one mask stream per image
        x, info = sample(model, noise, sampler=sampler, steps=steps, condition=condition, cfg_scale=cfg_scale,
                         return_info=True, generator=gen, **options)
        out.append(x.float().cpu())
    return torch.cat(out), info


def evaluate_text_digits(model: nn.Module, *, sampler: str, nfe: int, num_samples: int, seed: int = 0, cfg_scale: float = 1.0,
                         encoder=None, batch_size: int = 256, return_images: bool = False, **options: Any) -> dict[str, Any]:
    """FID, digit accuracy and attribute adherence of a text network on digits-captions prompts at an NFE budget."""
    from patchforcing.evaluation.digits import digits_metrics
    from patchforcing.text import check_encoder_fits, load_text_encoder

    cfg = model.config
    if (cfg.in_channels, cfg.input_size) != (1, 16):
        raise ConfigError(f"digits-captions metrics need a 1-channel 16x16 network, this one makes {cfg.in_channels}x{cfg.input_size}x{cfg.input_size}")
    encoder = encoder or load_text_encoder(cfg.text_encoder, max_length=cfg.text_length)
    check_encoder_fits(encoder, model)
    steps = steps_for_nfe(sampler, nfe, **options)
    prompts, digits, thickness, slant = digit_prompts(num_samples, seed)
    images, info = generate_from_prompts(model, encoder, prompts, sampler=sampler, steps=steps, seed=seed,
                                         cfg_scale=cfg_scale, batch_size=batch_size, **options)
    attrs = measure_digit_attributes(images, digits)
    th_ok, sl_ok = attrs.thickness == thickness, attrs.slant == slant
    result = {
        "data": "digits-captions", "sampler": sampler, "nfe_budget": nfe, "nfe": info.get("nfe"), "steps": steps,
        "num_samples": num_samples, "cfg_scale": cfg_scale, "options": options, "seed": seed,
        **digits_metrics(images, digits),
        "thickness_adherence": float(th_ok.float().mean()), "slant_adherence": float(sl_ok.float().mean()),
        "attribute_adherence": float((th_ok & sl_ok).float().mean()),
    }
    if return_images:
        result["images"], result["prompts"] = images, prompts
    return result


def run_text_evaluation(model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """``patchforcing evaluate`` for a text network: writes ``metrics.json`` and ``samples.png`` to ``--out``."""
    from patchforcing.training.evaluate import save_grid

    if args.data not in ("digits", "digits-captions"):
        raise ConfigError(f"text-to-image networks are evaluated on digits-captions here, not {args.data!r}")
    options = {k: v for k, v in (("p", args.p), ("n_inner", args.n_inner), ("context_ratio", args.context_ratio)) if v is not None}
    result = evaluate_text_digits(model, sampler=args.sampler, nfe=args.nfe, num_samples=args.num_samples, seed=args.seed,
                                  cfg_scale=args.cfg_scale, batch_size=args.batch_size, return_images=True, **options)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = result.pop("images")
    save_grid(images[:60], out / "samples.png", columns=10)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.sampler} @ {result['nfe']} NFE: FID {result['fid']:.2f}, digit accuracy {result['accuracy']:.3f}, "
          f"thickness {result['thickness_adherence']:.3f}, slant {result['slant_adherence']:.3f}, "
          f"both {result['attribute_adherence']:.3f} -> {out / 'metrics.json'}")
    return result
