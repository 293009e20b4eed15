"""SlidingWindows: the geometry of a windowed series, as views over the data.

Window ``i`` starts at ``s = i * stride``; its input is
``data[s, s + dilation, ..., s + (window - 1) * dilation]`` and its target the
``horizon`` steps right after the last input step.  Nothing here copies the
data: the object holds the array (a view of it) and a handful of integers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fastbatch._checks import _show, check_int

# Numba compiles no arithmetic for these, but a same-dtype copy only moves
# bits, so data of these dtypes is gathered through an unsigned view.
_BITS_ONLY = {np.dtype(np.float16): np.uint16}
_KINDS = "iuf"


def _as_numpy(data: Any) -> np.ndarray:
    """A numpy view of ``data`` (numpy array, memmap or CPU torch tensor); never a copy."""
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
        if data.dtype in (torch.bfloat16, torch.complex64, torch.complex128) or data.dtype == torch.bool:
            raise TypeError(f"data must have a real numeric dtype, got torch.{str(data.dtype).split('.')[-1]}")
        return data.detach().numpy()
    raise TypeError(
        f"data must be a numpy array, np.memmap or CPU torch tensor of shape (N,) or (N, F), "
        f"got {type(data).__name__}"
    )


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
        real numeric dtype.
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

    The number of windows is ``(N - span) // stride + 1`` with
    ``span = (T - 1) * dilation + 1 + H``.
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
    ) -> None:
        self.window = check_int("window", window, minimum=1)
        self.horizon = check_int("horizon", horizon, minimum=0)
        self.stride = check_int("stride", stride, minimum=1)
        self.dilation = check_int("dilation", dilation, minimum=1)
        array = _as_numpy(data)
        if array.ndim not in (1, 2):
            raise ValueError(f"data must have shape (N,) or (N, F), got shape {array.shape}")
        if array.dtype.kind not in _KINDS:
            raise TypeError(f"data must have a real numeric dtype (int, uint or float), got {array.dtype}")
        if not array.dtype.isnative:
            # Numba reads only native byte order; swapping would mean a copy of the data.
            raise TypeError(
                f"data must be in native byte order, got dtype {array.dtype.str}; "
                "convert once with data.astype(data.dtype.newbyteorder('='))"
            )
        if array.size == 0:
            raise ValueError(f"data must not be empty, got shape {array.shape}")
        self.univariate = array.ndim == 1
        self.data = array[:, None] if self.univariate else array
        self.dtype = _resolve_dtype("dtype", dtype, array.dtype)
        self.target_columns = _resolve_targets(target_columns, self.n_features, self.univariate)
        n_steps = self.data.shape[0]
        self.span = (self.window - 1) * self.dilation + 1 + self.horizon
        if n_steps < self.span:
            raise ValueError(
                f"data is too short for one window: {n_steps} steps, but window={self.window}, "
                f"horizon={self.horizon}, dilation={self.dilation} need {self.span}"
            )
        self._len = (n_steps - self.span) // self.stride + 1

    # -- geometry -----------------------------------------------------------
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

    def start(self, i: int) -> int:
        """The index in ``data`` of the first input step of window ``i``."""
        return self._index(i) * self.stride

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
        s = self.start(i)
        e = s + (self.window - 1) * self.dilation + 1
        source = self.data[:, 0] if self.univariate else self.data
        x = source[s:e:self.dilation]
        y = source[e : e + self.horizon]
        # A permutation or repeat of all columns has n_targets == n_features too.
        if not self.univariate and not np.array_equal(self.target_columns, np.arange(self.n_features)):
            y = y[:, _as_index(self.target_columns)]
        return x, y

    def __repr__(self) -> str:
        return (
            f"SlidingWindows(n_windows={self._len}, data_shape={tuple(self.data.shape[:1]) if self.univariate else self.data.shape}, "
            f"window={self.window}, horizon={self.horizon}, stride={self.stride}, dilation={self.dilation}, "
            f"dtype={self.dtype})"
        )

    # -- gather ---------------------------------------------------------------
    def kernel_data(self) -> np.ndarray:
        """The ``(N, F)`` array the gather kernel reads (a view; float16 as its bits)."""
        if self.data.dtype in _BITS_ONLY:
            return self.data.view(_BITS_ONLY[self.data.dtype])
        return self.data

    def gather(self, ids: np.ndarray, out_x: np.ndarray | None = None, out_y: np.ndarray | None = None,
               *, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        """Gather windows ``ids`` into contiguous ``(x, y)`` arrays of shape ``(n, *x_shape)``, ``(n, *y_shape)``.

        ``out_x``/``out_y`` (3-D ``(n, T, F)`` and ``(n, H, n_targets)``,
        contiguous) receive the windows when given, cast to their dtype;
        otherwise new arrays of :attr:`dtype` are allocated.  ``mean``/``std``
        (float64, one per feature) standardise every value in the same pass.
        """
        from fastbatch.kernels import run_parallel, gather_windows

        ids = np.ascontiguousarray(ids)
        n = ids.shape[0]
        if out_x is None:
            out_x = np.empty((n, self.window, self.n_features), dtype=self.dtype)
        if out_y is None:
            out_y = np.empty((n, self.horizon, self.n_targets), dtype=out_x.dtype)
        if n:
            run_parallel(
                gather_windows, self.kernel_data(), ids, self.stride, self.dilation, self.window, self.horizon,
                self.target_columns, _bits_view(out_x), _bits_view(out_y), mean, std,
            )
        return out_x.reshape((n, *self.x_shape)), out_y.reshape((n, *self.y_shape))


def _bits_view(array: np.ndarray) -> np.ndarray:
    """The array itself, or its unsigned-integer view for dtypes only copied as bits."""
    return array.view(_BITS_ONLY[array.dtype]) if array.dtype in _BITS_ONLY else array


def _as_index(cols: np.ndarray):
    """A slice for evenly spaced columns (so indexing stays a view), else the array."""
    if cols.size == 1:
        return slice(int(cols[0]), int(cols[0]) + 1)
    steps = np.diff(cols)
    if np.all(steps == steps[0]) and steps[0] > 0:
        return slice(int(cols[0]), int(cols[-1]) + 1, int(steps[0]))
    return cols
