"""Image folders decoded per batch: training on folders too large to hold in memory.

:class:`StreamedImages` stands in for the ``(M, 3, R, R)`` tensor ``ImageDataset.images`` of a
folder: ``x[index]`` decodes just those files (resized and centre-cropped exactly as the eager
loader does) and returns float32 in [-1, 1]. With ``train --num-workers K`` the training batches,
and so the decoding, are drawn by K DataLoader processes ahead of the GPU. Folders of at least
``STREAM_MIN_IMAGES`` images stream by default; smaller ones are decoded once into memory.
Unreadable files are found when the folder is opened (by reading each file's header) and
skipped, as in the eager loader; a file that fails later, while decoding, stops with its name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from patchforcing.data.folders import read_image
from patchforcing.data.rows import LazyRows
from patchforcing.errors import DataError
from patchforcing.images import from_uint8

STREAM_MIN_IMAGES = 20_000  # about 3 GB as float32 at 64 px, 47 GB at 256 px


def readable_files(paths: list[Path]) -> tuple[list[int], list[Path]]:
    """Positions of the files whose image header opens, and the paths of those that do not."""
    from PIL import Image

    ok, skipped = [], []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 - the header parses
            ok.append(i)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped.append(path)
    return ok, skipped


class StreamedImages(LazyRows):
    """An ``(M, 3, R, R)`` float32 view of image files, decoded when indexed (``x[index]`` is in [-1, 1]).

    Args:
        paths: the image files, in data set order.
        resolution: the side R every image is resized (short side) and centre-cropped to.
    """

    def __init__(self, paths: list[Path], resolution: int):
        self.paths = [Path(p) for p in paths]
        self.resolution = resolution
        self.shape = torch.Size((len(self.paths), 3, resolution, resolution))
        self.dtype = torch.float32

    def __repr__(self) -> str:
        return f"StreamedImages(shape={tuple(self.shape)})"

    def _read_rows(self, rows: np.ndarray) -> Tensor:
        """Images ``rows`` (R,) decoded as float32 ``(R, 3, R, R)`` in [-1, 1]."""
        out = torch.empty((len(rows), 3, self.resolution, self.resolution), dtype=torch.float32)
        for k, row in enumerate(rows.tolist()):
            img = read_image(self.paths[row], self.resolution)  # (3, R, R) uint8
            if img is None:
                raise DataError(f"cannot decode {self.paths[row]} (its header read when the folder was opened); "
                                "replace or delete the file and rerun the same command to resume")
            out[k] = from_uint8(img)
        return out
