"""Named random streams: every random draw of the project that must be reproducible comes from
one of these, so resume, batch size and process count never change a result.

Training draws per step from ``make_generator(seed, STREAM_..., step)`` (a hash of the key, so
nearby keys give unrelated streams). Sampling draws image ``i``'s noise from seed ``seed + i``
(``sampling.noise_for_seeds``) and the random masks of the ``random-*`` samplers from its own
stream, ``seed + i + MASK_SEED_OFFSET``. The numbers are part of every committed result: changing
one changes those results.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

# Training streams, keyed (seed, stream, step or epoch).
STREAM_STEP = 1  # the step's batch: rows, times, noise, label dropout
STREAM_EPOCH = 2  # the epoch's permutation of the rows
STREAM_VALIDATION = 3  # the monitor's validation noise
STREAM_SAMPLES = 4  # the monitor's sample grids
STREAM_TEXT_DROPOUT = 5  # text-to-image: which captions are replaced by the empty prompt
STREAM_LATENT_VIEW = 6  # which stored view of a latent row (mirrored or not) and its posterior noise

# Sampling streams, keyed by the image's seed.
MASK_SEED_OFFSET = 1_000_003  # image i's random-mask stream is seeded seed_i + this (a prime, far from any noise seed)
EVAL_SEED_STRIDE = 100_000  # bench and study evaluation seed k draws its images' noise from seeds k * stride + i
STUDY_SEED_STRIDE = 1000  # the study's mechanism measurements: time index ti of seed s uses s * stride + ti


def make_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a hash of ``key`` (nearby keys give unrelated streams)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def mask_generators(seeds: Iterable[int]) -> list[torch.Generator]:
    """One random-mask stream per image (``seed + MASK_SEED_OFFSET``): an image's masks do not depend
    on the batch it is sampled in."""
    return [torch.Generator().manual_seed(int(s) + MASK_SEED_OFFSET) for s in seeds]


def study_seed(seed: int, time_index: int) -> int:
    """The seed of the study's measurement at time index ``time_index`` of evaluation seed ``seed``."""
    return seed * STUDY_SEED_STRIDE + time_index
