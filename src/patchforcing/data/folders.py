"""Folders of images: which files a folder holds, which of them a split takes, and decoding one file.

Classes are the subfolders that hold image files; within each class, files sorted by path;
every 20th file (positions 19, 39, ...) is held out, and a class with 2 to 19 files holds out
its last file (:func:`split_image_files`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from patchforcing.data.base import BUILTIN_NAMES, check_split
from patchforcing.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
FOLDER_RESOLUTION = 32
FOLDER_HOLDOUT_EVERY = 20


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
