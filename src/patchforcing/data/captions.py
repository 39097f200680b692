"""Captioned data: the built-in ``digits-captions`` and folders of images with captions.

``digits-captions`` gives every digit of the ``digits`` data set a caption made from its label
and two attributes MEASURED on the image (``measure_digit_attributes``):

* stroke thickness, ``thin`` / ``bold``: the ink mass ``sum((x + 1) / 2)`` below / above the median
  of that digit's training images;
* slant, ``left`` / ``upright`` / ``right``: the shear of the ink's second moments,
  ``-cov(row, col) / var(row)`` (positive: the top leans right), split at the tertiles of that
  digit's training images (so "slanted left" means more to the left than is typical for the digit).

The thresholds come from the fixed training split, so the same measurement scores generated
images (``patchforcing evaluate``: attribute adherence). One phrasing per image, chosen by its
index from ``PHRASINGS``.

Captioned folders: a ``name.txt`` beside each image ``name.png``, or a ``captions.jsonl`` at the
root with lines ``{"file": "relative/path.png", "caption": "..."}``. Images without a caption,
captions without an image and unreadable files are named and skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from patchforcing.data.base import ImageDataset
from patchforcing.data.builtin import load_digits_dataset
from patchforcing.data.folders import FOLDER_RESOLUTION, read_image, report_skipped, scan_image_folder, split_image_files
from patchforcing.errors import DataError
from patchforcing.images import from_uint8
from patchforcing.json_files import read_bytes_capped

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS = ("thin", "bold")
SLANT = ("slanted left", "upright", "slanted right")
PHRASINGS = (
    "a {thick} {word}, {slant}",
    "the digit {digit}, {thick} and {slant}",
    "{word} written in {thick} strokes, {slant}",
    "a {thick} handwritten {digit}, {slant}",
)
CAPTIONS_FILE = "captions.jsonl"


@dataclass(eq=False)
class CaptionedDataset(ImageDataset):
    """An ImageDataset with one caption per image.

    Attributes:
        captions: M strings, ``captions[i]`` describes ``images[i]``.
        attributes: optional per-image measurements, e.g. ``{"thickness": (M,), "slant": (M,)}`` int64.
    """

    captions: list[str] = field(default_factory=list)
    attributes: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.captions) != len(self):
            raise DataError(f"{self.name}: {len(self)} images but {len(self.captions)} captions")


# --- digits-captions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitAttributes:
    """Per-image measurements (M,) float and their classes (M,) int64 (indices into THICKNESS / SLANT)."""

    ink: Tensor
    shear: Tensor
    thickness: Tensor
    slant: Tensor


def ink_and_shear(images: Tensor) -> tuple[Tensor, Tensor]:
    """Ink mass and shear of (M, 1, R, R) images in [-1, 1] -> two (M,) float32 tensors."""
    x = ((images[:, 0].float() + 1) / 2).clamp(0, 1)  # (M, R, R) ink
    m, r, c = x.shape
    rows = torch.arange(r, dtype=torch.float32)[None, :, None]
    cols = torch.arange(c, dtype=torch.float32)[None, None, :]
    mass = x.sum(dim=(1, 2)).clamp_min(1e-6)
    mean_r = (x * rows).sum(dim=(1, 2)) / mass
    mean_c = (x * cols).sum(dim=(1, 2)) / mass
    dr, dc = rows - mean_r[:, None, None], cols - mean_c[:, None, None]
    cov = (x * dr * dc).sum(dim=(1, 2)) / mass
    var_r = (x * dr * dr).sum(dim=(1, 2)).clamp_min(1e-6) / mass
    return mass, -cov / var_r


def digit_thresholds(resolution: int = 16) -> tuple[Tensor, Tensor]:
    """Per digit: the ink median (10,) and the shear tertiles (10, 2) of the training split."""
    train = load_digits_dataset("train", resolution)
    ink, shear = ink_and_shear(train.images)
    ink_median = torch.stack([ink[train.labels == d].median() for d in range(10)])
    tertiles = torch.stack([torch.quantile(shear[train.labels == d], torch.tensor([1 / 3, 2 / 3])) for d in range(10)])
    return ink_median, tertiles


def measure_digit_attributes(images: Tensor, digits: Tensor, resolution: int | None = None) -> DigitAttributes:
    """Thickness and slant classes of digit images (M, 1, R, R) in [-1, 1], given which digit each shows.

    Generated images are measured with the training split's thresholds, exactly as the captions were.
    """
    ink_median, tertiles = digit_thresholds(resolution or images.shape[-1])
    ink, shear = ink_and_shear(images)
    digits = torch.as_tensor(digits).long()
    thickness = (ink > ink_median[digits]).long()
    slant = (shear > tertiles[digits, 0]).long() + (shear > tertiles[digits, 1]).long()
    return DigitAttributes(ink, shear, thickness, slant)


def digit_caption(digit: int, thickness: int, slant: int, phrasing: int = 0) -> str:
    """E.g. ``digit_caption(7, 1, 2)`` -> ``"a bold seven, slanted right"``."""
    template = PHRASINGS[phrasing % len(PHRASINGS)]
    return template.format(thick=THICKNESS[thickness], word=DIGIT_WORDS[digit], digit=digit, slant=SLANT[slant])


def load_digits_captions(split: str = "train", resolution: int = 16) -> CaptionedDataset:
    """The ``digits`` data set (same split and images) with measured-attribute captions."""
    base = load_digits_dataset(split, resolution)
    attrs = measure_digit_attributes(base.images, base.labels, resolution)
    captions = [
        digit_caption(int(d), int(th), int(sl), phrasing=i)
        for i, (d, th, sl) in enumerate(zip(base.labels, attrs.thickness, attrs.slant, strict=False))
    ]
    return CaptionedDataset(base.images, base.labels, 10, "digits-captions", base.class_names, captions=captions,
                            attributes={"thickness": attrs.thickness, "slant": attrs.slant})


# --- captioned folders ----------------------------------------------------------------------------
def is_captioned_folder(root: Path) -> bool:
    """A folder with ``captions.jsonl`` at its root, or with a ``.txt`` beside at least one image."""
    if (root / CAPTIONS_FILE).is_file():
        return True
    files, _ = scan_image_folder(root)
    return any(path.with_suffix(".txt").is_file() for path, _ in files)


def _read_jsonl(root: Path) -> tuple[dict[Path, str], list[str]]:
    """``captions.jsonl`` as {resolved image path: caption}, and one line per entry it skips (a line
    that is not UTF-8 or not a ``{"file", "caption"}`` object, a file name that names no image)."""
    captions, broken = {}, []
    try:  # a regular file (a device or a FIFO in its place is refused unread) of at most 1 GB
        lines = read_bytes_capped(root / CAPTIONS_FILE, limit=1 << 30, error=DataError,
                                  fix=f"give the captions as a regular {CAPTIONS_FILE} file").splitlines()
    except OSError as err:
        raise DataError(f"cannot read {root / CAPTIONS_FILE} ({err.strerror}); check its permissions") from None
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            broken.append(f"{CAPTIONS_FILE} line {number}: not UTF-8 text (save the file as UTF-8)")
            continue
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            path, caption = (root / entry["file"]).resolve(), str(entry["caption"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):  # ValueError: a NUL byte in the name
            broken.append(f"{CAPTIONS_FILE} line {number}: not a {{\"file\", \"caption\"}} object with a valid file name")
            continue
        if not path.is_file():
            broken.append(f"{CAPTIONS_FILE} line {number}: no image {entry['file']!r}")
            continue
        captions[path] = caption
    return captions, broken


def _read_txt_caption(image: Path) -> tuple[str | None, str | None]:
    """``(caption, None)`` from ``name.txt`` beside ``image``, or ``(None, why it is skipped)``."""
    path = image.with_suffix(".txt")
    if not path.is_file():
        return None, f"{image}: no caption"
    try:
        return path.read_bytes().decode("utf-8").strip(), None
    except UnicodeDecodeError:
        return None, f"{path}: not UTF-8 text (save the caption as UTF-8)"
    except OSError as err:
        return None, f"{path}: {err.strerror}"


def load_captioned_folder(root: str | Path, split: str = "train", resolution: int = FOLDER_RESOLUTION) -> CaptionedDataset:
    """A split of a captioned folder as (M, 3, R, R) in [-1, 1] with one caption per image.

    The split rule is that of image folders (every 20th file per class held out).
    """
    root = Path(root).expanduser()
    files, class_names = scan_image_folder(root)
    broken: list[str] = []
    if (root / CAPTIONS_FILE).is_file():
        by_path, broken = _read_jsonl(root)
        pairs = [(p, label, by_path.get(p.resolve())) for p, label in files]
        broken += [f"{p}: no caption" for p, _, caption in pairs if caption is None]
    else:
        pairs = []
        for p, label in files:
            caption, problem = _read_txt_caption(p)
            pairs.append((p, label, caption))
            broken += [problem] if problem else []
    captioned = {p: caption for p, _, caption in pairs if caption is not None}
    chosen = split_image_files([(p, label) for p, label, caption in pairs if caption is not None], split)
    if broken:
        print(f"patchforcing: skipped {len(broken)} broken image/caption pair(s) under {root}:")
        for line in broken:
            print(f"  skipped: {line}")
    if not chosen:
        raise DataError(f"{root}: no captioned images for the {split!r} split; put a name.txt beside each image or a {CAPTIONS_FILE}")
    images, labels, captions, unreadable = [], [], [], []
    for path, label in chosen:
        img = read_image(path, resolution)
        if img is None:
            unreadable.append(path)
            continue
        images.append(img)
        labels.append(label)
        captions.append(captioned[path])
    report_skipped(root, unreadable)
    if not images:
        raise DataError(f"none of the captioned '{split}' images in {root} could be read; check the image files")
    x = from_uint8(torch.stack(images))
    return CaptionedDataset(x, torch.tensor(labels, dtype=torch.int64), len(class_names), str(root), class_names, captions=captions)
