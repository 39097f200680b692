"""Evaluating text-to-image networks trained on ``digits-captions``: their prompts and the attribute scorer.

``evaluate_model`` (``evaluation/evaluate.py``) evaluates a text network through the same pipeline
as a class-conditional one; this module supplies its condition source and its extra scorer.
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

import numpy as np
import torch
from torch import Tensor, nn

from patchforcing.data.captions import PHRASINGS, digit_caption, measure_digit_attributes
from patchforcing.errors import ConfigError
from patchforcing.evaluation.conditions import Prompts
from patchforcing.text import check_encoder_fits, load_text_encoder

ATTRIBUTE_METRICS = ("thickness_adherence", "slant_adherence", "attribute_adherence")


def digit_prompts(num_samples: int, seed: int = 0) -> tuple[list[str], Tensor, Tensor, Tensor]:
    """Prompts and their (digit, thickness, slant) targets (M,) int64, balanced and shuffled by ``seed``."""
    combos = np.array([(d, th, sl) for d in range(10) for th in range(2) for sl in range(3)])  # (60, 3)
    order = np.arange(num_samples) % len(combos)
    np.random.default_rng(seed).shuffle(order)
    chosen = combos[order]
    prompts = [digit_caption(int(d), int(th), int(sl), phrasing=i % len(PHRASINGS)) for i, (d, th, sl) in enumerate(chosen)]
    digits, thickness, slant = (torch.from_numpy(chosen[:, k]).long() for k in range(3))
    return prompts, digits, thickness, slant


def digit_prompt_source(model: nn.Module, num_samples: int, seed: int = 0, encoder=None) -> Prompts:
    """The balanced digits-captions prompts for a text network, with their digit and attribute targets."""
    cfg = model.config
    if (cfg.in_channels, cfg.input_size) != (1, 16):
        raise ConfigError(f"digits-captions metrics need a 1-channel 16x16 network, this one makes "
                          f"{cfg.in_channels}x{cfg.input_size}x{cfg.input_size}")
    encoder = encoder or load_text_encoder(cfg.text_encoder, max_length=cfg.text_length)
    check_encoder_fits(encoder, model)
    prompts, digits, thickness, slant = digit_prompts(num_samples, seed)
    return Prompts(prompts, encoder, digits, {"thickness": thickness, "slant": slant}, name="digits-captions")


def attribute_scores(images: Tensor, digits: Tensor, attributes: dict[str, Tensor]) -> dict[str, float]:
    """The text-attribute scorer: thickness and slant measured on (M, 1, 16, 16) images in [-1, 1] against the
    prompted ones (``data/captions.py``, the measurement that wrote the training captions)."""
    attrs = measure_digit_attributes(images, digits)
    th_ok, sl_ok = attrs.thickness == attributes["thickness"], attrs.slant == attributes["slant"]
    return {"thickness_adherence": float(th_ok.float().mean()), "slant_adherence": float(sl_ok.float().mean()),
            "attribute_adherence": float((th_ok & sl_ok).float().mean())}
