"""The digits classifier as an evaluator: the feature extractor for FID and precision/recall on
digits, and the accuracy of class-conditional samples.

The network and its shipped weights live in ``patchforcing.digits_classifier`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from patchforcing.digits_classifier import (
    DIGITS_CLASSES,
    DIGITS_RESOLUTION,
    TRAIN_SCRIPT,
    DigitsClassifier,
    default_weights_path,
    load_digits_classifier,
)
from patchforcing.errors import ShapeError

__all__ = [
    "DIGITS_CLASSES",
    "DIGITS_RESOLUTION",
    "TRAIN_SCRIPT",
    "DigitsClassifier",
    "classification_accuracy",
    "default_weights_path",
    "extract_features",
    "load_digits_classifier",
]


def extract_features(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor | np.ndarray,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Apply a feature function to images in batches, without gradients.

    Args:
        fn: maps a (b, ...) batch to (b, F) features, e.g. ``classifier.features``.
        images: (N, ...) images.
        batch_size: images per call of ``fn``.
        device: where to move each batch before calling ``fn``; None leaves it as is.

    Returns:
        (N, F) float32 features.
    """
    images = torch.as_tensor(images)
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            if device is not None:
                batch = batch.to(device)
            feats = fn(batch)
            out.append(feats.reshape(feats.shape[0], -1).float().cpu().numpy())
    if not out:
        raise ShapeError("extract_features got no images; pass at least one image.")
    return np.concatenate(out)


def classification_accuracy(
    classifier: nn.Module,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | int,
    batch_size: int = 256,
) -> float:
    """Fraction of images the classifier assigns to the requested class.

    Args:
        classifier: maps (b, 1, 16, 16) images to (b, 10) logits.
        images: (N, 1, 16, 16) images in [-1, 1].
        labels: (N,) requested classes, or one class for all images.
        batch_size: images per forward pass.

    Returns:
        Accuracy in [0, 1].
    """
    device = next(classifier.parameters()).device
    logits = torch.from_numpy(extract_features(classifier, images, batch_size, device))  # (N, 10)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.numel() == 1:
        labels = labels.expand(logits.shape[0])
    if labels.shape[0] != logits.shape[0]:
        raise ShapeError(f"got {logits.shape[0]} images but {labels.shape[0]} labels; pass one "
                         "label per image or a single class for all.")
    return float((logits.argmax(dim=1) == labels).float().mean())

