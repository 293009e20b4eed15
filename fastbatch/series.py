"""Many series in one SlidingWindows: validation, window offsets and row access, never a copy.

Two layouts, both read in place:

- a list of arrays, one per series (any strides, memmaps included): the
  kernels get them as one ``numba.typed.List`` of read-only, any-layout 2-D
  arrays, so C-contiguous, strided and memory-mapped series share one list;
- one array of series laid end to end plus their lengths: one array and the
  row where each series starts.

Either way, series ``s`` owns window ids ``offsets[s] <= i < offsets[s + 1]``,
where ``offsets`` is the running sum of each series' own window count; a
window never crosses into the next series.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastbatch._checks import _show


def window_counts(lengths: np.ndarray, span: int, stride: int) -> np.ndarray:
    """Windows of each series: ``(L - span) // stride + 1``, and none for a series shorter than ``span``."""
    return np.maximum(0, (lengths - span) // stride + 1)


def window_offsets(counts: np.ndarray) -> np.ndarray:
    """``[0, c0, c0 + c1, ...]``: the first window id of each series, then the total."""
    offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def series_of(offsets: np.ndarray, ids: Any) -> np.ndarray:
    """The series each window id belongs to (empty series never own an id)."""
    return np.searchsorted(offsets, ids, side="right") - 1


def check_lengths(lengths: Any, n_steps: int) -> np.ndarray:
    """``lengths`` as int64, non-negative and summing to the ``n_steps`` rows of the data."""
    try:
        out = np.asarray(lengths)
    except Exception:
        out = None
    if out is None or out.ndim != 1 or out.size == 0 or (out.dtype.kind not in "iu" and out.dtype != object):
        raise TypeError(f"lengths must be a non-empty list of series lengths (integers), got {_show(lengths)}")
    if out.dtype == object and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in out):
        raise TypeError(f"lengths must be a non-empty list of series lengths (integers), got {_show(lengths)}")
    # Bounds before the cast: a length past int64 (a Python int, a large
    # uint64) must not wrap round into a plausible one.
    if (out < 0).any():
        raise ValueError(f"lengths must be >= 0, got lengths={_show(lengths)}")
    if (out > n_steps).any() or int(out.astype(np.int64).sum()) != n_steps:
        total = int(out.astype(object).sum())  # Python ints: exact on this error path
        raise ValueError(
            f"lengths must add up to the {n_steps} rows of data (series laid end to end), "
            f"got lengths={_show(lengths)} adding up to {total}"
        )
    return out.astype(np.int64)


class SeriesRows:
    """The rows of a list of ``(N_s, F)`` series, end to end, read as row blocks.

    Stands in for ``SlidingWindows.data`` when the series are separate arrays:
    ``rows[a:b]`` copies only the rows asked for (statistics for
    ``normalize=True`` read it in blocks); the series themselves are never
    concatenated.
    """

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.row_starts = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([a.shape[0] for a in arrays], out=self.row_starts[1:])
        self.dtype = arrays[0].dtype
        self.shape = (int(self.row_starts[-1]), int(arrays[0].shape[1]))
        self.ndim = 2

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"rows of many series are read as a block rows[a:b], got {_show(rows)}")
        start, stop, _ = rows.indices(self.shape[0])
        pieces = []
        for s in range(len(self.arrays)):
            lo, hi = max(start, self.row_starts[s]), min(stop, self.row_starts[s + 1])
            if lo < hi:
                pieces.append(self.arrays[s][lo - self.row_starts[s] : hi - self.row_starts[s]])
        if not pieces:
            return np.empty((0, self.shape[1]), self.dtype)
        return np.concatenate(pieces)

    def __repr__(self) -> str:
        return f"SeriesRows(n_series={len(self.arrays)}, shape={self.shape}, dtype={self.dtype})"


def typed_series_list(arrays: list[np.ndarray]):
    """The series as one ``numba.typed.List`` of read-only ``'A'``-layout 2-D arrays (views, no copy).

    The ``'A'`` (any) layout and the read-only flag are forced on the list's
    item type so that C-contiguous, strided, read-only and memory-mapped series
    all fit in the same list.
    """
    from numba import typeof, types
    from numba.typed import List

    item = types.Array(typeof(arrays[0]).dtype, 2, "A", readonly=True)
    out = List.empty_list(item)
    for a in arrays:
        out.append(a)
    return out
