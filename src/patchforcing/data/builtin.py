"""The built-in data sets ``digits`` and ``photos``, held in memory.

Nothing is downloaded: ``digits`` and ``photos`` come from files that ship inside scikit-learn
and scikit-image. Their held-out ("test") splits are fixed so that evaluation code can rebuild
them exactly:
    * ``digits``: ``perm = numpy.random.default_rng(0).permutation(1797)``; test is
      ``perm[:297]``, train ``perm[297:]``, both sorted ascending (:func:`digits_split_indices`).
    * ``photos``: train crops come from the left 85% of each photo's width, test crops from
      the right 15%; the two regions share no pixel (:func:`photo_regions`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from patchforcing.data.base import SPLITS, ImageDataset, check_split
from patchforcing.errors import DataError
from patchforcing.images import from_uint8

DIGITS_NUM_IMAGES, DIGITS_NUM_TEST = 1797, 297
DIGITS_RESOLUTION = 16  # the 8x8 digits upsampled bilinearly; the evaluation classifier expects this
PHOTOS_RESOLUTION = 32
PHOTOS_TEST_FRACTION = 0.15  # right-hand strip of every photo's width
PHOTOS_NUM_CROPS = {"train": 8192, "test": 1024}
# Real RGB photographs bundled with scikit-image (offline) and scikit-learn. skimage's `cat`
# is the same picture as `chelsea`, and grayscale or synthetic images are left out.
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field", "china", "flower")


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into scikit-learn's ``load_digits()`` for a split, sorted ascending.

    Returns:
        (1500,) for "train" or (297,) for "test", int64; disjoint, together all 1797.
    """
    perm = np.random.default_rng(0).permutation(DIGITS_NUM_IMAGES)
    chosen = perm[:DIGITS_NUM_TEST] if check_split(split) == "test" else perm[DIGITS_NUM_TEST:]
    return np.sort(chosen).astype(np.int64)


def load_digits_dataset(split: str = "train", resolution: int = DIGITS_RESOLUTION) -> ImageDataset:
    """The 1,797 real 8x8 handwritten digits of scikit-learn, upsampled to (1, R, R) in [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16 * 2 - 1  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    idx = torch.from_numpy(digits_split_indices(split))
    labels = torch.tensor(digits.target, dtype=torch.int64)[idx]
    return ImageDataset(x[idx].contiguous(), labels, 10, "digits", [str(d) for d in range(10)])


# ----------------------------------------------------------------------------- photos


def _load_photos() -> list[tuple[str, np.ndarray]]:
    """The bundled RGB photographs as (name, (H, W, 3) uint8); a missing one is skipped with a warning."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    loaders = {
        "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
        "china": lambda: load_sample_images().images[0],
        "flower": lambda: load_sample_images().images[1],
    }
    photos = []
    for name in PHOTO_NAMES:
        try:
            photo = loaders[name]() if name in loaders else getattr(skimage.data, name)()
        except Exception as err:  # a photo missing from this scikit-image install
            warnings.warn(f"photos: skipping {name!r}, it does not load offline here ({err})", stacklevel=3)
            continue
        photos.append((name, np.array(photo[..., :3], dtype=np.uint8)))  # a writable copy
    if not photos:
        raise DataError("photos: no bundled photograph loads; reinstall scikit-image and scikit-learn")
    return photos


