"""Image data sets held in memory: built-in ``digits`` and ``photos``, and folders of images.

Every data set is an :class:`ImageDataset` of float32 images in ``[-1, 1]`` with shape
(M, C, H, W), H == W, and int64 labels (M,). ``num_classes == 0`` means unconditional
(all labels 0). Nothing is downloaded: ``digits`` and ``photos`` come from files that ship
inside scikit-learn and scikit-image.

Held-out ("test") splits, fixed so that evaluation code can rebuild them exactly:
    * ``digits``: ``perm = numpy.random.default_rng(0).permutation(1797)``; test is
      ``perm[:297]``, train ``perm[297:]``, both sorted ascending (:func:`digits_split_indices`).
    * ``photos``: train crops come from the left 85% of each photo's width, test crops from
      the right 15%; the two regions share no pixel (:func:`photo_regions`).
    * folders: within each class, files sorted by path; every 20th file (positions 19, 39,
      ...) is held out, and a class with 2 to 19 files holds out its last file
      (:func:`split_image_files`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from patchforcing.errors import DataError

SPLITS = ("train", "test")
BUILTIN_NAMES = ("digits", "digits-captions", "photos", "photos-labeled")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

DIGITS_NUM_IMAGES, DIGITS_NUM_TEST = 1797, 297
DIGITS_RESOLUTION = 16  # the 8x8 digits upsampled bilinearly; the evaluation classifier expects this
PHOTOS_RESOLUTION = FOLDER_RESOLUTION = 32
PHOTOS_TEST_FRACTION = 0.15  # right-hand strip of every photo's width
PHOTOS_NUM_CROPS = {"train": 8192, "test": 1024}
# Real RGB photographs bundled with scikit-image (offline) and scikit-learn. skimage's `cat`
# is the same picture as `chelsea`, and grayscale or synthetic images are left out.
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field", "china", "flower")
FOLDER_HOLDOUT_EVERY = 20


@dataclass(eq=False)
class ImageDataset(Dataset):
    """Images (or latents) and labels held in memory.

    Attributes:
        images: (M, C, H, W) float32; pixels in [-1, 1], or latents already multiplied by the
            VAE scale factor (after subtracting ``shift_factor``).
        labels: (M,) int64 in ``[0, num_classes)``; all 0 when unconditional.
        num_classes: number of classes, 0 for an unconditional data set.
        name: the data set name or path it was loaded from.
        class_names: one name per class (empty when unconditional).
        vae: for latents, the VAE folder or hub id that encoded them; None for pixels.
        scale_factor: for latents, the factor the VAE posterior mean was multiplied by.
        shift_factor: for latents, the shift subtracted before scaling (0 for SD-VAE).
        image_resolution: for latents, the pixel size of the encoded images.
        repa_encoder: for latents, the REPA encoder whose features are stored beside them.
        repa_features: for latents, (M, N', z) those features of the encoded images, row by row.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str
    class_names: list[str]
    vae: str | None = None
    scale_factor: float | None = None
    shift_factor: float | None = None
    image_resolution: int | None = None
    repa_encoder: str | None = None
    repa_features: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[2] != self.images.shape[3]:
            raise DataError(f"{self.name}: images must be (M, C, H, H), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.class_names) != self.num_classes:
            raise DataError(f"{self.name}: {self.num_classes} classes but {len(self.class_names)} class names")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < max(self.num_classes, 1):
            raise DataError(f"{self.name}: labels must lie in [0, {max(self.num_classes, 1)}) for {self.num_classes} classes")
        self.images = self.images.float()
        self.labels = self.labels.long()

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[2])

    @property
    def is_latent(self) -> bool:
        """True when ``images`` are VAE latents that need decoding to be viewed."""
        return self.vae is not None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(image (C, H, W), label ())``."""
        return self.images[index], self.labels[index]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test' (the held-out split)")
    return split


# ----------------------------------------------------------------------------- digits


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
        x = torch.from_numpy(photo).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
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


# ----------------------------------------------------------------------------- folders


def scan_image_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """List the image files of a folder and their classes.

    Subfolders that hold image files (at any depth) are classes, numbered in sorted name
    order; with no such subfolder the images directly inside ``root`` form an unconditional
    set. Hidden files and folders (``.name``) are ignored. Files are chosen by suffix
    (``IMAGE_SUFFIXES``); whether they decode is checked when they are read.

    Returns:
        ``(files, class_names)``: ``(path, label)`` sorted by class then path, and the class
        names (empty when unconditional, labels then all 0).
    """
    if not root.exists():
        raise DataError(
            f"no data set at {root}: the folder does not exist; pass an existing folder of images "
            f"or one of the built-in names {', '.join(BUILTIN_NAMES)}"
        )
    if not root.is_dir():
        raise DataError(f"{root} is a file; pass a folder of images (class subfolders or images directly inside)")

    def images_in(folder: Path, recursive: bool) -> list[Path]:
        found = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(
            p for p in found
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )

    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [(d.name, files) for d in subdirs if (files := images_in(d, recursive=True))]
    loose = images_in(root, recursive=False)
    if not classes:
        return [(p, 0) for p in loose], []
    if loose:
        warnings.warn(
            f"{root}: ignoring {len(loose)} image(s) next to the class subfolders (e.g. {loose[0].name}); "
            "move them into a class folder",
            stacklevel=3,
        )
    return [(p, label) for label, (_, files) in enumerate(classes) for p in files], [name for name, _ in classes]


def split_image_files(files: list[tuple[Path, int]], split: str) -> list[tuple[Path, int]]:
    """Choose a split of a folder, per class: every 20th file (positions 19, 39, ... in sorted
    order) is held out, and a class with 2 to 19 files holds out its last file. Stable: adding
    files to one class never moves files of another."""
    check_split(split)
    chosen = []
    for label in sorted({label for _, label in files}):
        group = [f for f in files if f[1] == label]
        held = {k for k in range(len(group)) if k % FOLDER_HOLDOUT_EVERY == FOLDER_HOLDOUT_EVERY - 1}
        if not held and len(group) >= 2:
            held = {len(group) - 1}
        chosen += [f for k, f in enumerate(group) if (k in held) == (split == "test")]
    return chosen


def folder_split_files(root: Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """``(files of the split, class_names)`` of a folder; a DataError if it holds no image file."""
    all_files, class_names = scan_image_folder(root)
    if not all_files:
        raise DataError(
            f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)}); put images in class subfolders "
            f"({root}/cat/001.png) or directly in the folder"
        )
    return split_image_files(all_files, split), class_names


def read_image(path: Path, resolution: int) -> Tensor | None:
    """Decode one file as RGB, resize its short side to ``resolution`` (bicubic) and take the
    center square. Returns (3, R, R) uint8, or None if the file cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            short = min(w, h)
            size = (max(resolution, round(w * resolution / short)), max(resolution, round(h * resolution / short)))
            img.draft("RGB", size)  # JPEG: decode at a reduced scale that is still >= size
            img = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, R, R)


