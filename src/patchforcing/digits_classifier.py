"""The digits classifier network: a small CNN for the ``digits`` data and its shipped weights.

The bottom floor that both the evaluation (FID and precision/recall features, accuracy; see
``patchforcing.evaluation.classifier``) and the REPA encoder ``digits-cnn``
(``patchforcing.encoders``) build on. The weights ship inside the package
(``patchforcing/assets/digits_classifier.safetensors``, about 0.5 MB) and are produced by
``scripts/train_digits_classifier.py``, which trains on ``load_dataset("digits", split="train")``
only and records the accuracy on the held-out ``split="test"`` in the file's metadata.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from patchforcing.errors import CheckpointError, ShapeError

DIGITS_RESOLUTION = 16
DIGITS_CLASSES = 10
TRAIN_SCRIPT = "scripts/train_digits_classifier.py"


def default_weights_path() -> Path:
    """Where the shipped classifier weights live inside the installed package."""
    return Path(str(resources.files("patchforcing") / "assets" / "digits_classifier.safetensors"))


class DigitsClassifier(nn.Module):
    """Four 3x3 convolutions, two 2x2 max-pools and one hidden layer whose output is the feature.

    The same network classifies other small images (``patchforcing.photos_classifier`` builds it
    for 3-channel 32x32 photo crops); the defaults are the digits'.

    Args:
        width: channels of the first two convolutions; the last two use ``2 * width``.
        feature_dim: size F of the penultimate layer returned by :meth:`features`.
        dropout: dropout before the output layer (active in training only).
        channels, resolution, classes: the input images (C, R, R) and the number of classes.
    """

    def __init__(self, width: int = 32, feature_dim: int = 64, dropout: float = 0.3, channels: int = 1,
                 resolution: int = DIGITS_RESOLUTION, classes: int = DIGITS_CLASSES) -> None:
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim, "dropout": dropout}
        if (channels, resolution, classes) != (1, DIGITS_RESOLUTION, DIGITS_CLASSES):
            self.config.update(channels=channels, resolution=resolution, classes=classes)
        self.input_shape = (channels, resolution, resolution)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),  # (B, w, R/2, R/2)
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),  # (B, 2w, R/4, R/4)
            nn.Flatten(),
            # GELU, not ReLU, so no feature is identically zero and the FID covariance stays full rank.
            nn.Linear(2 * w * (resolution // 4) ** 2, feature_dim), nn.GELU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, classes))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(
                f"{type(self).__name__} expects images of shape (B, {', '.join(map(str, self.input_shape))}) in [-1, 1], "
                f"got {tuple(x.shape)}; use the data it was trained on at its native resolution."
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features.

        Args:
            x: (B, C, R, R) images in [-1, 1] (digits: (B, 1, 16, 16)).

        Returns:
            (B, F) features, F = ``feature_dim``.
        """
        self._check(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            x: (B, C, R, R) images in [-1, 1] (digits: (B, 1, 16, 16)).

        Returns:
            (B, classes) logits.
        """
        return self.head(self.features(x))


def load_digits_classifier(
    device: str | torch.device = "cpu", path: str | Path | None = None
) -> DigitsClassifier:
    """Load the shipped digits classifier in eval mode.

    Args:
        device: where to put the network.
        path: a weights file; defaults to the one inside the package.

    Returns:
        The classifier, eval mode, gradients off. ``model.metadata`` holds the file's metadata
        (held-out accuracy, architecture, the command that trained it).

    Raises:
        CheckpointError: when the file is missing or does not fit the architecture.
    """
    return load_classifier("digits", Path(path) if path is not None else default_weights_path(), TRAIN_SCRIPT, device)


def load_classifier(what: str, path: Path, train_script: str, device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load a classifier written by ``train_script`` (its architecture in the file's metadata), eval mode."""
    if not path.is_file():
        raise CheckpointError(
            f"{what} classifier weights not found at {path}; regenerate them with "
            f"`python {train_script}` (a few minutes on CPU)."
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state = load_file(str(path))
        config = json.loads(metadata.get("architecture", "{}"))
        model = DigitsClassifier(**config)
        model.load_state_dict(state)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is not a {what} classifier checkpoint ({err}); regenerate it with "
            f"`python {train_script}`."
        ) from None
    model.metadata = metadata
    return model.to(device).eval().requires_grad_(False)
