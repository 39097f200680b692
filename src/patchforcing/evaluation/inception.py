"""Inception-v3 pool features (2048-d) for ImageNet-style FID, through an optional package.

Nothing here is imported until called, and nothing is downloaded: the FID Inception weights must
already be on disk, either passed as ``weights_path`` or in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``) under the file name the backend would download. Backends, tried
in order:

1. ``pytorch-fid`` (``pytorch_fid.inception.InceptionV3``), weights
   ``pt_inception-2015-12-05-6726825d.pth``;
2. ``torch-fidelity`` (``FeatureExtractorInceptionV3``), weights
   ``weights-inception-2015-12-05-6726825d.pth``.

Both need torchvision; install one on a machine where torchvision works: ``pip install pytorch-fid``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from patchforcing.errors import CheckpointError, ConfigError, PatchForcingError, ShapeError
from patchforcing.evaluation.classifier import extract_features
from patchforcing.images import to_uint8_in_dtype

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048


def _cached_weights(file_name: str, weights_path: str | Path | None) -> Path:
    """The weights file to load: ``weights_path`` if given, else the torch hub cache entry."""
    path = Path(weights_path) if weights_path is not None else (
        Path(torch.hub.get_dir()) / "checkpoints" / file_name)
    if not path.is_file():
        raise CheckpointError(
            f"Inception weights not found at {path}; nothing is downloaded at run time. Copy "
            f"{file_name} there (or pass weights_path=...) from a machine with internet access."
        )
    return path


def _pytorch_fid(module, weights_path: str | Path | None, device: torch.device) -> Callable:
    path = _cached_weights(PYTORCH_FID_WEIGHTS, weights_path)

    def load_local(*args, **kwargs):  # stands in for the download inside fid_inception_v3()
        return torch.load(path, map_location="cpu", weights_only=True)

    def build():
        return module.InceptionV3([module.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
                                  resize_input=True, normalize_input=True)

    if weights_path is None:
        net = build()  # finds the file in the hub cache checked above, so it downloads nothing
    else:
        with mock.patch.object(module, "load_state_dict_from_url", load_local):
            net = build()
    net = net.to(device).eval()

    def features(x: torch.Tensor) -> torch.Tensor:  # x (B, 3, H, W) in [-1, 1]
        return net((x + 1) / 2)[0].flatten(1)  # the net wants [0, 1]; (B, 2048)

    return features


def _torch_fidelity(module, weights_path: str | Path | None, device: torch.device) -> Callable:
    path = _cached_weights(TORCH_FIDELITY_WEIGHTS, weights_path)
    net = module.FeatureExtractorInceptionV3(
        "inception-v3-compat", [str(FEATURE_DIM)], feature_extractor_weights_path=str(path))
    net = net.to(device).eval()

    def features(x: torch.Tensor) -> torch.Tensor:  # x (B, 3, H, W) in [-1, 1]
        x = to_uint8_in_dtype(x)  # the net wants uint8
        return net(x)[0].flatten(1)  # (B, 2048)

    return features


# (package, module, builder), in order of preference.
_BACKENDS = (
    ("pytorch-fid", "pytorch_fid.inception", _pytorch_fid),
    ("torch-fidelity", "torch_fidelity.feature_extractor_inceptionv3", _torch_fidelity),
)


def load_inception(
    weights_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The first available Inception-v3 feature function.

    Args:
        weights_path: the backend's FID Inception weights; defaults to the torch hub cache.
        device: where to run the network.

    Returns:
        A function mapping (B, 3, H, W) images in [-1, 1] to (B, 2048) pool features.

    Raises:
        ConfigError: when neither pytorch-fid nor torch-fidelity can be imported.
        CheckpointError: when the weights are not on disk or do not fit the network.
    """
    device = torch.device(device)
    failures = []
    for package, module_name, build in _BACKENDS:
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # not installed, or installed with a broken torchvision
            failures.append(f"{package}: {type(err).__name__}: {err}")
            continue
        try:
            return build(module, weights_path, device)
        except PatchForcingError:
            raise
        except Exception as err:
            raise CheckpointError(
                f"{package} could not load its Inception weights ({type(err).__name__}: {err}); "
                f"pass {PYTORCH_FID_WEIGHTS} for pytorch-fid or {TORCH_FIDELITY_WEIGHTS} for "
                "torch-fidelity as weights_path."
            ) from err
    raise ConfigError(
        "Inception-v3 features need pytorch-fid or torch-fidelity, and neither is usable here ("
        + "; ".join(failures) + "). Run `pip install pytorch-fid` on a machine where torchvision "
        "works, with the FID Inception weights available offline (weights_path=... or the torch "
        "hub cache). For digits, use load_digits_classifier().features instead."
    )


def inception_features(
    images: torch.Tensor | np.ndarray,
    weights_path: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Inception-v3 pool features of images, for FID against ImageNet-style statistics.

    Args:
        images: (N, 3, H, W) or (N, 1, H, W) images in [-1, 1]; resized to 299x299 by the
            backend, single-channel images repeated to RGB.
        weights_path: FID Inception weights (see the module docstring); defaults to the torch
            hub cache. Never downloaded.
        batch_size: images per forward pass.
        device: where to run the network.

    Returns:
        (N, 2048) float32 features.

    Raises:
        ShapeError: when ``images`` is not (N, 1 or 3, H, W).
        ConfigError: when no backend package is installed (says which to install).
        CheckpointError: when the weights are not available offline.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ShapeError(f"inception_features expects images (N, 3, H, W) or (N, 1, H, W) in "
                         f"[-1, 1], got {tuple(images.shape)}.")
    fn = load_inception(weights_path, device)

    def rgb_features(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return fn(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)

    return extract_features(rgb_features, images, batch_size, device)

