"""Latents that stay on disk: rows of a latent folder's safetensors shards, read when indexed.

ImageNet-256 latents (4x32x32 float32, 1.28M images) take about 21 GB; loading them into every
process would cost that much memory per GPU. :class:`MappedLatents` checks each shard with
``safetensors.safe_open`` (shape and dtype from the header, nothing read) and copies only the
rows a batch asks for, with positioned reads at the offsets the safetensors header gives. So a
process's memory does not grow with the number of latents. (A ``safe_open`` slice maps the whole
shard and large page-cache folios land in the process's resident set, about 1 MB per row read;
over an epoch that is the whole folder again, so rows are read with ``os.pread`` instead.)

It stands in for the ``(M, c, h, w)`` tensor ``ImageDataset.images`` wherever the code indexes
it (a ``LazyRows``): ``x[index]`` with an integer, a slice, or a 1-D integer tensor returns an
ordinary tensor, equal to indexing the eagerly loaded latents. Any other torch operation on it
reads every row first (meant for small held-out sets, not for the training split).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from patchforcing.data.rows import LazyRows
from patchforcing.errors import DataError

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _data_offset(path: Path, name: str) -> int:
    """Byte offset of tensor ``name``'s data in a safetensors file (8-byte header size, JSON header)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return 8 + size + int(header[name]["data_offsets"][0])


class MappedLatents(LazyRows):
    """An ``(M, c, h, w)`` read-only view of the ``latents`` tensors of several shards.

    Args:
        paths: the shard files in order; rows are numbered across them.
        key: the tensor of each shard to read (``latents``, or the REPA targets ``repa_features``).

    Raises:
        DataError: a shard is unreadable, or the shards disagree on the latent shape or dtype.
    """

    def __init__(self, paths: list[Path], key: str = "latents"):
        from safetensors import safe_open

        self.paths = [Path(p) for p in paths]
        sizes, shapes, dtypes, offsets = [], set(), set(), []
        for path in self.paths:
            try:
                with safe_open(str(path), framework="pt") as f:
                    view = f.get_slice(key)
                    shape, dtype = view.get_shape(), view.get_dtype()
                offsets.append(_data_offset(path, key))
            except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
                raise DataError(f"cannot read latent shard {path} ({err}); re-run prepare-latents") from err
            sizes.append(shape[0])
            shapes.add(tuple(shape[1:]))
            dtypes.add(dtype)
        if len(shapes) != 1 or len(dtypes) != 1 or next(iter(dtypes)) not in _DTYPES:
            raise DataError(f"the shards of {self.paths[0].parent} disagree on the latent shape or dtype "
                            f"({sorted(shapes)}, {sorted(dtypes)}); re-run prepare-latents")
        self.ends = np.cumsum(sizes)  # (S,) one past each shard's last row
        self.starts = self.ends - np.asarray(sizes)
        self.shape = torch.Size((int(self.ends[-1]), *next(iter(shapes))))
        self.dtype = _DTYPES[next(iter(dtypes))]
        self.offsets = offsets  # (S,) byte offset of each shard's latents
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"MappedLatents(shape={tuple(self.shape)}, shards={len(self.paths)})"

    def _read_rows(self, rows: np.ndarray) -> Tensor:
        """Rows ``rows`` (R,) as float32 ``(R, c, h, w)``: one positioned read per run of consecutive rows."""
        out = torch.empty((len(rows), *self.shape[1:]), dtype=torch.float32)
        shard = np.searchsorted(self.ends, rows, side="right")  # (R,)
        local = rows - self.starts[shard]
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for lo, hi in _runs(shard, local):  # consecutive rows of one shard: one read each
            by_shard.setdefault(int(shard[lo]), []).append((lo, hi))
        for k, runs in by_shard.items():
            fd = os.open(self.paths[k], os.O_RDONLY)
            try:
                for lo, hi in runs:
                    out[lo:hi] = self._read(fd, k, int(local[lo]), hi - lo)
            finally:
                os.close(fd)
        return out

    def _read(self, fd: int, shard: int, first: int, count: int) -> Tensor:
        """Rows ``[first, first + count)`` of shard ``shard`` as float32 ``(count, c, h, w)``."""
        size = count * self.row_bytes
        data = os.pread(fd, size, self.offsets[shard] + first * self.row_bytes)
        if len(data) != size:
            raise DataError(f"latent shard {self.paths[shard]} is shorter than its header says; re-run prepare-latents")
        return torch.frombuffer(bytearray(data), dtype=self.dtype).view(count, *self.shape[1:]).float()


def _runs(shard: np.ndarray, local: np.ndarray) -> list[tuple[int, int]]:
    """Split positions ``[0, R)`` into maximal runs ``[lo, hi)`` of consecutive rows in one shard."""
    if shard.size == 0:
        return []
    step = (np.diff(shard) != 0) | (np.diff(local) != 1)  # (R-1,) a run ends before position i+1
    cuts = np.concatenate([[0], np.nonzero(step)[0] + 1, [shard.size]])
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=False))
