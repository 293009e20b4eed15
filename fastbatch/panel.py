"""Panels: many series with covariates as contiguous arrays, their windows, scaling, split and gather.

A :class:`Panel` is what :func:`fastbatch.frames.from_frame` makes of a
long-format table: the series laid end to end (the ``lengths=`` layout of
:class:`fastbatch.SlidingWindows`), targets first, then the observed (past)
covariates in ``values``, the known (future) covariates in ``future``, one
row of ``static`` per series.  Nothing here knows about tables.

Window ``i`` of series ``s`` (``offsets[s] <= i < offsets[s + 1]`` of a
:class:`WindowIndex`) starts at row ``first_rows[s] + (i - offsets[s]) * stride``
of ``values``; with ``r`` that row, ``T`` the window and ``H`` the horizon::

    past[b]   = values[r : r + T]                     (T, n_targets + n_past)
    future[b] = future[r : r + T + H]                 (T + H, n_future)
    static[b] = static[s]                             (n_static,)
    target[b] = values[r + T : r + T + H, :n_targets] (H, n_targets)
    series[b] = s

Scaling (``scale="standard"`` or ``"robust"``) applies per series and per
column to the targets, the past and the future covariates, never to static
features, with statistics from the training rows only: every value ``v``
becomes ``(float64(v) - center[s, c]) / scale[s, c]`` before the cast to the
batch dtype, inside the gather.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from fastbatch._checks import _show
from fastbatch._jit import jit, prange
from fastbatch.kernels import parallel_kernel, run_parallel

SCALES = (None, "standard", "robust")


# -- the panel -------------------------------------------------------------------


@dataclass(frozen=True)
class PanelTime:
    """Each series' time axis: step ``k`` of series ``s`` is at ``start[s] + k * step[s]``.

    ``start`` and ``step`` are int64 in the time column's units: plain
    integers (``unit=None``) or ticks of ``datetime64[unit]`` (UTC when
    ``tz`` is set, ``tz`` being the column's time zone).
    """

    start: np.ndarray
    step: np.ndarray
    unit: str | None = None
    tz: str | None = None

    def values(self, s: int, length: int) -> np.ndarray:
        """The ``length`` time stamps of series ``s`` (int64, or ``datetime64[unit]``)."""
        ticks = int(self.start[s]) + np.arange(length, dtype=np.int64) * int(self.step[s])
        return ticks if self.unit is None else ticks.astype(f"datetime64[{self.unit}]")

    def ticks(self, at: Any) -> int:
        """``at`` (an integer, or a timestamp for a timestamp axis) as int64 ticks of this axis."""
        if self.unit is None:
            if isinstance(at, bool) or not isinstance(at, (int, np.integer)):
                raise TypeError(f"the time column holds integers, so the cutoff must be one; got {_show(at)}")
            return int(at)
        if isinstance(at, (int, np.integer)) and not isinstance(at, bool):
            raise TypeError(f"the time column holds timestamps, so the cutoff must be one; got the integer {at}")
        try:
            import pandas as pd
        except ImportError:  # plain numpy: naive timestamps only
            return int(np.datetime64(at).astype(f"datetime64[{self.unit}]").astype(np.int64))
        stamp = pd.Timestamp(at)
        if self.tz is not None:
            stamp = stamp.tz_localize(self.tz) if stamp.tzinfo is None else stamp
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        elif stamp.tzinfo is not None:
            raise ValueError(f"the time column has no time zone but the cutoff {at!r} has one")
        exact = np.datetime64(stamp.to_datetime64())
        ticks = int(exact.astype(f"datetime64[{self.unit}]").astype(np.int64))
        # A cutoff inside a tick (mid-month on a monthly axis) belongs to the next one.
        return ticks + 1 if np.datetime64(ticks, self.unit).astype(exact.dtype) < exact else ticks

    def show(self, ticks: int) -> str:
        """One time stamp of this axis as text, for messages."""
        if self.unit is None:
            return str(int(ticks))
        return str(np.datetime64(int(ticks), self.unit)) + (f" UTC (time zone {self.tz})" if self.tz else "")


@dataclass(frozen=True)
class PanelOptions:
    """The options a panel was built with (see :func:`fastbatch.frames.from_frame`)."""

    id: Any
    time: str
    target: tuple[str, ...]
    past: tuple[str, ...] = ()
    future: tuple[str, ...] = ()
    static: tuple[str, ...] = ()
    window: int = 1
    horizon: int = 1
    stride: int = 1
    fill: str = "raise"
    scale: str | None = None
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    step: Any = None


@dataclass(frozen=True, eq=False)
class Panel:
    """Many series with covariates, laid end to end; see the module docstring for the layout.

    Attributes
    ----------
    values:
        ``(N, n_targets + n_past)``: the targets, then the past covariates, of
        every series in order.  The source's dtype (their common dtype); the
        gather casts to the batch dtype.  A view of the source where possible.
        Row-major (C order) as tables are built, so that a window's rows are
        one contiguous run (:func:`gather_panel_runs`); any other strides are
        read too (:func:`gather_panel_kernel`).
    future:
        ``(N, n_future)``: the future (known) covariates, same rows.
    static:
        ``(n_series, n_static)``: one row per series.
    lengths:
        ``(n_series,)`` int64: the rows of each series; they add up to ``N``.
    series_ids:
        ``(n_series,)``: the original id of each series (an object array for
        strings and tuples, ``[None]`` for one series without an id column).
    time:
        Each series' start and step (:class:`PanelTime`).
    options:
        The options the panel was built with.
    skipped:
        The number of series left out for being shorter than ``window + horizon``.
    source:
        The cache folder the arrays are memory-mapped from
        (:func:`fastbatch.frames.from_parquet`), else ``None``.  Pickling such
        a panel (DataLoader workers) maps the folder again instead of copying
        the data.
    """

    values: np.ndarray
    future: np.ndarray
    static: np.ndarray
    lengths: np.ndarray
    series_ids: np.ndarray
    time: PanelTime
    options: PanelOptions
    skipped: int = 0
    source: str | None = None

    def __reduce_ex__(self, protocol):
        if self.source is not None:
            from fastbatch.frames import load_cache

            return (load_cache, (self.source, self.options))
        return super().__reduce_ex__(protocol)

    @property
    def n_series(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def n_targets(self) -> int:
        return len(self.options.target)

    @property
    def row_starts(self) -> np.ndarray:
        """``(n_series,)`` int64: the row of ``values`` where each series starts."""
        starts = np.zeros(self.n_series, dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=starts[1:])
        return starts

    def __repr__(self) -> str:
        o = self.options
        return (f"Panel(n_series={self.n_series}, n_rows={self.values.shape[0]}, skipped={self.skipped}, "
                f"target={list(o.target)}, past={list(o.past)}, future={list(o.future)}, static={list(o.static)})")


# -- scaling ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Scaler:
    """Per-series, per-column statistics: ``scaled = (v - center) / scale``.

    ``center``/``scale`` are ``(n_series, n_targets + n_past)`` and
    ``future_center``/``future_scale`` ``(n_series, n_future)``, float64.
    ``"standard"``: mean and standard deviation (``ddof=0``); ``"robust"``:
    median and interquartile range.  Both ignore NaN; a series with no
    training rows, or a column that is constant over them, gets center 0 /
    scale 1 (or scale 1) so that nothing divides by zero.
    """

    kind: str
    center: np.ndarray
    scale: np.ndarray
    future_center: np.ndarray
    future_scale: np.ndarray
    n_targets: int

    @classmethod
    def fit(cls, panel: Panel, kind: str, train_rows: np.ndarray | None = None) -> "Scaler":
        """Statistics of the first ``train_rows[s]`` rows of each series (all rows by default)."""
        if kind not in ("standard", "robust"):
            raise ValueError(f"scale must be None, 'standard' or 'robust', got scale={kind!r}")
        rows = panel.lengths if train_rows is None else np.asarray(train_rows, dtype=np.int64)
        starts = panel.row_starts
        stats = [_column_stats(block, starts, rows, kind) for block in (panel.values, panel.future)]
        return cls(kind, *stats[0], *stats[1], panel.n_targets)

    def inverse(self, pred: Any, series: Any):
        """Predictions of the targets back in the data's units: ``pred * scale + center``.

        Parameters
        ----------
        pred:
            A torch tensor or numpy array of shape ``(B, ..., n_targets)``, in
            the scaled units (``(B, H, n_targets)`` for point forecasts).
        series:
            ``(B,)``: each row's series (a batch's ``series`` field).

        Returns
        -------
        The same type, dtype and device as ``pred``.
        """
        center, scale = self._target_stats(pred, series)
        return pred * scale + center

    def transform(self, values: Any, series: Any):
        """Targets in the data's units to the scaled units: ``(values - center) / scale``."""
        center, scale = self._target_stats(values, series)
        return (values - center) / scale

    def _target_stats(self, pred: Any, series: Any):
        n_extra = pred.ndim - 2
        if pred.ndim < 2 or pred.shape[-1] != self.n_targets:
            raise ValueError(f"pred must have shape (B, ..., n_targets={self.n_targets}), got {tuple(pred.shape)}")
        s = series.detach().cpu().numpy() if hasattr(series, "detach") else np.asarray(series)
        if s.shape != (pred.shape[0],):
            raise ValueError(f"series must have shape (B,) = ({pred.shape[0]},), got {tuple(s.shape)}")
        shape = (pred.shape[0],) + (1,) * n_extra + (self.n_targets,)
        center = self.center[s, : self.n_targets].reshape(shape)
        scale = self.scale[s, : self.n_targets].reshape(shape)
        if hasattr(pred, "detach"):
            import torch

            return (torch.as_tensor(center, dtype=pred.dtype, device=pred.device),
                    torch.as_tensor(scale, dtype=pred.dtype, device=pred.device))
        return center.astype(pred.dtype, copy=False), scale.astype(pred.dtype, copy=False)


