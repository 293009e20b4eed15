"""How the rows of a ``SlidingWindows`` are stored, as three small layouts.

- :class:`OneArray`: one series, one ``(N, F)`` array;
- :class:`EndToEnd`: many series laid end to end in one ``(N, F)`` array, with their lengths;
- :class:`SeriesList`: many series, one ``(N_s, F)`` array each (never concatenated).

Each layout owns what differs between them: the data the kernels read (float16
as its bits, a list as one ``numba.typed.List``), which gather and NaN kernel
run, the rows of series ``s``, where each series' windows and rows start, and
the memory-map check.  Series ``s`` owns window ids ``offsets[s] <= i <
offsets[s + 1]`` and starts at row ``row_starts[s]`` of the rows end to end.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, NamedTuple

import numpy as np

from fastbatch.series import SeriesRows, check_lengths, typed_series_list, window_counts, window_offsets

# Numba compiles no arithmetic for these, but a same-dtype copy only moves
# bits, so data of these dtypes is gathered through an unsigned view.
_BITS_ONLY = {np.dtype(np.float16): np.uint16}
# The NaN kernels read floats as unsigned bits: (mask of all but the sign, the
# bits of +inf); a value is NaN when ``bits & mask > inf``.
_NAN_BITS = {2: (0x7FFF, 0x7C00), 4: (0x7FFF_FFFF, 0x7F80_0000),
             8: (0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000)}


class Geometry(NamedTuple):
    """Where a window's steps lie, in the kernels' argument order.

    ``stride`` is clamped to the rows of the data: a stride past the end
    allows one window per series either way, and the clamp keeps the kernels'
    index arithmetic in int64 for any integer the user gives.
    """

    stride: int
    dilation: int
    window: int
    horizon: int
    target_columns: np.ndarray

    @property
    def span(self) -> int:
        """Steps one window covers, input and target: ``(T - 1) * dilation + 1 + H``."""
        return (self.window - 1) * self.dilation + 1 + self.horizon


class _Layout:
    """What the three layouts share; each sets ``data``, ``geometry``, ``series_lengths``, ``offsets``, ``row_starts``."""

    many_series = True
    data: Any
    geometry: Geometry
    series_lengths: np.ndarray
    offsets: np.ndarray
    row_starts: np.ndarray

    @property
    def n_windows(self) -> int:
        return int(self.offsets[-1])

    def arrays(self) -> list[np.ndarray]:
        """The ``(N, F)`` arrays that hold the rows, in order (the data itself for one array)."""
        return [self.data]

    def kernel_data(self):
        """The ``(N, F)`` array the kernels read (a view; float16 as its bits)."""
        return _bits_view(self.data)

    def check_source(self) -> None:
        """Raise if a memory-mapped file under any of :meth:`arrays` has shrunk (see ``SlidingWindows.check_source``)."""
        for array in self.arrays():
            _check_mapping(array)

    def _nan_args(self) -> tuple:
        """The NaN kernels' arguments after data and offsets: geometry, target mask, NaN bit patterns."""
        g = self.geometry
        is_target = np.zeros(self.data.shape[1], dtype=np.bool_)
        is_target[g.target_columns] = True
        mask, inf = _NAN_BITS[self.data.dtype.itemsize]
        return (g.stride, g.dilation, g.window, g.horizon, is_target, np.uint64(mask), np.uint64(inf))

    def first_nan(self) -> int:
        """The first window id whose input or target holds a NaN, or -1 (float data only)."""
        from fastbatch.kernels import first_nan_window

        bits = self.data.view(f"u{self.data.dtype.itemsize}")
        row_bounds = np.append(self.row_starts, self.data.shape[0]).astype(np.int64)
        return int(first_nan_window(bits, row_bounds, self.offsets, *self._nan_args()))


