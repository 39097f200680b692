"""Held-out diagnostics of any network: the 8-segment validation loss and the difficulty-head
calibration (docs/method.md), for class-conditional networks on labelled images and for text
networks on captioned ones (their captions encoded as the condition)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from patchforcing.data import load_dataset
from patchforcing.errors import ConfigError, DataError, ShapeError
from patchforcing.evaluation.calibration import difficulty_calibration
from patchforcing.loss import held_out_loss, segment_times
from patchforcing.sampling import noise_for_seeds
from patchforcing.text import check_encoder_fits, load_text_encoder

DIGITS = "digits"


def held_out_data(model: nn.Module, data: str = DIGITS, split: str = "test"):
    """The ``split`` of ``data`` as an ImageDataset, checked against the network's sample shape
    (a text network's ``digits`` are the captioned ``digits-captions``)."""
    cfg = model.config
    if cfg.is_text and data == DIGITS:
        data = "digits-captions"
    dataset = load_dataset(data, split=split)
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    if tuple(dataset.images.shape[1:]) != shape:
        raise ShapeError(f"data {data!r} ({split}) holds {'x'.join(map(str, dataset.images.shape[1:]))} images; "
                         f"this network takes {'x'.join(map(str, shape))}: pass the data set it was trained on")
    if len(dataset) == 0:
        raise DataError(f"data {data!r} has no {split!r} images")
    return dataset


def _labels_for(model: nn.Module, dataset, encoder=None) -> Tensor | None:
    """What the network is conditioned on for each held-out image: the data's labels when it is
    class-conditional on the same classes; for a text network the encoded captions (M, L, D);
    else None."""
    cfg = model.config
    if cfg.is_text:
        captions = getattr(dataset, "captions", None)
        if not captions:
            raise DataError(f"data {dataset.name!r} has no captions; a text-to-image network is measured on captioned "
                            "held-out images (digits-captions, or a captioned folder)")
        encoder = encoder or load_text_encoder(cfg.text_encoder, max_length=cfg.text_length)
        check_encoder_fits(encoder, model)
        return encoder.encode(list(captions), "cpu").to(next(model.parameters()).dtype)
    if model.config.num_classes <= 0:
        return None
    if dataset.num_classes != model.config.num_classes:
        raise ShapeError(f"the network has {model.config.num_classes} classes but data {dataset.name!r} has "
                         f"{dataset.num_classes}: pass the data set it was trained on")
    return dataset.labels


@torch.no_grad()
def validation_report(model: nn.Module, data: str = DIGITS, split: str = "test", seed: int = 0,
                      batch_size: int = 256) -> dict[str, Any]:
    """The 8-segment validation loss (docs/method.md) of any network on a held-out set.

    Image ``i`` is paired with noise of seed ``seed + i``; at each of the 8 global times
    ``t = (k + 0.5) / 8`` the flow loss is averaged over all images, so the result does not depend
    on ``batch_size``.

    Returns:
        ``val_loss`` (mean of the segments), ``val_loss_segments`` (8,), ``segment_times`` (8,),
        ``num_images``, ``data``, ``split``, ``seed``.
    """
    dataset = held_out_data(model, data, split)
    labels = _labels_for(model, dataset)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    n = len(dataset)

    def batches():
        for lo in range(0, n, batch_size):
            x1 = dataset.images[lo:lo + batch_size].to(device=device, dtype=dtype)  # (b, C, H, W)
            x0 = noise_for_seeds(range(seed + lo, seed + lo + x1.shape[0]), x1.shape[1:], device=device, dtype=dtype)
            yield x1, x0, None if labels is None else labels[lo:lo + batch_size].to(device)

    mean, segments = held_out_loss(model, batches())
    return {"val_loss": mean, "val_loss_segments": segments, "segment_times": segment_times(),
            "num_images": n, "data": data, "split": split, "seed": seed}


def calibration_report(model: nn.Module, data: str = DIGITS, split: str = "test",
                       seed: int = 0) -> list[dict[str, float]]:
    """Difficulty-head calibration rows (``t``, ``spearman``, ``pearson``, ...) on a held-out set."""
    if not model.config.has_difficulty_head:
        raise ConfigError("calibration needs a Patch Forcing network with a difficulty head; this is a SiT network")
    dataset = held_out_data(model, data, split)
    return difficulty_calibration(model, dataset.images, labels=_labels_for(model, dataset), seed=seed)
