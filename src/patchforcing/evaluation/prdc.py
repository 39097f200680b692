"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models", Sec. 2).

Each feature set approximates its manifold by the union of balls around its points, the radius of
a point being the distance to its k-th nearest neighbour in the same set (itself excluded):

    precision = fraction of generated features inside the real manifold,
    recall    = fraction of real features inside the generated manifold,

where "inside" means within the radius of at least one point of the other set (distance <= radius,
as in the authors' code). Distances come from ``torch.cdist`` one block of rows at a time, so the
memory used is ``batch_size x N`` floats, never ``N x N``: 50k x 50k sets fit on a laptop.

Exact for any features: ``cdist`` expands ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` through a matrix
product, which cancels catastrophically when the features sit far from the origin (float32
features offset by 100 moved precision by 0.002). Both sets are therefore shifted by their joint
mean (distances do not change) and compared in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from patchforcing.errors import ConfigError, ShapeError

# Rows per distance block; a block against 50k points is 512 * 50k * 8 bytes = 200 MB in float64.
DEFAULT_BATCH_SIZE = 512


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to(device=device, dtype=torch.float64)
    if x.ndim != 2:
        raise ShapeError(f"{name} must have shape (N, D), got {tuple(x.shape)}; flatten each "
                         "image's features to one row.")
    return x


def knn_radii(features: torch.Tensor, k: int, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set, itself excluded.

    Args:
        features: (N, D) features, N > k.
        k: which neighbour sets the radius.
        batch_size: rows per distance block.

    Returns:
        (N,) radii.
    """
    radii = []
    for start in range(0, features.shape[0], batch_size):
        dist = torch.cdist(features[start:start + batch_size], features)  # (b, N)
        # The k + 1 smallest include the point itself at distance 0.
        radii.append(dist.topk(k + 1, dim=1, largest=False).values[:, k])  # (b,)
    return torch.cat(radii)


def manifold_coverage(
    manifold: torch.Tensor,
    radii: torch.Tensor,
    queries: torch.Tensor,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Fraction of ``queries`` lying within ``radii`` of at least one ``manifold`` point.

    Args:
        manifold: (M, D) points spanning the manifold.
        radii: (M,) radius of each manifold point.
        queries: (Q, D) points to test.
        batch_size: query rows per distance block.

    Returns:
        The fraction in [0, 1].
    """
    inside = 0
    for start in range(0, queries.shape[0], batch_size):
        dist = torch.cdist(queries[start:start + batch_size], manifold)  # (b, M)
        inside += int((dist <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real_features: np.ndarray | torch.Tensor,
    fake_features: np.ndarray | torch.Tensor,
    k: int = 3,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Improved precision and recall of generated features against real ones.

    Args:
        real_features: (N, D) features of real images.
        fake_features: (M, D) features of generated images, same D.
        k: the k-th nearest neighbour sets each ball's radius (the paper uses 3).
        batch_size: rows per distance block; lower it if memory runs out.
        device: where to compute; defaults to the device of ``real_features`` (CPU for numpy).

    Returns:
        ``{"precision": float, "recall": float}``, both in [0, 1].

    Raises:
        ShapeError: when the inputs are not (N, D) with the same D, or have at most k rows.
        ConfigError: when ``k`` or ``batch_size`` is not a positive integer.
    """
    if k < 1 or batch_size < 1:
        raise ConfigError(f"k and batch_size must be positive integers, got k={k}, "
                          f"batch_size={batch_size}.")
    if device is None:
        device = real_features.device if isinstance(real_features, torch.Tensor) else "cpu"
    device = torch.device(device)
    real = _as_tensor(real_features, device, "real_features")  # (N, D)
    fake = _as_tensor(fake_features, device, "fake_features")  # (M, D)
    if real.shape[1] != fake.shape[1]:
        raise ShapeError(f"real features have dimension {real.shape[1]} but fake features "
                         f"{fake.shape[1]}; extract both with the same feature extractor.")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ShapeError(f"precision/recall with k={k} needs more than {k} points per set, got "
                         f"{real.shape[0]} real and {fake.shape[0]} fake; pass more samples.")
    center = (real.sum(0) + fake.sum(0)) / (real.shape[0] + fake.shape[0])  # (D,) distances are shift-invariant
    real, fake = real - center, fake - center
    with torch.no_grad():
        real_radii = knn_radii(real, k, batch_size)  # (N,)
        fake_radii = knn_radii(fake, k, batch_size)  # (M,)
        precision = manifold_coverage(real, real_radii, fake, batch_size)
        recall = manifold_coverage(fake, fake_radii, real, batch_size)
    return {"precision": precision, "recall": recall}
