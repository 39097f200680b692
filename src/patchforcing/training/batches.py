"""What a training step sees, as a pure function of ``(seed, step)``.

Every step draws its GLOBAL batch -- which images, the noise ``x0``, the times ``t`` and which
labels are dropped for guidance -- from a fresh ``torch.Generator`` seeded by ``(seed, step)``,
and each process keeps its slice. Hence, by construction:

* resuming from a checkpoint at step k continues with exactly the batches an uninterrupted run
  would have drawn (no data-loader or RNG state to restore);
* N processes together see the same global batch as one process, so a config trains the same
  network whatever N is (up to the rounding of the gradient average).

Images are visited in epochs: epoch e is a permutation of the data set seeded by ``(seed, e)``
and step k (1-based) takes positions ``[(k-1) B, k B)`` of the concatenated epochs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from patchforcing.timesteps import TimestepDistribution

# Separate random streams derived from the seed (any distinct constants would do).
STREAM_STEP, STREAM_EPOCH, STREAM_VALIDATION, STREAM_SAMPLES = 1, 2, 3, 4


def make_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a hash of ``key`` (nearby keys give unrelated streams)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


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
    ):
        self.images, self.labels = images, labels
        self.seed, self.batch_size = seed, batch_size
        self.local = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self.timesteps, self.num_patches = timesteps, num_patches
        self.null_label, self.drop_prob, self.global_time = null_label, drop_prob, global_time
        self.features = features
        self._epochs: dict[int, Tensor] = {}

    def __len__(self) -> int:  # steps are unbounded; DataLoader is given an explicit sampler
        return 2**62

    def __getitem__(self, step: int) -> dict[str, Any]:
        """The slice of step ``step`` (1-based): ``x1`` (b, C, H, W), ``x0`` like it, ``t`` (b, N) or (b,), ``labels`` (b,)."""
        index = self.indices(step)  # (B,)
        g = make_generator(self.seed, STREAM_STEP, step)
        x1 = self.images[index]
        x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
        t = self.timesteps(self.batch_size, self.num_patches, generator=g, dtype=x1.dtype)  # (B, N)
        labels = self.labels[index]
        if self.null_label is not None and self.drop_prob > 0:  # guidance dropout (SPEC 3), drawn globally
            drop = torch.rand((self.batch_size,), generator=g) < self.drop_prob
            labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        if self.global_time:
            t = t[:, 0]
        s = self.local
        out = {"step": step, "x1": x1[s], "x0": x0[s], "t": t[s], "labels": labels[s]}
        if self.features is not None:
            out["repa_target"] = self.features[index[s]]  # (b, N', z)
        return out

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


def iterate(batches: StepBatches, first: int, last: int, num_workers: int, pin_memory: bool):
    """Yield ``batches[first] ... batches[last]`` in order, drawn by ``num_workers`` processes (0: inline)."""
    if num_workers == 0:
        return (batches[step] for step in range(first, last + 1))
    from torch.utils.data import DataLoader

    return iter(
        DataLoader(batches, batch_size=None, sampler=range(first, last + 1), num_workers=num_workers,
                   pin_memory=pin_memory, prefetch_factor=4)
    )
