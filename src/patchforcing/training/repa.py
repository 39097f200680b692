"""Where a training run gets its REPA targets (docs/method.md §7.3): a frozen encoder applied to the clean
images of each step (image data), or the features stored beside the latents by
``patchforcing prepare-latents --repa-encoder NAME`` (latent data: training never decodes).

Image data sets whose features fit in ``CACHE_BYTES`` are encoded once when the run starts (the
bundled digits: 1,437 x 64 x 64 floats, 24 MB) instead of at every step; the targets are the same
function of the images either way.

The encoder is deterministic and sees each image alone, so a step's targets depend only on the
step's images: resume stays exact and any number of processes computes the same targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from patchforcing.encoders import encode_in_batches, load_encoder
from patchforcing.errors import ConfigError

CACHE_BYTES = 1 << 30  # encode an image data set once when its features take at most this much memory


@dataclass
class RepaTargets:
    """The REPA targets of a run: ``feature_dim`` z, and either an ``encoder`` or ``stored`` features."""

    name: str
    feature_dim: int
    encoder: Callable[[Tensor], Tensor] | None = None
    stored: Tensor | None = None  # (M, N', z), rows like the data set's images

    def targets(self, stored: Tensor | None, x1: Tensor) -> Tensor:
        """(b, N', z) float32 targets of this process's slice ``x1`` (b, C, H, W) of clean images; ``stored``:
        their rows of the stored features as ``StepBatches`` drew them."""
        if self.stored is not None:
            return stored.to(x1.device, dtype=torch.float32, non_blocking=True)
        return self.encoder(x1)


def target_source(config: Any, data: Any, device: str | torch.device = "cpu") -> RepaTargets:
    """The targets for ``config.repa_encoder`` on ``data`` (a ``patchforcing.data.ImageDataset``).

    Raises:
        ConfigError: latent data without stored features of that encoder, or an unknown encoder.
        CheckpointError: a DINOv2 model that is not available locally.
    """
    name = config.repa_encoder
    if data.is_latent:
        stored = getattr(data, "repa_features", None)
        found = getattr(data, "repa_encoder", None)
        if stored is None or found != name:
            have = f"features of {found!r}" if found else "no REPA features"
            raise ConfigError(
                f"the latent data set {data.name!r} holds {have}; REPA on latents needs the encoder's features of the "
                f"images behind them: rerun `patchforcing prepare-latents ... --repa-encoder {name}`"
            )
        return RepaTargets(name, int(stored.shape[-1]), stored=stored)

    images = data.images
    encoder = load_encoder(name, device, int(images.shape[-1]))
    first = encoder(images[:1])  # (1, N', z)
    if first.numel() * 4 * images.shape[0] <= CACHE_BYTES:
        return RepaTargets(name, int(encoder.feature_dim), encoder=encoder, stored=encode_in_batches(encoder, images))
    return RepaTargets(name, int(encoder.feature_dim), encoder=encoder)
