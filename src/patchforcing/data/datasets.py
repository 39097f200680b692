"""Loading a data set by name or path: ``load_dataset`` and folders of images.

Every data set is an :class:`~patchforcing.data.base.ImageDataset` of float32 images in
``[-1, 1]`` with shape (M, C, H, W), H == W, and int64 labels (M,). ``num_classes == 0`` means
unconditional (all labels 0). The modules it dispatches to:

* ``builtin``: ``digits`` and ``photos`` (files that ship inside scikit-learn and scikit-image,
  nothing is downloaded) and their fixed held-out splits;
* ``captions``: ``digits-captions`` and folders of images with captions;
* ``folders`` and ``streamed``: folders of images, their split rule (every 20th file per class
  held out) and decoding per batch for large folders;
* ``latents``: latent folders written by ``prepare_latents``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from patchforcing.data.base import BUILTIN_NAMES, ImageDataset, check_split
from patchforcing.data.builtin import DIGITS_RESOLUTION, PHOTOS_RESOLUTION, load_digits_dataset, load_photos_dataset
from patchforcing.data.captions import is_captioned_folder, load_captioned_folder, load_digits_captions
from patchforcing.data.folders import FOLDER_RESOLUTION, folder_split_files, read_image, report_skipped
from patchforcing.data.latents import is_latent_folder, load_latent_dataset
from patchforcing.data.streamed import STREAM_MIN_IMAGES, StreamedImages, readable_files
from patchforcing.errors import DataError
from patchforcing.images import from_uint8


def load_folder_dataset(root: str | Path, split: str = "train", resolution: int = FOLDER_RESOLUTION,
                        stream: bool | None = None) -> ImageDataset:
    """Load a split of a folder of images as (M, 3, R, R) float32 in [-1, 1].

    Args:
        stream: decode the images per batch (``patchforcing.data.streamed``) instead of once
            into memory; None streams folders of at least ``STREAM_MIN_IMAGES`` images. Both
            give the same images. For repeated training at scale, encoding the folder once with
            :func:`patchforcing.data.prepare_latents` is faster still.
    """
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
    x = from_uint8(torch.stack(images))  # (M, 3, R, R)
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
    if is_latent_folder(path):
        return load_latent_dataset(path, split=split, resolution=resolution)
    if path.is_dir() and is_captioned_folder(path):
        return load_captioned_folder(path, split, resolution or FOLDER_RESOLUTION)
    return load_folder_dataset(path, split, resolution or FOLDER_RESOLUTION)
