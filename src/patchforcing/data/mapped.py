"""Latents that stay on disk: rows of a latent folder's safetensors shards, read when indexed.

ImageNet-256 latents (4x32x32 float32, 1.28M images) take about 21 GB; loading them into every
process would cost that much memory per GPU. :class:`MappedLatents` checks each shard with
``safetensors.safe_open`` (shape and dtype from the header, nothing read) and copies only the
rows a batch asks for, with positioned reads at the offsets the safetensors header gives. So a
process's memory does not grow with the number of latents. (A ``safe_open`` slice maps the whole
shard and large page-cache folios land in the process's resident set, about 1 MB per row read;
over an epoch that is the whole folder again, so rows are read with ``os.pread`` instead.)

It stands in for the ``(M, c, h, w)`` tensor ``ImageDataset.images`` wherever the code indexes
it: ``x[index]`` with an integer, a slice, or a 1-D integer tensor returns an ordinary tensor,
equal to indexing the eagerly loaded latents. Any other torch operation on it reads every row
first (meant for small held-out sets, not for the training split).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from patchforcing.errors import DataError

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _data_offset(path: Path, name: str) -> int:
    """Byte offset of tensor ``name``'s data in a safetensors file (8-byte header size, JSON header)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return 8 + size + int(header[name]["data_offsets"][0])


class MappedLatents:
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

    # --- what code that expects a tensor asks of it ----------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def float(self) -> "MappedLatents":
        """Rows come out as float32 (the dtype conversion happens per read)."""
        return self

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        """Read EVERY row into memory and move it (for small held-out sets only)."""
        return self[:].to(*args, **kwargs)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """Any other torch operation (``torch.allclose(x, ...)``) sees EVERY row read into memory."""
        from torch.utils._pytree import tree_map

        def load(a: Any) -> Any:
            return a[:] if isinstance(a, MappedLatents) else a

        return func(*tree_map(load, args), **tree_map(load, kwargs or {}))

    def __repr__(self) -> str:
        return f"MappedLatents(shape={tuple(self.shape)}, shards={len(self.paths)})"

    # --- reading ---------------------------------------------------------------------------------
    def __getitem__(self, index: int | slice | Tensor | np.ndarray | list[int]) -> Tensor:
        """Rows ``index`` as a float32 tensor ``(len(index), c, h, w)`` (``(c, h, w)`` for an int)."""
        if isinstance(index, (int, np.integer)):
            return self[np.asarray([index])][0]
        rows = row_numbers(index, len(self))
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


def row_numbers(index: slice | Tensor | np.ndarray | list[int], length: int) -> np.ndarray:
    """The row numbers (R,) that a slice or a 1-D integer index selects among ``length`` rows."""
    if isinstance(index, slice):
        return np.arange(length)[index]
    rows = torch.as_tensor(index).cpu().numpy() if not isinstance(index, np.ndarray) else index
    if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
        raise IndexError(f"rows are selected by an int, a slice or a 1-D integer index, got {rows.dtype} {rows.shape}")
    rows = np.where(rows < 0, rows + length, rows).astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= length):
        raise IndexError(f"row index out of range for {length} rows")
    return rows


def _runs(shard: np.ndarray, local: np.ndarray) -> list[tuple[int, int]]:
    """Split positions ``[0, R)`` into maximal runs ``[lo, hi)`` of consecutive rows in one shard."""
    if shard.size == 0:
        return []
    step = (np.diff(shard) != 0) | (np.diff(local) != 1)  # (R-1,) a run ends before position i+1
    cuts = np.concatenate([[0], np.nonzero(step)[0] + 1, [shard.size]])
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))
