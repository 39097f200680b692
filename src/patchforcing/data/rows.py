"""Tensor stand-ins whose rows are read only when indexed (latents on disk, streamed image files).

:class:`LazyRows` stands in for an ``(M, ...)`` tensor such as ``ImageDataset.images``:
``x[index]`` with an integer, a slice or a 1-D integer tensor returns an ordinary float32 tensor;
any other torch operation on it reads every row first (meant for small held-out sets, not for the
training split). Subclasses set ``shape`` and ``dtype`` and read rows in ``_read_rows``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


class LazyRows:
    """An ``(M, ...)`` read-only view whose rows come out as float32 when indexed."""

    shape: torch.Size
    dtype: torch.dtype  # of the stored rows; they are read as float32

    def _read_rows(self, rows: np.ndarray) -> Tensor:
        """Rows ``rows`` (R,) as float32 ``(R, ...)``."""
        raise NotImplementedError

    # --- what code that expects a tensor asks of it ----------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def float(self) -> LazyRows:
        """Rows come out as float32 (the conversion happens per read)."""
        return self

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        """Read EVERY row into memory and move it (for small sets only)."""
        return self[:].to(*args, **kwargs)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """Any other torch operation (``torch.allclose(x, ...)``) sees EVERY row read into memory."""
        from torch.utils._pytree import tree_map

        def load(a: Any) -> Any:
            return a[:] if isinstance(a, LazyRows) else a

        return func(*tree_map(load, args), **tree_map(load, kwargs or {}))

    def __getitem__(self, index: int | slice | Tensor | np.ndarray | list[int]) -> Tensor:
        """Rows ``index`` as float32 ``(len(index), ...)`` (one row without its first axis for an int)."""
        if isinstance(index, (int, np.integer)):
            return self[np.asarray([index])][0]
        return self._read_rows(row_numbers(index, len(self)))


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