class OneArray(_Layout):
    """One series: the ``(N, F)`` array itself."""

    many_series = False

    def __init__(self, data: np.ndarray, geometry: Geometry) -> None:
        self.data, self.geometry = data, geometry
        n_steps = data.shape[0]
        self.series_lengths = np.array([n_steps], dtype=np.int64)
        _check_fits(self.series_lengths, geometry, one_series=True)
        self.offsets = np.array([0, (n_steps - geometry.span) // geometry.stride + 1], dtype=np.int64)
        self.row_starts = np.zeros(1, dtype=np.int64)
        # Windows that are contiguous runs of the flat data take gather_runs.
        self._runs = (
            data.flags.c_contiguous
            and geometry.dilation == 1
            and np.array_equal(geometry.target_columns, np.arange(data.shape[1]))
        )

    def rows(self, s: int) -> np.ndarray:
        return self.data

    def gather(self, ids, out_x, out_y, series_out, mean, std) -> None:
        """Windows ``ids`` into the ``(n, T, F)``/``(n, H, n_targets)`` outputs; series ids are all 0."""
        from fastbatch.kernels import gather_runs, gather_windows, run_parallel

        g = self.geometry
        if mean is None and self._runs:
            n, n_features = ids.shape[0], self.data.shape[1]
            run_parallel(gather_runs, self.kernel_data().reshape(-1), ids, g.stride * n_features,
                         g.window * n_features, g.horizon * n_features,
                         _bits_view(out_x).reshape(n, -1), _bits_view(out_y).reshape(n, -1))
        else:
            run_parallel(gather_windows, self.kernel_data(), ids, *g, _bits_view(out_x), _bits_view(out_y), mean, std)
        if series_out is not None:
            series_out[:] = 0


class EndToEnd(_Layout):
    """Many series laid end to end in one ``(N, F)`` array, split by their ``lengths``."""

    def __init__(self, data: np.ndarray, lengths: Any, geometry: Geometry) -> None:
        self.data, self.geometry = data, geometry
        self.series_lengths = check_lengths(lengths, data.shape[0])
        self.row_starts = np.concatenate([[0], np.cumsum(self.series_lengths)[:-1]]).astype(np.int64)
        _check_fits(self.series_lengths, geometry, one_series=False)
        self.offsets = window_offsets(window_counts(self.series_lengths, geometry.span, geometry.stride))

    def rows(self, s: int) -> np.ndarray:
        start = int(self.row_starts[s])
        return self.data[start : start + int(self.series_lengths[s])]

    def gather(self, ids, out_x, out_y, series_out, mean, std) -> None:
        from fastbatch.kernels import gather_concatenated, run_parallel

        run_parallel(gather_concatenated, self.kernel_data(), self.row_starts, self.offsets, ids, *self.geometry,
                     _bits_view(out_x), _bits_view(out_y), series_out, mean, std)


class SeriesList(_Layout):
    """Many series, one ``(N_s, F)`` array each; ``data`` reads their rows end to end (``SeriesRows``)."""

    def __init__(self, arrays: list[np.ndarray], geometry: Geometry) -> None:
        self.data, self.geometry = SeriesRows(arrays), geometry
        self.series_lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        self.row_starts = self.data.row_starts[:-1]
        _check_fits(self.series_lengths, geometry, one_series=False)
        self.offsets = window_offsets(window_counts(self.series_lengths, geometry.span, geometry.stride))
        self._typed = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_typed"] = None  # numba lists do not pickle; rebuilt on the first gather
        return state

    def arrays(self) -> list[np.ndarray]:
        return self.data.arrays

    def rows(self, s: int) -> np.ndarray:
        return self.data.arrays[s]

    def kernel_data(self):
        """The ``numba.typed.List`` of the series' ``(N_s, F)`` views (float16 as its bits), made once."""
        if self._typed is None:
            self._typed = typed_series_list([_bits_view(a) for a in self.data.arrays])
        return self._typed

    def gather(self, ids, out_x, out_y, series_out, mean, std) -> None:
        from fastbatch.kernels import gather_series_list, run_parallel

        run_parallel(gather_series_list, self.kernel_data(), self.offsets, ids, *self.geometry,
                     _bits_view(out_x), _bits_view(out_y), series_out, mean, std)

    def first_nan(self) -> int:
        from fastbatch.kernels import first_nan_window_list

        bits = f"u{self.data.dtype.itemsize}"
        arrays = typed_series_list([a.view(bits) for a in self.data.arrays])
        return int(first_nan_window_list(arrays, self.offsets, *self._nan_args()))


def _check_fits(lengths: np.ndarray, g: Geometry, *, one_series: bool) -> None:
    """Raise unless the longest series holds one window.

    Before any window count: past this check the span and the clamped stride
    fit in int64, whatever integers the user gave.
    """
    longest = int(lengths.max())
    if longest < g.span:
        which, steps = ("data is", f"{longest} steps") if one_series else \
            ("every series is", f"the longest has {longest} steps")
        raise ValueError(
            f"{which} too short for one window: {steps}, but window={g.window}, "
            f"horizon={g.horizon}, dilation={g.dilation} need {g.span}"
        )


def _check_mapping(array: np.ndarray) -> None:
    """Raise if the memory-mapped file ``array`` views has shrunk below what is mapped."""
    mapped = _memmap_of(array)
    if mapped is None:
        return
    mapping = mapped._mmap
    needed = mapped.offset - mapped.offset % mmap.ALLOCATIONGRANULARITY + len(mapping)
    try:
        size = mapping.size()  # fstat of the descriptor the mapping keeps
    except (OSError, ValueError):
        return  # a mapping without its descriptor: nothing to ask
    if size < needed:
        raise RuntimeError(
            f"the memory-mapped file {os.fspath(mapped.filename)!r} under these windows shrank from "
            f"{needed} to {size} bytes while they were in use; replace data files by writing a new file "
            "and renaming it"
        )


def _memmap_of(array: np.ndarray) -> np.memmap | None:
    """The ``np.memmap`` (holding its ``mmap``) that ``array`` views, else None."""
    a: Any = array
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap) and getattr(a, "_mmap", None) is not None:
            return a
        a = a.base
    return None


def _bits_view(array: np.ndarray) -> np.ndarray:
    """The array itself, or its unsigned-integer view for dtypes only copied as bits."""
    return array.view(_BITS_ONLY[array.dtype]) if array.dtype in _BITS_ONLY else array