def photo_regions(split: str, resolution: int = PHOTOS_RESOLUTION) -> list[tuple[str, Tensor, int]]:
    """The region of every photo that a split crops from.

    Train regions are the left 85% of each photo's width and test regions the right 15%
    (split at column ``int(0.85 * W)``). When the test strip is narrower than ``resolution``
    both regions are upscaled by the same factor (bicubic, after the split, so no pixel of one
    split leaks into the other).

    Returns:
        One ``(name, region (3, h, w) float32 in [-1, 1], max_side)`` per photo; ``max_side``
        is the largest crop side, ``min(H, test strip width)`` after scaling, the same in both
        splits so that train and test crops share one scale distribution.
    """
    regions = []
    for name, photo in _load_photos():
        x = from_uint8(torch.from_numpy(photo).permute(2, 0, 1))  # (3, H, W)
        cut = int(x.shape[2] * (1 - PHOTOS_TEST_FRACTION))
        region = x[:, :, :cut] if check_split(split) == "train" else x[:, :, cut:]
        smallest = min(x.shape[1], x.shape[2] - cut)
        scale = max(1.0, resolution / smallest)
        if scale > 1:
            size = (round(region.shape[1] * scale), round(region.shape[2] * scale))
            region = F.interpolate(region[None], size=size, mode="bicubic", align_corners=False)[0].clamp(-1, 1)
        regions.append((name, region.contiguous(), max(resolution, int(smallest * scale))))
    return regions


def photo_crop_plan(
    sizes: list[tuple[int, int]], max_sides: list[int], num_crops: int, resolution: int, seed: int | list[int]
) -> np.ndarray:
    """Draw crop boxes: crop ``i`` comes from region ``i % len(sizes)`` (balanced classes).

    Args:
        sizes: (height, width) of each region.
        max_sides: the largest crop side per region; the same for both splits of a photo so
            that train and test crops have one scale distribution.
        num_crops: how many boxes.
        resolution: the smallest crop side (crops are resized down to it).
        seed: seed of the numpy generator; the same seed gives the same boxes.

    Returns:
        (num_crops, 5) int64 columns ``region, x0, y0, side, flip``.
    """
    rng = np.random.default_rng(seed)
    plan = np.zeros((num_crops, 5), dtype=np.int64)
    for i in range(num_crops):
        r = i % len(sizes)
        h, w = sizes[r]
        side = int(rng.integers(resolution, max(resolution, min(max_sides[r], h, w)) + 1))
        plan[i] = (r, rng.integers(0, w - side + 1), rng.integers(0, h - side + 1), side, rng.integers(0, 2))
    return plan


def load_photos_dataset(
    split: str = "train",
    resolution: int = PHOTOS_RESOLUTION,
    seed: int = 0,
    labeled: bool = False,
    num_crops: int | None = None,
) -> ImageDataset:
    """A fixed pool of random RGB crops of the bundled photographs, (3, R, R) in [-1, 1].

    Each crop is a square of side drawn uniformly in ``[R, min(height, test strip width)]``,
    resized to ``R x R`` (bilinear, antialiased) and flipped horizontally with probability 1/2.

    Args:
        split: "train" (left 85% of each photo) or "test" (right 15%).
        resolution: output side ``R``.
        seed: the pool is a deterministic function of (seed, split).
        labeled: if True the label is which photo a crop came from; else unconditional.
        num_crops: pool size; defaults to 8,192 (train) or 1,024 (test).
    """
    regions = photo_regions(split, resolution)
    n = PHOTOS_NUM_CROPS[split] if num_crops is None else num_crops
    sizes = [tuple(region.shape[1:]) for _, region, _ in regions]
    plan = photo_crop_plan(sizes, [m for _, _, m in regions], n, resolution, seed=[seed, SPLITS.index(split)])
    images = torch.empty(n, 3, resolution, resolution)
    for i, (r, x0, y0, side, flip) in enumerate(plan.tolist()):
        crop = regions[r][1][:, y0 : y0 + side, x0 : x0 + side]
        if side != resolution:
            size = (resolution, resolution)
            crop = F.interpolate(crop[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        images[i] = crop.flip(-1) if flip else crop
    names = [name for name, _, _ in regions]
    labels = torch.from_numpy(plan[:, 0]) if labeled else torch.zeros(n, dtype=torch.int64)
    if labeled:
        return ImageDataset(images.clamp_(-1, 1), labels, len(names), "photos-labeled", names)
    return ImageDataset(images.clamp_(-1, 1), labels, 0, "photos", [])

