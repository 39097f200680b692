"""Evaluation metrics: Fréchet distance (FID), improved precision/recall, and feature extractors
(a small digits classifier shipped with the package; Inception-v3 through an optional package)."""

from patchforcing.evaluation.classifier import (
    DigitsClassifier,
    classification_accuracy,
    extract_features,
    load_digits_classifier,
)
from patchforcing.evaluation.frechet import (
    feature_statistics,
    frechet_distance,
    load_statistics,
    save_statistics,
)
from patchforcing.evaluation.inception import inception_features, load_inception
from patchforcing.evaluation.prdc import precision_recall

__all__ = [
    "DigitsClassifier",
    "classification_accuracy",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "inception_features",
    "load_digits_classifier",
    "load_inception",
    "load_statistics",
    "precision_recall",
    "save_statistics",
]
