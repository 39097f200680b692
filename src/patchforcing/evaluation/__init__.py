"""Evaluation: ``evaluate(model, plan, spec)`` (sample with a plan, for class labels or prompts, then score;
``evaluate_model`` takes the same as keywords), the held-out
``validation_report``, and the metrics it uses: Fréchet distance (FID), improved precision/recall,
and feature extractors (a small digits classifier shipped with the package; Inception-v3 through an
optional package)."""

from patchforcing.evaluation.classifier import (
    DigitsClassifier,
    classification_accuracy,
    extract_features,
    load_digits_classifier,
)
from patchforcing.evaluation.conditions import ClassLabels, ConditionSource, Prompts
from patchforcing.evaluation.evaluate import (
    EvalSpec,
    calibration_report,
    check_evaluation,
    evaluate,
    evaluate_model,
    save_samples_npz,
    validation_report,
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
    "ClassLabels",
    "ConditionSource",
    "DigitsClassifier",
    "EvalSpec",
    "Prompts",
    "calibration_report",
    "check_evaluation",
    "classification_accuracy",
    "evaluate",
    "evaluate_model",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "inception_features",
    "load_digits_classifier",
    "load_inception",
    "load_statistics",
    "precision_recall",
    "save_samples_npz",
    "save_statistics",
    "validation_report",
]
