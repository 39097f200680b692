"""Sample-quality metrics on the bundled ``photos`` crops, in a hand-made feature space.

No network trained on natural images ships offline (the Inception path needs its weights), so the
photo crops are compared in a fixed feature space that needs no training: per image, the colours of
an 8x8 grid of cells (each the mean RGB of a 4x4 pixel cell of the 32x32 crop: 192 values, the
layout) and the luminance standard deviation inside each cell (64 values, the texture). The
Fréchet distance and improved precision/recall (k = 3) are computed on these 256 features against
the training crops. Lower-level than Inception features: they see colour, layout and texture
energy, not objects. Numbers from this space compare samplers with each other, not with the
literature.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from patchforcing.data import load_dataset
from patchforcing.errors import ShapeError
from patchforcing.evaluation.classifier import extract_features
from patchforcing.evaluation.frechet import feature_statistics, frechet_distance
from patchforcing.evaluation.prdc import precision_recall
from patchforcing.photos_classifier import load_photos_classifier

CELLS = 8  # cells per side of the feature grid
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights


def photo_features(images: Tensor) -> np.ndarray:
    """Colour layout and texture energy of RGB images.

    Args:
        images: (M, 3, H, W) in [-1, 1], H and W divisible by 8.
    Returns:
        (M, 256) float64: 8x8 cell mean colours (192) then 8x8 cell luminance std (64).
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % CELLS or images.shape[3] % CELLS:
        raise ShapeError(f"photo features need (M, 3, H, W) images with H, W divisible by {CELLS}, got {tuple(images.shape)}")
    x = images.double()
    cell = images.shape[2] // CELLS
    colour = F.avg_pool2d(x, cell)  # (M, 3, 8, 8)
    luma = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (M, 1, H, W)
    var = F.avg_pool2d(luma**2, cell) - F.avg_pool2d(luma, cell) ** 2
    texture = var.clamp_min(0).sqrt()  # (M, 1, 8, 8)
    return torch.cat([colour.flatten(1), texture.flatten(1)], dim=1).numpy()


def classifier_photo_features(images: Tensor) -> np.ndarray:
    """The penultimate layer of the shipped photo classifier (``patchforcing.photos_classifier``).

    Args:
        images: (M, 3, 32, 32) in [-1, 1].
    Returns:
        (M, 64) float64 features of a network trained to tell the bundled photographs apart.
    """
    return extract_features(_photos_classifier().features, images.float()).astype(np.float64)


@lru_cache(maxsize=1)
def _photos_classifier():
    return load_photos_classifier()


FEATURES = {"hand": photo_features, "classifier": classifier_photo_features}


@lru_cache(maxsize=4)
def reference_photo_features(split: str = "train", resolution: int = 32, features: str = "hand") -> np.ndarray:
    """Features of the bundled photo crops of ``split`` (the reference set of the metrics)."""
    return FEATURES[features](load_dataset("photos", split=split, resolution=resolution).images)


def photos_metrics(images: Tensor, *, reference: str = "train", k: int = 3, features: str = "hand") -> dict[str, float]:
    """Fréchet distance, precision and recall of generated photo crops (M, 3, R, R) in [-1, 1].

    ``features``: ``hand`` (colour layout and texture, above) or ``classifier`` (the photo
    classifier's penultimate layer; 32x32 crops only).
    """
    if features not in FEATURES:
        raise ValueError(f"unknown photo feature space {features!r}; choose one of: {', '.join(FEATURES)}")
    fake = FEATURES[features](images.float())
    real = reference_photo_features(reference, int(images.shape[-1]), features)
    mu_r, sig_r = feature_statistics(real)
    mu_f, sig_f = feature_statistics(fake)
    return {"fid": frechet_distance(mu_f, sig_f, mu_r, sig_r), **precision_recall(real, fake, k=k)}