def report_skipped(root: Path, skipped: list[Path]) -> None:
    """Name every unreadable file: one printed line each, and one warning."""
    if not skipped:
        return
    print(f"patchforcing: skipped {len(skipped)} unreadable image file(s) under {root}:")
    for path in skipped:
        print(f"  skipped unreadable image: {path}")
    shown = ", ".join(str(p) for p in skipped[:10]) + (f", ... ({len(skipped) - 10} more)" if len(skipped) > 10 else "")
    warnings.warn(f"skipped {len(skipped)} unreadable image file(s) under {root}: {shown}", stacklevel=3)


def load_folder_dataset(root: str | Path, split: str = "train", resolution: int = FOLDER_RESOLUTION,
                        stream: bool | None = None) -> ImageDataset:
    """Load a split of a folder of images as (M, 3, R, R) float32 in [-1, 1].

    Args:
        stream: decode the images per batch (``patchforcing.data.streamed``) instead of once
            into memory; None streams folders of at least ``STREAM_MIN_IMAGES`` images. Both
            give the same images. For repeated training at scale, encoding the folder once with
            :func:`patchforcing.data.prepare_latents` is faster still.
    """
    from patchforcing.data.streamed import STREAM_MIN_IMAGES, StreamedImages, readable_files

    root = Path(root).expanduser()
    files, class_names = folder_split_files(root, split)
    if not files:
        raise DataError(f"{root} has too few images for a held-out '{split}' split; add at least 2 images per class")
    if stream or (stream is None and len(files) >= STREAM_MIN_IMAGES):
        ok, skipped = readable_files([p for p, _ in files])
        report_skipped(root, skipped)
        if not ok:
            raise DataError(f"none of the {len(files)} '{split}' image file(s) in {root} could be read; "
                            "check that they are valid image files")
        return ImageDataset(StreamedImages([files[i][0] for i in ok], resolution),
                            torch.tensor([files[i][1] for i in ok], dtype=torch.int64), len(class_names), str(root), class_names)
    images, labels, skipped = [], [], []
    for path, label in files:
        img = read_image(path, resolution)
        if img is None:
            skipped.append(path)
        else:
            images.append(img)
            labels.append(label)
    report_skipped(root, skipped)
    if not images:
        raise DataError(
            f"none of the {len(files)} '{split}' image file(s) in {root} could be read; check that they are valid image files"
        )
    x = torch.stack(images).float() / 127.5 - 1  # (M, 3, R, R)
    return ImageDataset(x, torch.tensor(labels, dtype=torch.int64), len(class_names), str(root), class_names)


