"""SlidingWindows: the geometry of a windowed series, as views over the data.

Window ``i`` starts at ``s = i * stride``; its input is
``data[s, s + dilation, ..., s + (window - 1) * dilation]`` and its target the
``horizon`` steps right after the last input step.  Nothing here copies the
data: the object holds the array (a view of it) and a handful of integers.
How the rows are stored (one array, series laid end to end, a list of
series) is a layout of :mod:`fastbatch.layouts`, which runs the kernels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fastbatch._checks import _show, check_bool, check_int
from fastbatch.layouts import _BITS_ONLY, EndToEnd, Geometry, OneArray, SeriesList
from fastbatch.series import series_of

_KINDS = "iuf"


def _as_numpy(data: Any) -> np.ndarray:
    """A numpy view of ``data`` (numpy array, memmap or CPU torch tensor); never a copy."""
    if isinstance(data, np.ma.MaskedArray):
        # The kernels read the values under the mask as if they were data.
        raise TypeError(
            f"data must not be a numpy masked array (its mask would be ignored), got {_show(data)}; "
            "pass data.filled(np.nan) to mark the masked values as missing"
        )
    if isinstance(data, np.ndarray):
        return data
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(data, torch.Tensor):
        if data.device.type != "cpu":
            raise ValueError(
                f"data must be a numpy array or a CPU torch tensor, got a tensor on {data.device}; "
                "pass data.cpu() (the loader's device= option moves batches to the GPU)"
            )
        if data.is_nested or data.layout != torch.strided:
            kind = "a nested tensor" if data.is_nested else f"a tensor of layout {data.layout}"
            raise TypeError(f"data must be a dense (strided) CPU torch tensor, got {kind}; pass data.to_dense()")
        if data.dtype not in _torch_dtypes(torch):
            raise TypeError(
                f"data must have a real numeric dtype with a numpy equivalent (float16/32/64, int8-64, uint8-64), "
                f"got torch.{str(data.dtype).split('.')[-1]}"
            )
        return data.detach().numpy()
    raise TypeError(
        f"data must be a numpy array, np.memmap or CPU torch tensor of shape (N,) or (N, F), "
        f"got {_show(data)} of type {type(data).__name__}"
    )


def _torch_dtypes(torch) -> set:
    """The torch dtypes whose tensors numpy can view (no bfloat16, float8, bool, complex or quantized)."""
    names = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
    return {getattr(torch, n) for n in names if hasattr(torch, n)}


def _checked_array(data: Any, name: str) -> np.ndarray:
    """``data`` as a numpy view, checked: 1-D or 2-D, real numeric, native byte order."""
    try:
        array = _as_numpy(data)
    except (TypeError, ValueError) as error:
        if name == "data":
            raise
        raise type(error)(f"{name}: {error}") from None
    if array.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (N,) or (N, F), got shape {array.shape}")
    if array.dtype.kind not in _KINDS:
        raise TypeError(f"{name} must have a real numeric dtype (int, uint or float), got {array.dtype}")
    if array.dtype.itemsize > 8:
        # Neither Numba nor torch has long double.
        raise TypeError(f"{name} must have a dtype of at most 64 bits (float64 at most), got {array.dtype}")
    if not array.dtype.isnative:
        # Numba reads only native byte order; swapping would mean a copy of the data.
        raise TypeError(
            f"{name} must be in native byte order, got dtype {array.dtype.str}; "
            "convert once with data.astype(data.dtype.newbyteorder('='))"
        )
    return array


def _resolve_dtype(name: str, requested: Any, source: np.dtype) -> np.dtype:
    if requested is None:
        return source
    try:
        import torch

        if isinstance(requested, torch.dtype):
            requested = torch.empty(0, dtype=requested).numpy().dtype
    except (ImportError, TypeError):
        raise TypeError(f"{name}={requested!r} has no numpy equivalent; use a numpy dtype such as 'float32'") from None
    try:
        # Batches are torch tensors, which have no byte order: ">f4" means float32.
        dtype = np.dtype(requested).newbyteorder("=")
    except TypeError:
        raise TypeError(f"{name} must be a numeric dtype such as 'float32', got {_show(requested)}") from None
    if dtype.kind not in _KINDS:
        raise TypeError(f"{name} must be a real numeric dtype (int, uint or float), got {dtype}")
    if dtype.itemsize > 8:
        raise TypeError(f"{name} must be a dtype of at most 64 bits (float64 at most), got {dtype}")
    if (dtype in _BITS_ONLY or source in _BITS_ONLY) and dtype != source:
        raise TypeError(f"{name}={dtype} with data of dtype {source}: float16 is gathered only as float16")
    return dtype


def _resolve_targets(target_columns: Any, n_features: int, univariate: bool) -> np.ndarray:
    if target_columns is None:
        return np.arange(n_features, dtype=np.int64)
    if univariate:
        raise ValueError(
            f"target_columns applies to 2-D data (N, F); this data is 1-D, got target_columns={_show(target_columns)}"
        )
    if isinstance(target_columns, (int, np.integer)) and not isinstance(target_columns, bool):
        target_columns = [target_columns]
    try:
        cols = np.asarray(target_columns)
    except Exception:
        cols = None
    if cols is None or cols.ndim != 1 or cols.size == 0 or cols.dtype.kind not in "iu":
        raise TypeError(
            f"target_columns must be a non-empty list of column indices, got {_show(target_columns)}"
        )
    bad = [int(c) for c in cols if not -n_features <= c < n_features]
    if bad:
        raise ValueError(
            f"target_columns must index the {n_features} features (0..{n_features - 1}), "
            f"got {list(map(int, cols))}"
        )
    return (cols.astype(np.int64) % n_features)


class SlidingWindows:
    """Sliding windows over a series, as views: ``x_i = data[s_i : s_i+T]``, ``y_i`` the next ``H`` steps.

    Parameters
    ----------
    data:
        A numpy array (any strides, read-only and ``np.memmap`` included; never
        written) or a CPU torch tensor, of shape ``(N,)`` or ``(N, F)`` and a
        real numeric dtype.  Many series: a list of such arrays (all 1-D or
        all 2-D with the same ``F`` and dtype; never concatenated), or one
        array of series laid end to end with ``lengths``.
    window:
        ``T``, the number of input steps of each window (>= 1).
    horizon:
        ``H``, the number of target steps that follow the input (>= 0).
    stride:
        Steps between the starts of consecutive windows (>= 1).
    dilation:
        Steps between consecutive input steps (Keras' ``sampling_rate``; >= 1).
        The target starts right after the last input step.
    target_columns:
        Feature indices that form the target (2-D data only); default: all.
    dtype:
        The dtype of the batches; default: the data's.  The cast happens inside
        the gather, in the same pass as the copy.
    lengths:
        With one array of many series laid end to end: the length of each
        series (they must add up to ``N``).
    return_series_id:
        Give each window's series index too: ``w[i]`` is ``(x, y, series)``
        and batches are ``(x, y, series_ids)``.

    The number of windows is ``(N - span) // stride + 1`` with
    ``span = (T - 1) * dilation + 1 + H``; with many series it is the sum of
    each series' count, no window crosses from one series into the next, and
    a series shorter than ``span`` has none.  Window ids run through the
    series in order.  The windows are also a map-style torch ``Dataset``:
    see :meth:`__getitems__` and ``fastbatch.collate``.
    """

    def __init__(
        self,
        data: Any,
        *,
        window: int,
        horizon: int = 1,
        stride: int = 1,
        dilation: int = 1,
        target_columns: Sequence[int] | None = None,
        dtype: Any = None,
        lengths: Sequence[int] | None = None,
        return_series_id: bool = False,
    ) -> None:
        self.window = check_int("window", window, minimum=1)
        self.horizon = check_int("horizon", horizon, minimum=0)
        self.stride = check_int("stride", stride, minimum=1)
        self.dilation = check_int("dilation", dilation, minimum=1)
        self.return_series_id = check_bool("return_series_id", return_series_id)
        self.span = (self.window - 1) * self.dilation + 1 + self.horizon
        if isinstance(data, (list, tuple)):
            if lengths is not None:
                raise ValueError(
                    f"lengths= splits one array of series laid end to end; a list of series has its own lengths, "
                    f"got lengths={_show(lengths)} with a list of {len(data)} series"
                )
            rows = self._checked_series_list(data)
            first = rows[0]
        else:
            first = _checked_array(data, "data")
            if first.size == 0:
                raise ValueError(f"data must not be empty, got shape {first.shape}")
            self.univariate = first.ndim == 1
            rows = first[:, None] if self.univariate else first
        n_steps = sum(a.shape[0] for a in rows) if isinstance(rows, list) else rows.shape[0]
        n_features = 1 if self.univariate else first.shape[1]
        self.dtype = _resolve_dtype("dtype", dtype, first.dtype)
        self.target_columns = _resolve_targets(target_columns, n_features, self.univariate)
        self.geometry = Geometry(min(self.stride, n_steps), self.dilation, self.window, self.horizon,
                                 self.target_columns)
        if isinstance(rows, list):
            self.layout = SeriesList(rows, self.geometry)
        elif lengths is not None:
            self.layout = EndToEnd(rows, lengths, self.geometry)
        else:
            self.layout = OneArray(rows, self.geometry)
        self._len = self.layout.n_windows

    @property
    def data(self) -> Any:
        """The ``(N, F)`` rows the windows read: the array (a view), or a list's series end to end (``SeriesRows``)."""
        return self.layout.data

    def _checked_ids(self, ids: Any, *, allow_negative: bool = False) -> np.ndarray:
        """``ids`` as a signed integer array of valid window indices: the kernels read without bounds checks.

        ``allow_negative``: ids in ``[-len, 0)`` count from the end (``__getitems__``), and come back
        as the ids they stand for.  Bounds are compared before any cast, so a uint64 id past int64
        cannot wrap round into a valid one.
        """
        given = ids
        try:
            ids = np.asarray(given)
        except (TypeError, ValueError):
            ids = None
        if ids is None or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TypeError(f"ids must be a 1-D array or list of integer window indices, got {_show(given)}")
        n, low = self._len, (-self._len if allow_negative else 0)
        if not ids.size:
            return ids.astype(np.int64)
        first, last = int(ids.min()), int(ids.max())
        if first < low or last >= n:
            bad = int(ids[(ids < low) | (ids >= n)][0])
            note = " (negative ids count from the end)" if allow_negative else ""
            raise IndexError(f"ids must be window indices in [{low}, {n}){note}, got {bad}: out of range")
        if first < 0:
            return np.where(ids < 0, ids.astype(np.int64) + n, ids)
        return ids if ids.dtype.kind == "i" else ids.astype(np.int64)

    def _check_outputs(self, n: int, out_x: Any, out_y: Any, series_out: Any) -> None:
        _check_out("out_x", out_x, (n, self.window, self.n_features))
        _check_out("out_y", out_y, (n, self.horizon, self.n_targets))
        if out_x.dtype != out_y.dtype:
            raise ValueError(f"out_x and out_y must share a dtype, got {out_x.dtype} and {out_y.dtype}")
        # float16 is copied as bits: into outputs of another width they would be reinterpreted, not cast.
        _resolve_dtype("out_x", out_x.dtype, self.data.dtype)
        if series_out is not None:
            _check_out("series_out", series_out, (n,))
            if series_out.dtype.kind not in "iu":
                raise TypeError(f"series_out must be an integer array (int64), got dtype {series_out.dtype}")

    def check_source(self) -> None:
        """Raise if a memory-mapped file under the data has shrunk below what the windows map.

        Reading a page past the end of a truncated mapping kills the process
        with SIGBUS (numpy's own reads do too), so the loader calls this before
        each chunk, and ``__getitems__`` before each batch, and turns the
        common case into a clear error.  Every series of a list is checked.
        The size is that of the mapped file itself (its open descriptor), so a
        file replaced by a rename keeps the old contents mapped and is not an
        error.  A truncation between this check and the read still ends in SIGBUS.
        """
        self.layout.check_source()

    def _checked_series_list(self, data: Sequence[Any]) -> list[np.ndarray]:
        """A list of series, checked, as ``(N_s, F)`` views."""
        if len(data) == 0:
            raise ValueError("data must hold at least one series, got an empty list")
        for k, a in enumerate(data):
            if not isinstance(a, np.ndarray) and type(a).__module__.split(".")[0] != "torch":
                raise TypeError(
                    "data must be a numpy array, np.memmap or CPU torch tensor, or a list of them (one per "
                    f"series); got a list holding {type(a).__name__} at data[{k}]: {_show(a)}"
                )
        arrays = [_checked_array(a, f"data[{k}]") for k, a in enumerate(data)]
        first = arrays[0]
        if first.ndim == 2 and first.shape[1] == 0:
            raise ValueError(f"series must have at least one feature, got data[0] of shape {first.shape}")
        for k, a in enumerate(arrays):
            if a.ndim != first.ndim:
                raise ValueError(f"series must be all 1-D or all 2-D, got data[0] of shape {first.shape} "
                                 f"and data[{k}] of shape {a.shape}")
            if a.ndim == 2 and a.shape[1] != first.shape[1]:
                raise ValueError(f"series must have the same number of features, got {first.shape[1]} in data[0] "
                                 f"and {a.shape[1]} in data[{k}]")
            if a.dtype != first.dtype:
                # One kernel reads every series: mixed dtypes would need a copy.
                raise TypeError(f"series must share one dtype, got {first.dtype} in data[0] and {a.dtype} in data[{k}]")
        self.univariate = first.ndim == 1
        return [a[:, None] if self.univariate else a for a in arrays]

    @classmethod
    def from_frame(cls, frame: Any, *, id: Any, time: str, target: Any, past: Any = (), future: Any = (),
                   static: Any = (), window: int, horizon: int = 1, stride: int = 1, scale: str | None = None,
                   fill: str = "raise", dtype: Any = "float32", step: Any = None,
                   return_series_id: bool = False) -> "SlidingWindows":
        """Windows over a long-format table: one row per (series, time step), a target, covariates.

        ``frame`` is a pandas or polars DataFrame or a pyarrow Table (the
        ``fastbatch[frames]`` extra).  ``id``: the series id column(s), or
        ``None`` for one series; ``time``: integers or timestamps, regular
        within each series; ``target``: a column or a list; ``past``: observed
        covariates (known up to the forecast start); ``future``: known
        covariates (over the window and the horizon); ``static``: constant per
        series (numbers, or categories as integer codes); ``scale``: ``None``,
        ``"standard"`` or ``"robust"``, per series, fused into the gather;
        ``fill``: ``"raise"`` (default) on a missing time step, ``"ffill"`` or
        ``"nan"``.  With covariates a batch is a ``PanelBatch`` (``past``,
        ``future``, ``static``, ``target``, ``series``); without, the plain
        ``(x, y[, series])``.  See docs/frames.md.
        """
        from fastbatch import frames
        from fastbatch.frame_windows import from_table

        return_series_id = check_bool("return_series_id", return_series_id)
        panel = frames.from_frame(frame, id=id, time=time, target=target, past=past, future=future, static=static,
                                  window=window, horizon=horizon, stride=stride, fill=fill, scale=scale,
                                  dtype=dtype, step=step)
        return from_table(panel, return_series_id)

    @classmethod
    def from_parquet(cls, path: Any, *, cache: Any = "auto", cache_dir: Any = None, return_series_id: bool = False,
                     **options: Any) -> "SlidingWindows":
        """:meth:`from_frame` over a Parquet file or folder, or an Arrow IPC/Feather file (memory-mapped).

        Data larger than a quarter of the available memory (``cache="auto"``)
        is converted once into memory-mapped ``.npy`` files in a cache beside
        the data (or in ``cache_dir``), keyed by the files and the options,
        and reused on the next run.  ``options`` are :meth:`from_frame`'s.
        """
        from fastbatch import frames
        from fastbatch.frame_windows import from_table

        return_series_id = check_bool("return_series_id", return_series_id)
        panel = frames.from_parquet(path, cache=cache, cache_dir=cache_dir, **options)
        return from_table(panel, return_series_id)

    @classmethod
    def from_npy(cls, path: Any, **kwargs: Any) -> "SlidingWindows":
        """Windows over a ``.npy`` file opened with ``np.load(path, mmap_mode="r")``: nothing is loaded.

        The operating system pages the file in as windows are read (its page
        cache, not this process's memory).  ``kwargs`` are those of the
        constructor (``lengths=`` for many series laid end to end).  Pickling
        the result (DataLoader worker processes) reopens the file by its path
        instead of copying its contents.
        """
        import os

        try:
            path = os.fspath(path)
        except TypeError:
            raise TypeError(
                f"path must be a str or os.PathLike naming a .npy file, got {_show(path)} of type {type(path).__name__}"
            ) from None
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, EOFError) as error:  # not a .npy header, or object dtype (cannot be mapped)
            raise ValueError(
                f"path={path!r} is not a .npy file of numbers that can be memory-mapped: {error}"
            ) from None
        if not isinstance(array, np.ndarray):
            array.close()
            raise ValueError(
                f"path={path!r} is an .npz archive, not a .npy file; pass one of its arrays instead: "
                "SlidingWindows(np.load(path)[name], ...)"
            )
        out = cls(array, **kwargs)
        out._npy = (path, kwargs)
        return out

    def __reduce__(self):
        npy = getattr(self, "_npy", None)
        if npy is not None:
            return (_reopen_npy, npy)
        return (_restore, (type(self), dict(self.__dict__)))

    # -- geometry -----------------------------------------------------------
    @property
    def n_series(self) -> int:
        """The number of series (1 for a single array)."""
        return int(self.series_lengths.shape[0])

    @property
    def many_series(self) -> bool:
        """True when built from a list of series or with ``lengths``."""
        return self.layout.many_series

    @property
    def series_offsets(self) -> np.ndarray:
        """``[0, n_0, n_0 + n_1, ..., len(self)]``: series ``s`` owns window ids ``offsets[s]:offsets[s+1]``."""
        return self.layout.offsets

    @property
    def series_lengths(self) -> np.ndarray:
        """The number of steps of each series (``[N]`` for a single array)."""
        return self.layout.series_lengths

    def series_of(self, ids: Any) -> np.ndarray:
        """The series index of each window id in ``ids`` (valid ids, as an int64 array)."""
        return series_of(self.series_offsets, np.asarray(ids, dtype=np.int64))

    def locate(self, i: int) -> tuple[int, int]:
        """``(series, start)``: window ``i``'s series and the step of its first input within that series."""
        i = self._index(i)
        if not self.many_series:
            return 0, i * self.stride
        offsets = self.layout.offsets
        s = int(series_of(offsets, i))
        return s, (i - int(offsets[s])) * self.stride

    @property
    def n_steps(self) -> int:
        """``N``, the length of the series."""
        return int(self.data.shape[0])

    @property
    def n_features(self) -> int:
        """``F``, the number of features (1 for 1-D data)."""
        return int(self.data.shape[1])

    @property
    def n_targets(self) -> int:
        """The number of target features."""
        return int(self.target_columns.shape[0])

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one input window: ``(T,)`` or ``(T, F)``."""
        return (self.window,) if self.univariate else (self.window, self.n_features)

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Shape of one target: ``(H,)`` or ``(H, n_targets)``."""
        return (self.horizon,) if self.univariate else (self.horizon, self.n_targets)

    @property
    def window_nbytes(self) -> int:
        """Bytes of one gathered window, input and target, in the batch dtype."""
        return (self.window * self.n_features + self.horizon * self.n_targets) * self.dtype.itemsize

    def find_nan(self) -> int | None:
        """The index of the first window whose input or target holds a NaN, or ``None``.

        A window is its ``window`` input steps, every feature of each (with
        ``dilation > 1`` the steps skipped between them are not part of it),
        and its ``horizon`` target steps, ``target_columns`` only: a NaN
        elsewhere (a skipped step, a feature that is not a target in the
        target steps, the rows after the last window) is not reported.  One
        compiled pass over the rows in order, which stops at the first window
        with a NaN; nothing is copied.  Integer data has no NaN: ``None`` at
        once.  ``WindowLoader(..., check_nan=True)`` runs this when it is made.
        """
        if self.data.dtype.kind != "f":
            return None
        i = self.layout.first_nan()
        return None if i < 0 else i

    def __len__(self) -> int:
        return self._len

    def _index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"window index must be an integer, got {_show(i)}")
        i = int(i)
        if not -self._len <= i < self._len:
            raise IndexError(f"window index {i} is out of range for {self._len} windows")
        return i % self._len

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of window ``i`` as numpy views of the data (no copy).

        ``y`` is a view too unless ``target_columns`` is not evenly spaced, in
        which case numpy's fancy indexing has to copy those few values.  Views
        have the data's dtype; batches from a loader have ``dtype``.
        """
        series, s = self.locate(i)
        e = s + (self.window - 1) * self.dilation + 1
        source = self.layout.rows(series)
        source = source[:, 0] if self.univariate else source
        x = source[s:e:self.dilation]
        y = source[e : e + self.horizon]
        # A permutation or repeat of all columns has n_targets == n_features too.
        if not self.univariate and not np.array_equal(self.target_columns, np.arange(self.n_features)):
            y = y[:, _as_index(self.target_columns)]
        if self.return_series_id:
            return x, y, series
        return x, y

    def __getitems__(self, indices: Sequence[int]):
        """A whole batch for ``torch.utils.data.DataLoader``, gathered by one Numba kernel call.

        Returns a :class:`fastbatch.compat.WindowBatch`, whose ``tensors`` are
        ``(x, y[, series_ids])``; ``DataLoader(windows, batch_size=B,
        collate_fn=fastbatch.collate)`` hands those out as the batch.  Negative
        indices count from the end.
        """
        from fastbatch.compat import get_batch

        return get_batch(self, indices)

    def __repr__(self) -> str:
        if self.many_series:
            return (
                f"SlidingWindows(n_windows={self._len}, n_series={self.n_series}, n_features={self.n_features}, "
                f"window={self.window}, horizon={self.horizon}, stride={self.stride}, dilation={self.dilation}, "
                f"dtype={self.dtype})"
            )
        return (
            f"SlidingWindows(n_windows={self._len}, data_shape={tuple(self.data.shape[:1]) if self.univariate else self.data.shape}, "
            f"window={self.window}, horizon={self.horizon}, stride={self.stride}, dilation={self.dilation}, "
            f"dtype={self.dtype})"
        )

    # -- what a loader's producer asks of windows ---------------------------------
    # A chunk is a tuple of fields, each with a first dimension of windows.
    # Windows with other fields (fastbatch.frames' panels) override these.
    def _chunk_fields(self, gather_dtype: np.dtype):
        """``FieldSpec`` of each field a chunk holds per window, as gathered: ``x``, ``y`` [, series ids]."""
        from fastbatch.staging import FieldSpec

        out = [FieldSpec((self.window, self.n_features), gather_dtype),
               FieldSpec((self.horizon, self.n_targets), gather_dtype)]
        if self.return_series_id:
            out.append(FieldSpec((), np.int64))
        return tuple(out)

    def _gather_chunk(self, ids: np.ndarray, arrays: tuple, mean, std) -> None:
        """Gather valid ``ids`` into ``arrays`` (the fields of :meth:`_chunk_fields`)."""
        self.gather(ids, arrays[0], arrays[1], mean=mean, std=std,
                    series_out=arrays[2] if self.return_series_id else None, check=False)

    def _finish_chunk(self, fields: tuple, dtype) -> tuple:
        """Gathered fields as the batch's shapes and dtype (1-D series lose their feature axis; bfloat16 cast)."""
        x, y = fields[0], fields[1]
        if self.univariate:
            x, y = x.reshape(x.shape[0], self.window), y.reshape(y.shape[0], self.horizon)
        if x.dtype != dtype:
            x, y = x.to(dtype), y.to(dtype)
        return (x, y, *fields[2:])

    #: What a batch's tuple of fields becomes (``None``: the tuple itself).
    _batch_type = None

    def _device_windows(self, device, out_dtype, mean, std):
        """The windows on ``device``, for ``placement="device"``: a ``chunk(ids, series, series_ids)`` maker."""
        from fastbatch.device import DeviceWindows

        return DeviceWindows(self, device, out_dtype, mean, std)

    def _check_loader(self, *, normalize: Any, placement: str, gather_dtype: np.dtype) -> str:
        """Refuse loader options these windows cannot take (naming them); the placement to use."""
        return placement

    # -- gather ---------------------------------------------------------------
    def kernel_data(self) -> np.ndarray:
        """The ``(N, F)`` array the gather kernel reads (a view; float16 as its bits).

        For a list of series: the ``numba.typed.List`` of their ``(N_s, F)`` views.
        """
        return self.layout.kernel_data()

    def gather(self, ids: np.ndarray, out_x: np.ndarray | None = None, out_y: np.ndarray | None = None,
               *, mean: np.ndarray | None = None, std: np.ndarray | None = None,
               series_out: np.ndarray | None = None, check: bool = True):
        """Gather windows ``ids`` into contiguous ``(x, y)`` arrays of shape ``(n, *x_shape)``, ``(n, *y_shape)``.

        ``out_x``/``out_y`` (3-D ``(n, T, F)`` and ``(n, H, n_targets)``,
        contiguous) receive the windows when given, cast to their dtype;
        otherwise new arrays of :attr:`dtype` are allocated.  ``mean``/``std``
        (float64, one per feature) standardise every value in the same pass.
        With :attr:`return_series_id` (or ``series_out``, int64 of length
        ``n``) the series of each window comes back as a third array.

        The kernels read and write without bounds checks, so ids, output
        arrays and ``mean``/``std`` are checked here; the loader, whose ids
        are valid by construction, passes ``check=False``.
        """
        from fastbatch.normalize import check_stats

        if check:
            ids = self._checked_ids(ids)
        ids = np.ascontiguousarray(ids)
        n = ids.shape[0]
        if out_x is None:
            out_x = np.empty((n, self.window, self.n_features), dtype=self.dtype)
        if out_y is None:
            out_y = np.empty((n, self.horizon, self.n_targets), dtype=out_x.dtype)
        if series_out is None and self.return_series_id:
            series_out = np.empty(n, dtype=np.int64)
        if check:
            self._check_outputs(n, out_x, out_y, series_out)
            mean, std = check_stats(mean, std, self.n_features, out_x.dtype)
        if n:
            self.layout.gather(ids, out_x, out_y, series_out, mean, std)
        x, y = out_x.reshape((n, *self.x_shape)), out_y.reshape((n, *self.y_shape))
        return (x, y) if series_out is None else (x, y, series_out)


def _check_out(name: str, array: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray) or array.shape != shape or not array.flags.c_contiguous \
            or not array.flags.writeable or array.dtype.kind not in _KINDS or not array.dtype.isnative:
        got = f"{type(array).__name__} of shape {getattr(array, 'shape', None)}, dtype {getattr(array, 'dtype', None)}"
        raise ValueError(
            f"{name} must be a writeable C-contiguous numeric array of shape {shape} in native byte order, got {got}"
        )


def _as_index(cols: np.ndarray):
    """A slice for evenly spaced columns (so indexing stays a view), else the array."""
    if cols.size == 1:
        return slice(int(cols[0]), int(cols[0]) + 1)
    steps = np.diff(cols)
    if np.all(steps == steps[0]) and steps[0] > 0:
        return slice(int(cols[0]), int(cols[-1]) + 1, int(steps[0]))
    return cols


def _reopen_npy(path: str, kwargs: dict) -> SlidingWindows:
    return SlidingWindows.from_npy(path, **kwargs)


def _restore(cls, state: dict) -> SlidingWindows:
    out = cls.__new__(cls)
    out.__dict__.update(state)
    return out
