"""A classifier of which bundled photograph a 32x32 crop comes from: a second photo feature space.

The hand-made photo features (``evaluation/photos.py``) see colour layout and texture energy only.
This network sees what tells the eight photographs apart, learned from the training crops
(``load_dataset("photos-labeled", split="train")``: the left 85 % of every photograph); its
accuracy on the held-out crops (the right 15 %, which no generator trains on) is in its metadata.
Its penultimate layer is the feature space of :func:`patchforcing.evaluation.photos.photos_metrics`
with ``features="classifier"``. The weights ship inside the package
(``patchforcing/assets/photos_classifier.safetensors``) and are produced by
``scripts/train_photos_classifier.py``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from patchforcing.digits_classifier import DigitsClassifier, load_classifier

PHOTOS_CLASSIFIER_RESOLUTION = 32
TRAIN_SCRIPT = "scripts/train_photos_classifier.py"


def default_weights_path() -> Path:
    """Where the shipped photo classifier weights live inside the installed package."""
    return Path(str(resources.files("patchforcing") / "assets" / "photos_classifier.safetensors"))


def photos_classifier(classes: int, width: int = 32, feature_dim: int = 64, dropout: float = 0.3) -> DigitsClassifier:
    """An untrained photo classifier: the digits network's layout on (B, 3, 32, 32) crops."""
    return DigitsClassifier(width=width, feature_dim=feature_dim, dropout=dropout, channels=3,
                            resolution=PHOTOS_CLASSIFIER_RESOLUTION, classes=classes)


def load_photos_classifier(device: str | torch.device = "cpu", path: str | Path | None = None) -> DigitsClassifier:
    """Load the shipped photo classifier in eval mode (``model.metadata``: held-out accuracy, command).

    Raises:
        CheckpointError: when the file is missing or does not fit the architecture.
    """
    return load_classifier("photos", Path(path) if path is not None else default_weights_path(), TRAIN_SCRIPT, device)