# ----------------------------------------------------------------------------- dispatch


def load_dataset(name_or_path: str, *, split: str = "train", resolution: int | None = None, seed: int = 0) -> ImageDataset:
    """Load a data set by built-in name or path.

    Args:
        name_or_path: ``digits`` (default data of the package), ``digits-captions`` (the same
            digits with captions, see ``data/captions.py``), ``photos`` (unconditional
            crops), ``photos-labeled`` (class = source photo), a folder of images (class
            subfolders, or images directly inside for an unconditional set; with a ``.txt`` beside
            each image or a ``captions.jsonl`` it is a captioned folder), or a latent
            folder written by :func:`patchforcing.data.prepare_latents`. A built-in name wins
            over a folder of the same name; write ``./digits`` for the folder.
        split: "train" or "test" (the fixed held-out split, see the module docstring).
        resolution: output side; defaults to 16 (digits) or 32 (photos, folders). For a
            latent folder it must be None, the latent size or the encoded image size.
        seed: seed of the ``photos`` crop pool; other data sets are fixed.

    Returns:
        An :class:`ImageDataset`; ``images`` (M, C, R, R) float32.

    Raises:
        DataError: unknown name, missing or empty folder, bad split or resolution.
    """
    check_split(split)
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise DataError(f"resolution must be a positive integer, got {resolution!r}")
    if name_or_path == "digits":
        return load_digits_dataset(split, resolution or DIGITS_RESOLUTION)
    if name_or_path == "digits-captions":  # the digits with measured-attribute captions (data/captions.py)
        from patchforcing.data.captions import load_digits_captions

        return load_digits_captions(split, resolution or DIGITS_RESOLUTION)
    if name_or_path in ("photos", "photos-labeled"):
        return load_photos_dataset(split, resolution or PHOTOS_RESOLUTION, seed, labeled=name_or_path == "photos-labeled")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown data set {name_or_path!r}: not a built-in name ({', '.join(BUILTIN_NAMES)}) and no folder at "
            f"{path.resolve()}; pass a built-in name, a folder of images (one subfolder per class) or a latent folder "
            "written by `patchforcing prepare-latents`"
        )
    from patchforcing.data.latents import is_latent_folder, load_latent_dataset

    if is_latent_folder(path):
        return load_latent_dataset(path, split=split, resolution=resolution)
    from patchforcing.data.captions import is_captioned_folder, load_captioned_folder

    if path.is_dir() and is_captioned_folder(path):
        return load_captioned_folder(path, split, resolution or FOLDER_RESOLUTION)
    return load_folder_dataset(path, split, resolution or FOLDER_RESOLUTION)