def _column_stats(block: np.ndarray, starts: np.ndarray, rows: np.ndarray, kind: str):
    """``(center, scale)`` per series of ``block``'s first ``rows[s]`` rows of each series."""
    n_series, n_cols = starts.shape[0], block.shape[1]
    center = np.zeros((n_series, n_cols))
    scale = np.ones((n_series, n_cols))
    if n_cols and n_series:
        run_parallel(series_stats, _kernel_view(block), starts.astype(np.int64), np.asarray(rows, np.int64),
                     kind == "robust", center, scale)
    return center, scale


@jit()
def _quartile_ranks(k):
    """The order statistics that linear interpolation of the quartiles of ``k`` values reads."""
    out = np.empty(6, np.int64)
    for j in range(3):
        pos = (j + 1) * 0.25 * (k - 1)
        out[2 * j] = np.int64(np.floor(pos))
        out[2 * j + 1] = min(np.int64(np.floor(pos)) + 1, k - 1)
    return out


@jit()
def _quantile(part, k, q):
    """numpy's default (linear) quantile ``q`` of ``k`` values partitioned at :func:`_quartile_ranks`."""
    pos = q * (k - 1)
    i = np.int64(np.floor(pos))
    j = min(i + 1, k - 1)
    return part[i] + (part[j] - part[i]) * (pos - i)


