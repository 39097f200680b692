"""Sample-quality metrics on the bundled ``digits`` data, in the feature space of the shipped
classifier: Fréchet distance, improved precision/recall (k = 3) and class accuracy."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from torch import Tensor

from patchforcing.data import load_dataset
from patchforcing.evaluation.classifier import classification_accuracy, extract_features, load_digits_classifier
from patchforcing.evaluation.frechet import feature_statistics, frechet_distance
from patchforcing.evaluation.prdc import precision_recall


@lru_cache(maxsize=2)
def reference_features(split: str = "train") -> np.ndarray:
    """Classifier features of the real digits of ``split`` (the reference set of the metrics)."""
    data = load_dataset("digits", split=split)
    return extract_features(load_digits_classifier().features, data.images)


def digits_metrics(images: Tensor, labels: Tensor | None = None, *, reference: str = "train", k: int = 3) -> dict[str, float]:
    """FID-style Fréchet distance, precision, recall and (with labels) accuracy of generated digits.

    Args:
        images: (M, 1, 16, 16) generated images in [-1, 1].
        labels: (M,) requested classes (None or negative: unconditional, no accuracy).
    """
    clf = load_digits_classifier()
    fake = extract_features(clf.features, images.float())
    real = reference_features(reference)
    mu_r, sig_r = feature_statistics(real)
    mu_f, sig_f = feature_statistics(fake)
    out = {"fid": frechet_distance(mu_f, sig_f, mu_r, sig_r), **precision_recall(real, fake, k=k)}
    if labels is not None and bool((labels >= 0).all()):
        out["accuracy"] = classification_accuracy(clf, images.float(), labels)
    return out
