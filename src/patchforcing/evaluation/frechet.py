"""Fréchet distance between Gaussian fits of two feature sets (FID, Heusel et al. 2017).

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

The numerics follow the reference implementations (pytorch-fid, the ADM evaluator): float64
statistics, an unbiased covariance, an ``eps * I`` offset when the matrix square root of a
near-singular product is not finite, and the real part of the square root when its imaginary
part is only round-off.

Statistics are stored as ``.npz`` files with keys ``mu`` (D,) and ``sigma`` (D, D), the layout of
the ADM reference batches, so those files load directly.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from patchforcing.errors import DataError, ShapeError
from patchforcing.runs import atomic_write

# Largest imaginary part of the diagonal of sqrtm(sigma1 @ sigma2) that is treated as round-off.
_IMAG_ATOL = 1e-3


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set, in float64.

    Args:
        features: (N, D) features, one row per image; N >= 2.

    Returns:
        ``(mu, sigma)``: mean (D,) and covariance (D, D) with the ``N - 1`` normalisation of
        ``np.cov(features, rowvar=False)``, as the reference FID code computes it.

    Raises:
        ShapeError: when ``features`` is not 2-D or has fewer than two rows.
        DataError: when ``features`` holds NaN or infinite values.
    """
    feats = _as_float64(features)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ShapeError(
            f"feature_statistics expects features of shape (N, D) with N >= 2, got {feats.shape}; "
            "flatten each image's features to one row and pass at least two images."
        )
    if not np.isfinite(feats).all():
        raise DataError(
            "features contain NaN or infinite values; check the images fed to the feature "
            "extractor (expected finite values in [-1, 1])."
        )
    mu = feats.mean(axis=0)  # (D,)
    sigma = np.atleast_2d(np.cov(feats, rowvar=False))  # (D, D)
    return mu, sigma


def _check_statistics(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ShapeError(
            f"statistics {name} have mu {mu.shape} and sigma {sigma.shape}; expected mu (D,) and "
            "sigma (D, D). Compute them with feature_statistics(features) on (N, D) features."
        )


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
    eps: float = 1e-6,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1: (D,) mean of the first feature set (for FID, the generated images).
        sigma1: (D, D) covariance of the first set.
        mu2: (D,) mean of the second set (for FID, the reference images).
        sigma2: (D, D) covariance of the second set.
        eps: offset added to both diagonals when ``sqrtm(sigma1 @ sigma2)`` is not finite, as in
            pytorch-fid and the ADM evaluator.

    Returns:
        The squared Fréchet distance ``|mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))``
        as a Python float (the quantity reported as FID).

    Raises:
        ShapeError: (a ValueError) when the shapes of the two statistics disagree.
        DataError: when the square root has a large imaginary part (too few samples for the
            feature dimension: use more samples than feature dimensions).
    """
    mu1, sigma1, mu2, sigma2 = (_as_float64(a) for a in (mu1, sigma1, mu2, sigma2))
    _check_statistics(mu1, sigma1, "1")
    _check_statistics(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ShapeError(
            f"the two statistics have feature dimensions {mu1.shape[0]} and {mu2.shape[0]}; "
            "compute both with the same feature extractor."
        )

    diff = mu1 - mu2  # (D,)
    covmean = linalg.sqrtm(sigma1 @ sigma2)  # (D, D), possibly complex
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=_IMAG_ATOL):
            largest = float(np.max(np.abs(covmean.imag)))
            raise DataError(
                f"sqrtm(sigma1 @ sigma2) has an imaginary component of {largest:.3g}; the "
                "covariances are badly conditioned. Use more samples than feature dimensions "
                "or a larger eps."
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def save_statistics(
    path: str | os.PathLike, mu: np.ndarray | torch.Tensor, sigma: np.ndarray | torch.Tensor
) -> None:
    """Write ``mu`` (D,) and ``sigma`` (D, D) to an ``.npz`` file (atomically: temp file, rename).

    Args:
        path: destination; written exactly as given (no ``.npz`` suffix is appended).
        mu: (D,) feature mean.
        sigma: (D, D) feature covariance.

    Raises:
        ShapeError: when ``mu`` and ``sigma`` do not fit each other.
    """
    mu, sigma = _as_float64(mu), _as_float64(sigma)
    _check_statistics(mu, sigma, f"for {path}")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, mu=mu, sigma=sigma)

    atomic_write(path, write)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(mu, sigma)`` from an ``.npz`` file written by :func:`save_statistics`.

    ADM reference batches (``VIRTUAL_imagenet256_labeled.npz`` and friends) hold ``mu`` and
    ``sigma`` too and load the same way; their ``arr_0`` images are ignored.

    Args:
        path: an ``.npz`` file with keys ``mu`` (D,) and ``sigma`` (D, D).

    Returns:
        ``(mu, sigma)`` as float64 arrays.

    Raises:
        DataError: when the file is missing, is not an ``.npz`` archive, or lacks ``mu`` and
            ``sigma`` (for example an image batch with only ``arr_0``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"statistics file {path} does not exist; create it with "
            "save_statistics(path, *feature_statistics(features)) or check the path."
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path} is not a readable .npz archive ({err}); expected a file written by "
            "save_statistics with keys 'mu' and 'sigma'."
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path} holds a single array, not an .npz archive; write statistics with "
            "save_statistics(path, mu, sigma)."
        )
    with data:
        keys = set(data.files)
        if {"mu", "sigma"} <= keys:
            try:
                mu, sigma = _as_float64(data["mu"]), _as_float64(data["sigma"])
            except (ValueError, TypeError, OSError, zipfile.BadZipFile) as err:  # object arrays, text, damage
                raise DataError(
                    f"{path}: 'mu' and 'sigma' are not plain numeric arrays ({err}); pickled object arrays are "
                    "never loaded: write the statistics with save_statistics(path, mu, sigma)."
                ) from None
            _check_statistics(mu, sigma, f"in {path}")
            return mu, sigma
    if "arr_0" in keys:
        raise DataError(
            f"{path} holds only images ('arr_0'), not feature statistics; compute features first "
            "(extract_features or inception_features), then save_statistics(path, "
            "*feature_statistics(features))."
        )
    raise DataError(
        f"{path} has keys {sorted(keys)}, but feature statistics need 'mu' and 'sigma'; "
        "write them with save_statistics(path, mu, sigma)."
    )