@parallel_kernel
def series_stats(block, starts, rows, robust, center, scale):
    """Per series ``s`` and column ``c`` of ``block[starts[s] : starts[s] + rows[s]]``, NaN left out.

    ``robust``: median and interquartile range (linear interpolation, numpy's
    default); otherwise mean and standard deviation (``ddof=0``, two passes).
    ``center``/``scale`` keep their 0/1 where a column has no value, and the
    scale keeps 1 where it would be 0 or not finite.
    """
    for s in prange(starts.shape[0]):
        lo = starts[s]
        n = rows[s]
        for c in range(block.shape[1]):
            if robust:
                buf = np.empty(n)
                k = 0
                for r in range(lo, lo + n):
                    v = np.float64(block[r, c])
                    if not np.isnan(v):
                        buf[k] = v
                        k += 1
                if k == 0:
                    continue
                part = np.partition(buf[:k], _quartile_ranks(k))  # selection, not a full sort
                mid = _quantile(part, k, 0.5)
                spread = _quantile(part, k, 0.75) - _quantile(part, k, 0.25)
            else:
                total = 0.0
                k = 0
                for r in range(lo, lo + n):
                    v = np.float64(block[r, c])
                    if not np.isnan(v):
                        total += v
                        k += 1
                if k == 0:
                    continue
                mid = total / k
                squares = 0.0
                for r in range(lo, lo + n):
                    v = np.float64(block[r, c])
                    if not np.isnan(v):
                        squares += (v - mid) * (v - mid)
                spread = np.sqrt(squares / k)
            if np.isfinite(mid):
                center[s, c] = mid
            if np.isfinite(spread) and spread > 0:
                scale[s, c] = spread


