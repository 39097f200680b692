"""What a training step sees, as a pure function of ``(seed, step)``.

Every step draws its GLOBAL batch -- which images, then (``example.draw_example``) the noise
``x0``, the times ``t`` and which labels are dropped for guidance -- from a fresh
``torch.Generator`` seeded by ``(seed, step)``, and each process keeps its slice. Hence, by construction:

* resuming from a checkpoint at step k continues with exactly the batches an uninterrupted run
  would have drawn (no data-loader or RNG state to restore);
* N processes together see the same global batch as one process, so a config trains the same
  network whatever N is (up to the rounding of the gradient average).

Images are visited in epochs: epoch e is a permutation of the data set seeded by ``(seed, e)``
and step k (1-based) takes positions ``[(k-1) B, k B)`` of the concatenated epochs.

Latent folders that store more than the posterior mean (``prepare-latents`` writes the
posterior std, and with ``--hflip`` the mirrored images' posteriors) give each row several
versions: per sample and step, one of the two mirrorings (probability 1/2) and, with
``latent_sampling="posterior"``, the sample ``mean + std * eps``. Both draws come from the
step's own stream ``(seed, STREAM_LATENT_VIEW, step)`` for the global batch, so they too are a
function of ``(seed, step)``; a folder of means only draws nothing there and gives the batches
it always gave.

For a text-to-image network the condition of a row is its caption, or the empty prompt when the
caption is dropped (docs/method.md §9.2); which are dropped is drawn for the global batch from the
stream ``(seed, STREAM_TEXT_DROPOUT, step)``. The example then carries this process's captions,
which the trainer encodes (``training/text.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from patchforcing.errors import ConfigError
from patchforcing.loss import Example
from patchforcing.streams import STREAM_EPOCH, STREAM_LATENT_VIEW, STREAM_STEP, STREAM_TEXT_DROPOUT, make_generator
from patchforcing.timesteps import TimestepDistribution
from patchforcing.training.example import draw_example


class StepBatches(Dataset):
    """Map-style data set over STEPS: ``batches[step]`` is this process's slice of the step's batch.

    Args:
        images: (M, C, H, W) training images in [-1, 1] (or latents).
        labels: (M,) int64 class labels.
        batch_size: the GLOBAL batch B.
        rank, world_size: this process keeps rows ``[rank * B/W, (rank + 1) * B/W)``.
        timesteps: the training timestep distribution.
        num_patches: N of the network (the shape of ``t`` is (B, N)).
        null_label: the guidance null class, or None when labels are never dropped.
        drop_prob: probability that a label is replaced by ``null_label``.
        global_time: give ``t`` as (B,) (one time per sample, for the SiT baseline).
        features: (M, N', z) stored REPA targets of the images (latent data), or None.
        views: the latent folder's other stored versions of each row (``LatentViews``), or None.
        latent_sampling: "posterior" draws ``mean + std * eps`` (needs ``views.std``); "mean"
            trains on the posterior mean.
        captions: one caption per image (text-to-image networks), or None.
        text_dropout: probability that a caption is replaced by the empty prompt.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        seed: int,
        batch_size: int,
        rank: int,
        world_size: int,
        timesteps: TimestepDistribution,
        num_patches: int,
        null_label: int | None,
        drop_prob: float,
        global_time: bool,
        features: Tensor | None = None,
        views: Any = None,
        latent_sampling: str = "mean",
        captions: list[str] | None = None,
        text_dropout: float = 0.0,
    ):
        self.images, self.labels = images, labels
        self.seed, self.batch_size = seed, batch_size
        self.local = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self.timesteps, self.num_patches = timesteps, num_patches
        self.null_label, self.drop_prob, self.global_time = null_label, drop_prob, global_time
        self.features = features
        self.views, self.posterior = views, latent_sampling == "posterior"
        if self.posterior and (views is None or views.std is None):
            raise ValueError("latent_sampling='posterior' needs a latent folder that stores the posterior std")
        self.captions, self.text_dropout = captions, float(text_dropout)
        self._epochs: dict[int, Tensor] = {}

    def __len__(self) -> int:  # steps are unbounded; DataLoader is given an explicit sampler
        return 2**62

    def __getitem__(self, step: int) -> Example:
        """This process's ``Example`` of step ``step`` (1-based): ``x1`` (b, C, H, W), ``x0`` like it, ``t`` (b, N)
        or (b,), ``condition`` the labels (b,) after guidance dropout (with captions: the b captions after
        text dropout), ``repa_target`` the stored features (b, N', z) or None."""
        index = self.indices(step)  # (B,)
        g = make_generator(self.seed, STREAM_STEP, step)
        x1 = self.images[index]
        flip = None
        if self.views is not None and (self.posterior or self.views.flip is not None):
            x1, flip = self._view(x1, index, make_generator(self.seed, STREAM_LATENT_VIEW, step))
        example = draw_example(x1, self.labels[index], g, timesteps=self.timesteps, num_patches=self.num_patches,
                               null_label=self.null_label, drop_prob=self.drop_prob, global_time=self.global_time)
        s = self.local
        target = None
        if self.features is not None:
            target = self.features[index[s]]  # (b, N', z)
            if flip is not None and self.views.flip_features is not None:
                target = torch.where(flip[s, None, None], self.views.flip_features[index[s]], target)
        condition = example.condition[s] if self.captions is None else self._captions(index, step)[s]
        return Example(x1[s], example.x0[s], example.t[s], condition, target)

    def _captions(self, index: Tensor, step: int) -> list[str]:
        """The global batch's captions (B,), the dropped ones replaced by ``""``."""
        drop = torch.rand((index.shape[0],), generator=make_generator(self.seed, STREAM_TEXT_DROPOUT, step)) < self.text_dropout
        return ["" if bool(drop[i]) else self.captions[int(row)] for i, row in enumerate(index)]

    def _view(self, mean: Tensor, index: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """The step's version of each latent row: (B, c, h, w), and which rows are mirrored (B,) or None."""
        views, flip = self.views, None
        std = views.std[index] if self.posterior else None
        if views.flip is not None:
            flip = torch.rand((len(index),), generator=g) < 0.5  # (B,)
            mean = torch.where(flip[:, None, None, None], views.flip[index], mean)
            if std is not None:
                std = torch.where(flip[:, None, None, None], views.flip_std[index], std)
        if std is not None:
            mean = mean + std * torch.randn(mean.shape, generator=g, dtype=mean.dtype)
        return mean, flip

    def indices(self, step: int) -> Tensor:
        """Data set rows of the GLOBAL batch of ``step`` (1-based), (B,) int64."""
        m = self.images.shape[0]
        start = (step - 1) * self.batch_size
        pieces, pos = [], start
        while pos < start + self.batch_size:
            epoch, offset = divmod(pos, m)
            take = min(m - offset, start + self.batch_size - pos)
            pieces.append(self._permutation(epoch)[offset : offset + take])
            pos += take
        return torch.cat(pieces)

    def _permutation(self, epoch: int) -> Tensor:
        if epoch not in self._epochs:
            if len(self._epochs) > 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = torch.randperm(self.images.shape[0], generator=make_generator(self.seed, STREAM_EPOCH, epoch))
        return self._epochs[epoch]


def latent_views(data: Any, latent_sampling: str) -> dict[str, Any]:
    """``StepBatches`` keywords for ``train --latent-sampling`` on ``data`` (an ``ImageDataset``).

    "auto" samples the posterior where the folder stores its std and trains on the mean
    otherwise (pixels, and latent folders of older versions: their batches are unchanged).

    Raises:
        ConfigError: "posterior" on data without a stored posterior std.
    """
    views = getattr(data, "latent_views", None)
    has_std = views is not None and views.std is not None
    if latent_sampling == "posterior" and not has_std:
        raise ConfigError(
            f"--latent-sampling posterior needs a latent folder that stores the posterior std; {data.name!r} does not: "
            "rerun `patchforcing prepare-latents` to rewrite it, or pass --latent-sampling mean"
        )
    mode = "posterior" if latent_sampling == "posterior" or (latent_sampling == "auto" and has_std) else "mean"
    return {"views": views, "latent_sampling": mode}


def iterate(batches: StepBatches, first: int, last: int, num_workers: int, pin_memory: bool):
    """Yield ``batches[first] ... batches[last]`` in order, drawn by ``num_workers`` processes (0: inline)."""
    if num_workers == 0:
        return (batches[step] for step in range(first, last + 1))
    from torch.utils.data import DataLoader

    return iter(
        DataLoader(batches, batch_size=None, sampler=range(first, last + 1), num_workers=num_workers,
                   pin_memory=pin_memory, prefetch_factor=4)
    )