# -- windows and the split ---------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WindowIndex:
    """Which windows of a panel are in a set: series ``s`` owns ids ``offsets[s]:offsets[s + 1]``.

    Window ``i`` of series ``s`` starts at row ``first_rows[s] + (i - offsets[s]) * stride``
    of the panel's arrays.  ``scaler`` is the scaling the gather fuses in
    (``None``: none).
    """

    first_rows: np.ndarray
    offsets: np.ndarray
    stride: int
    scaler: Scaler | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def series_of(self, ids: Any) -> np.ndarray:
        """The series of each window id (int64)."""
        return np.searchsorted(self.offsets, np.asarray(ids, dtype=np.int64), side="right") - 1

    def locate(self, i: int) -> tuple[int, int]:
        """``(series, row)``: window ``i``'s series and the row of ``values`` where its input starts."""
        s = int(self.series_of(i))
        return s, int(self.first_rows[s]) + (int(i) - int(self.offsets[s])) * self.stride


def _offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def windows(panel: Panel, *, stride: int | None = None) -> WindowIndex:
    """Every window of every series (the ``lengths=`` layout), scaled with statistics of all rows."""
    o = panel.options
    stride = o.stride if stride is None else stride
    span = o.window + o.horizon
    counts = np.maximum(0, (panel.lengths - span) // stride + 1)
    scaler = None if o.scale is None else Scaler.fit(panel, o.scale)
    return WindowIndex(panel.row_starts, _offsets(counts), stride, scaler)


def cutoff_rows(panel: Panel, *, at: Any = None, last: int | None = None) -> np.ndarray:
    """``(n_series,)``: how many leading rows of each series come before the cutoff (the training part)."""
    if (at is None) == (last is None):
        raise TypeError(f"split takes exactly one of at= (a time) or last= (a number of steps), got at={_show(at)}, "
                        f"last={_show(last)}")
    if last is not None:
        if isinstance(last, bool) or not isinstance(last, (int, np.integer)) or last < 1:
            raise ValueError(f"last must be an integer >= 1 (the last steps of each series), got last={_show(last)}")
        return np.maximum(panel.lengths - int(last), 0)
    ticks = panel.time.ticks(at)
    # Steps at or after the cutoff: k with start + k * step >= at.
    k = -((panel.time.start - ticks) // panel.time.step)
    return np.clip(k, 0, panel.lengths)


def split(panel: Panel, *, at: Any = None, last: int | None = None) -> tuple[WindowIndex, WindowIndex]:
    """Training and validation windows, split by time.

    Parameters
    ----------
    at:
        A time of the time column (an integer, or a timestamp: anything
        ``pandas.Timestamp`` takes): the steps at or after it are the
        validation part of each series.
    last:
        Instead of ``at``: the last ``last`` steps of each series are the
        validation part.

    Returns
    -------
    ``(train, valid)``.  A training window lies wholly before the cutoff, its
    target included (the usual grid: starts ``0, stride, 2 * stride, ...``).
    A validation window's target starts at or after the cutoff, its input may
    reach back into the training part: the first one's target starts exactly
    at the cutoff (or as soon after it as there are ``window`` steps of
    input), then every ``stride`` steps.  Both share one :class:`Scaler`,
    fitted on the training part only.

    Raises
    ------
    ValueError
        When either side has no window.
    """
    o = panel.options
    cut = cutoff_rows(panel, at=at, last=last)
    T, H, stride = o.window, o.horizon, o.stride
    train_counts = np.maximum(0, (cut - T - H) // stride + 1)
    # The first validation target starts at the cutoff, or at step T if the inputs need it.
    first_target = np.maximum(cut, T)
    valid_counts = np.where(first_target + H <= panel.lengths,
                            (panel.lengths - H - first_target) // stride + 1, 0)
    where = f"at={at!r}" if at is not None else f"last={last}"
    for name, counts in (("training", train_counts), ("validation", valid_counts)):
        if counts.sum() == 0:
            raise ValueError(
                f"split({where}) leaves no {name} window: window={T} and horizon={H} need {T + H} steps "
                f"{'before' if name == 'training' else 'around'} the cutoff; the series have "
                f"{int(cut.max())} steps before it at most and {int((panel.lengths - cut).max())} from it on"
            )
    scaler = None if o.scale is None else Scaler.fit(panel, o.scale, cut)
    starts = panel.row_starts
    train = WindowIndex(starts, _offsets(train_counts), stride, scaler)
    valid = WindowIndex(starts + first_target - T, _offsets(valid_counts), stride, scaler)
    return train, valid


# -- the gather ----------------------------------------------------------------------


class PanelArrays(NamedTuple):
    """One batch of panel windows as numpy arrays (the loader makes tensors of them)."""

    past: np.ndarray    # (n, T, n_targets + n_past)
    future: np.ndarray  # (n, T + H, n_future)
    static: np.ndarray  # (n, n_static)
    target: np.ndarray  # (n, H, n_targets)
    series: np.ndarray  # (n,) int64


@parallel_kernel
def gather_panel_runs(values, n_values, future, n_future, static, first_rows, offsets, ids, stride, window, horizon,
                      n_targets, out_past, out_future, out_static, out_target, out_series,
                      center=None, scale=None, future_center=None, future_scale=None):
    """:func:`gather_panel_kernel` for C-contiguous (row-major) ``values`` and ``future``, as runs of elements.

    ``values`` and ``future`` are the flat (1-D) arrays of ``n_values`` and
    ``n_future`` columns, so window ``b``, starting at row ``r``, has its input
    in the ``window * n_values`` elements from ``r * n_values`` and its future
    in the ``(window + horizon) * n_future`` elements from ``r * n_future``:
    one unit-stride copy each, which LLVM turns into wide loads and stores
    (measured: 3.0 M against 1.2 M windows/s for the element loops over the
    columns of column-major arrays, 2 threads, the table benchmark's shapes).
    The outputs are those of :class:`PanelArrays` with the window's dimensions
    flattened: ``out_past`` ``(n, window * n_values)``, ``out_future``
    ``(n, (window + horizon) * n_future)``, ``out_target`` ``(n, horizon * n_targets)``.
    Scaling as in :func:`gather_panel_kernel`, the column cycling along the run.
    Reference: ``tests/reference_frames.py::reference_gather_panel``.
    """
    run_past = window * n_values
    run_future = (window + horizon) * n_future
    n_static = static.shape[1]
    for b in prange(ids.shape[0]):
        s, r = _locate(ids[b], offsets, first_rows, stride)
        out_series[b] = s
        p = r * n_values
        q = r * n_future
        if center is None:
            # Slice assignment compiles to one copy loop that LLVM vectorises
            # (as in kernels.gather_runs).
            out_past[b, :] = values[p : p + run_past]
            out_future[b, :] = future[q : q + run_future]
            if n_targets == n_values:
                out_target[b, :] = values[p + run_past : p + run_past + horizon * n_values]
            else:
                for h in range(horizon):
                    at = p + run_past + h * n_values
                    out_target[b, h * n_targets : (h + 1) * n_targets] = values[at : at + n_targets]
        else:
            _scale_run(values, p, window, n_values, n_values, out_past, b, s, center, scale)
            _scale_run(values, p + run_past, horizon, n_values, n_targets, out_target, b, s, center, scale)
            _scale_run(future, q, window + horizon, n_future, n_future, out_future, b, s, future_center,
                       future_scale)
        for c in range(n_static):
            out_static[b, c] = static[s, c]


@jit()
def _locate(i, offsets, first_rows, stride):
    """``(series, row)``: window ``i``'s series and the row where its input starts."""
    s = np.searchsorted(offsets, np.int64(i), side="right") - 1
    return s, first_rows[s] + (np.int64(i) - offsets[s]) * stride


@jit()
def _scale_run(flat, at, n_rows, width, n_cols, out, b, s, center, scale):
    """``out[b]`` (flat) <- the first ``n_cols`` of ``n_rows`` rows of ``width`` values from ``flat[at]``, scaled."""
    for t in range(n_rows):
        row = at + t * width
        for c in range(n_cols):
            out[b, t * n_cols + c] = (np.float64(flat[row + c]) - center[s, c]) / scale[s, c]


@parallel_kernel
def gather_panel_kernel(values, future, static, first_rows, offsets, ids, stride, window, horizon, n_targets,
                        out_past, out_future, out_static, out_target, out_series,
                        center=None, scale=None, future_center=None, future_scale=None):
    """Write windows ``ids`` of a panel into the five outputs, casting (and scaling) on the way.

    ``values`` ``(N, n_targets + n_past)``, ``future`` ``(N, n_future)`` and
    ``static`` ``(n_series, n_static)`` are read with any strides; the outputs
    are those of :class:`PanelArrays`.  Window ``ids[b]`` of series ``s``
    starts at row ``r = first_rows[s] + (ids[b] - offsets[s]) * stride``; see
    the module docstring for what each output receives.  With ``center``
    etc. (float64, indexed ``[s, column]``), every value of ``values`` and
    ``future`` becomes ``(float64(v) - center[s, c]) / scale[s, c]`` before
    the cast; Numba compiles the unscaled case separately, branch removed.
    Panels built from tables are row-major and take :func:`gather_panel_runs`;
    this one serves any other layout.
    Reference: ``tests/reference_frames.py::reference_gather_panel``.
    """
    n_values = values.shape[1]
    n_future = future.shape[1]
    n_static = static.shape[1]
    for b in prange(ids.shape[0]):
        s, r = _locate(ids[b], offsets, first_rows, stride)
        out_series[b] = s
        _copy_rows(values, r, window, n_values, out_past, b, s, center, scale)
        _copy_rows(values, r + window, horizon, n_targets, out_target, b, s, center, scale)
        _copy_rows(future, r, window + horizon, n_future, out_future, b, s, future_center, future_scale)
        for c in range(n_static):
            out_static[b, c] = static[s, c]


@jit()
def _copy_rows(src, r, n_rows, n_cols, out, b, s, center, scale):
    """``out[b] <- src[r : r + n_rows, :n_cols]``, cast, scaled with series ``s``'s statistics when given."""
    for t in range(n_rows):
        for c in range(n_cols):
            if center is None:
                out[b, t, c] = src[r + t, c]
            else:
                out[b, t, c] = (np.float64(src[r + t, c]) - center[s, c]) / scale[s, c]


def empty_arrays(panel: Panel, n: int, dtype: Any = None) -> PanelArrays:
    """Uninitialised outputs for ``n`` windows of ``panel`` in the batch dtype."""
    o = panel.options
    dtype = o.dtype if dtype is None else np.dtype(dtype)
    return PanelArrays(
        np.empty((n, o.window, panel.values.shape[1]), dtype),
        np.empty((n, o.window + o.horizon, panel.future.shape[1]), dtype),
        np.empty((n, panel.static.shape[1]), dtype),
        np.empty((n, o.horizon, panel.n_targets), dtype),
        np.empty(n, np.int64),
    )


def _kernel_view(a: np.ndarray) -> np.ndarray:
    """Numba reads no bool arithmetic we need, so booleans travel as their bytes."""
    return a.view(np.uint8) if a.dtype == np.bool_ else a


def gather(panel: Panel, index: WindowIndex, ids: Any, *, out: PanelArrays | None = None,
           check: bool = True) -> PanelArrays:
    """Gather windows ``ids`` of ``index`` from ``panel`` in one pass of :func:`gather_panel_kernel`.

    Parameters
    ----------
    panel, index:
        The panel and the window set (:func:`windows` or :func:`split`);
        ``index.scaler`` is fused into the gather when set.
    ids:
        Window ids in ``[0, len(index))``.
    out:
        Outputs to write into (see :func:`empty_arrays`; C-contiguous, one
        float dtype); new arrays of the panel's batch dtype otherwise.
    check:
        Check ids and outputs (the kernel does no bounds checks); the loader,
        whose ids are valid by construction, passes ``False``.
    """
    ids = np.ascontiguousarray(ids)
    n = ids.shape[0]
    if check:
        if ids.ndim != 1 or (n and ids.dtype.kind not in "iu"):
            raise TypeError(f"ids must be a 1-D array of window indices, got {_show(ids)}")
        if n and (int(ids.min()) < 0 or int(ids.max()) >= len(index)):
            bad = int(ids[(ids < 0) | (ids >= len(index))][0])
            raise IndexError(f"ids must be window indices in [0, {len(index)}), got {bad}")
    if out is None:
        out = empty_arrays(panel, n)
    elif check:
        _check_out(panel, out, n)
    if n == 0:
        return out
    sc = index.scaler
    # Passed explicitly, even as None: Numba then compiles the unscaled case with the branch removed.
    stats = (None,) * 4 if sc is None else (sc.center, sc.scale, sc.future_center, sc.future_scale)
    o = panel.options
    values, future, static = (_kernel_view(a) for a in (panel.values, panel.future, panel.static))
    geometry = (index.first_rows, index.offsets, ids, index.stride, o.window, o.horizon, panel.n_targets)
    if runs(panel):
        flat = tuple(a.reshape(n, -1) for a in (out.past, out.future))
        run_parallel(gather_panel_runs, values.reshape(-1), values.shape[1], future.reshape(-1), future.shape[1],
                     static, *geometry, *flat, out.static, out.target.reshape(n, -1), out.series, *stats)
    else:
        run_parallel(gather_panel_kernel, values, future, static, *geometry, *out, *stats)
    return out


def runs(panel: Panel) -> bool:
    """Whether ``panel``'s windows are contiguous runs (:func:`gather_panel_runs`): row-major ``values``, ``future``."""
    return panel.values.flags.c_contiguous and panel.future.flags.c_contiguous


def _check_out(panel: Panel, out: PanelArrays, n: int) -> None:
    expected = empty_arrays(panel, 0)
    for name, got, want in zip(PanelArrays._fields, out, expected):
        shape = (n, *want.shape[1:])
        if not isinstance(got, np.ndarray) or got.shape != shape or not got.flags.c_contiguous \
                or not got.flags.writeable:
            raise ValueError(f"out.{name} must be a writeable C-contiguous array of shape {shape}, got {_show(got)}")
    if out.series.dtype != np.int64:
        raise ValueError(f"out.series must be int64, got {out.series.dtype}")
    dtypes = {a.dtype for a in out[:4]}
    if len(dtypes) != 1 or next(iter(dtypes)).kind != "f" or next(iter(dtypes)).itemsize < 4:
        raise ValueError(f"out.past, future, static and target must share one float32/float64 dtype, got {dtypes}")
