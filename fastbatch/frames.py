"""Long-format tables (pandas, polars, pyarrow; Parquet and Arrow IPC files) to a :class:`~fastbatch.panel.Panel`.

One row per (series, time step), as pytorch-forecasting and neuralforecast
take them: ``id`` (``group_ids`` / ``unique_id``), ``time`` (``time_idx`` /
``ds``), ``target`` (``y``), ``past`` (``time_varying_unknown_reals`` /
``hist_exog_list``), ``future`` (``time_varying_known_reals`` /
``futr_exog_list``), ``static`` (``static_reals``/categorical codes /
``stat_exog_list``).

The table becomes contiguous arrays once: the id column is factorised (ids
sorted), the rows are sorted by (id, time) only when an O(N) check finds them
out of order, every check runs before anything is built, and numeric Arrow
columns without nulls are read in place.  pandas, polars and pyarrow are
imported only when such an input is given.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from fastbatch._checks import _show, check_int
from fastbatch._jit import jit
from fastbatch.panel import Panel, PanelOptions, PanelTime

FILLS = ("raise", "ffill", "nan")
_INT64_MAX = np.iinfo(np.int64).max
_KEY_LIMIT = 2**62  # several id columns share one int64 key below this many combinations


# -- options ---------------------------------------------------------------------


def _names(value: Any, what: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    if value is None:
        value = ()
    elif isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} must be a column name or a list of them, got {_show(value)}")
    if not value and not allow_empty:
        raise ValueError(f"{what} must name at least one column, got {_show(value)}")
    return tuple(value)


def make_options(*, id: Any, time: str, target: Any, past: Any = (), future: Any = (), static: Any = (),
                 window: int, horizon: int = 1, stride: int = 1, fill: str = "raise", scale: str | None = None,
                 dtype: Any = "float32", step: Any = None) -> PanelOptions:
    """Check and normalise :func:`from_frame`'s options (raises before any data is read)."""
    from fastbatch.panel import SCALES

    if not isinstance(time, str):
        raise TypeError(f"time must be a column name, got {_show(time)}")
    ids = None if id is None else _names(id, "id", allow_empty=False)
    groups = {"target": _names(target, "target", allow_empty=False), "past": _names(past, "past"),
              "future": _names(future, "future"), "static": _names(static, "static")}
    seen: dict[str, str] = {c: "id" for c in ids or ()}
    seen[time] = "time" if time not in seen else seen[time]
    for role, cols in groups.items():
        for c in cols:
            if c in seen:
                raise ValueError(f"column {c!r} is given as both {seen[c]} and {role}; each column has one role")
            seen[c] = role
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got fill={fill!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be None, 'standard' or 'robust', got scale={scale!r}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a numpy float dtype such as 'float32', got {_show(dtype)}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64 for panels, got dtype={dt}")
    return PanelOptions(
        id=None if ids is None else (ids[0] if len(ids) == 1 else ids), time=time, **groups,
        window=check_int("window", window, minimum=1), horizon=check_int("horizon", horizon, minimum=0),
        stride=check_int("stride", stride, minimum=1), fill=fill, scale=scale, dtype=dt, step=step)


# -- tables ----------------------------------------------------------------------


class _Columns:
    """What the builder needs from a table, whatever its library."""

    names: list[str]
    n_rows: int

    def numeric(self, name: str, role: str) -> np.ndarray:
        """A 1-D numeric column (bool, int or float); nulls as NaN (ints with nulls become float64)."""
        raise NotImplementedError

    def time(self, name: str) -> tuple[np.ndarray, str | None, str | None]:
        """``(int64 ticks, unit or None, time zone or None)``."""
        raise NotImplementedError

    def codes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, uniques)``: int64 codes into the sorted unique ids (-1 for a null)."""
        raise NotImplementedError

    def example(self, name: str) -> tuple[int, Any]:
        """A value of a non-numeric column to show in the error: ``(row, value)``."""
        raise NotImplementedError


class _NotNumeric(TypeError):
    """Raised by a column reader; :func:`build` adds the series and the value to the message."""


def _example(values: Any) -> tuple[int, Any]:
    """The first value that is not a number (row, value), looking at the first rows only; else row 0."""
    import numbers

    for row, v in enumerate(values[:100_000]):
        if isinstance(v, bool) or not isinstance(v, numbers.Number):
            return row, v
    return 0, values[0]


def _datetime_ticks(array: np.ndarray, name: str) -> tuple[np.ndarray, str | None]:
    if array.dtype.kind == "M":
        unit = np.datetime_data(array.dtype)[0]
        ticks = array.view(np.int64)
        if (ticks == np.iinfo(np.int64).min).any():  # NaT
            raise ValueError(f"time column {name!r} holds a null (NaT) at row {int(np.argmax(ticks == ticks.min()))}")
        if unit not in ("Y", "M") and ticks.size:
            # Calendar months are 28 to 31 days apart: time stamps that are
            # all month starts (monthly, quarterly, yearly data) are counted
            # in months, where their steps are regular.
            months = array.astype("datetime64[M]")
            if np.array_equal(months.astype(array.dtype), array):
                return months.view(np.int64), "M"
        return ticks, unit
    if array.dtype.kind in "iu":
        return array.astype(np.int64, copy=False), None
    raise TypeError(f"time column {name!r} must hold integers or timestamps, got dtype {array.dtype}")


class _PandasColumns(_Columns):
    def __init__(self, frame) -> None:
        self.frame = frame
        self.names = [str(c) for c in frame.columns]
        self.n_rows = len(frame)

    def numeric(self, name: str, role: str) -> np.ndarray:
        import pandas as pd

        s = self.frame[name]
        dt = s.dtype
        if isinstance(dt, pd.CategoricalDtype) and role == "static":
            codes = s.cat.codes.to_numpy()
            return np.where(codes < 0, np.nan, codes) if (codes < 0).any() else codes
        if isinstance(dt, np.dtype):
            if dt.kind not in "biuf":
                raise _NotNumeric(f"dtype {dt}")
            return s.to_numpy()
        numpy_dtype = getattr(dt, "numpy_dtype", None)
        if numpy_dtype is None or numpy_dtype.kind not in "biuf":
            raise _NotNumeric(f"dtype {dt}")
        if s.hasnans:
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
        return s.to_numpy(dtype=numpy_dtype)

    def example(self, name: str) -> tuple[int, Any]:
        return _example(self.frame[name].to_numpy())

    def time(self, name: str):
        import pandas as pd

        s = self.frame[name]
        tz = None
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            tz = str(s.dtype.tz)
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        elif not isinstance(s.dtype, np.dtype):
            if s.hasnans:
                raise ValueError(f"time column {name!r} holds a null at row {int(np.argmax(s.isna().to_numpy()))}")
            numpy_dtype = getattr(s.dtype, "numpy_dtype", None)
            if numpy_dtype is None:
                raise TypeError(f"time column {name!r} must hold integers or timestamps, got dtype {s.dtype}")
            s = s.astype(numpy_dtype)
        ticks, unit = _datetime_ticks(s.to_numpy(), name)
        return ticks, unit, tz

    def codes(self, name: str):
        import pandas as pd

        s = self.frame[name]
        try:
            codes, uniques = pd.factorize(s, sort=True)
        except TypeError:  # ids of kinds that do not compare: first-appearance order
            codes, uniques = pd.factorize(s, sort=False)
        return codes.astype(np.int64, copy=False), _id_array(uniques)


class _ArrowColumns(_Columns):
    def __init__(self, table) -> None:
        self.table = table
        self.names = list(table.column_names)
        self.n_rows = table.num_rows

    def _column(self, name: str):
        return self.table.column(name)

    def numeric(self, name: str, role: str) -> np.ndarray:
        import pyarrow as pa

        col = self._column(name)
        t = col.type
        if pa.types.is_dictionary(t) and role == "static":
            # Categories: their codes, made consistent across chunks first (each may have its own dictionary).
            col = pa.table({name: col}).unify_dictionaries().column(0)
            col = pa.chunked_array([c.indices for c in col.chunks], type=t.index_type)
            return _arrow_numpy(col.cast(pa.float64()) if col.null_count else col)
        if pa.types.is_boolean(t):
            col = col.cast(pa.uint8())
        elif not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise _NotNumeric(f"Arrow type {t}")
        if pa.types.is_float16(col.type):
            col = col.cast(pa.float32())  # Numba reads no float16
        return _arrow_numpy(col)

    def example(self, name: str) -> tuple[int, Any]:
        return 0, self._column(name).slice(0, 1).to_pylist()[0]

    def time(self, name: str):
        import pyarrow as pa

        col = self._column(name)
        if col.null_count:
            raise ValueError(f"time column {name!r} holds {col.null_count} nulls")
        tz = getattr(col.type, "tz", None)
        if pa.types.is_date(col.type):
            col = col.cast(pa.timestamp("s"))
        if not (pa.types.is_timestamp(col.type) or pa.types.is_integer(col.type)):
            raise TypeError(f"time column {name!r} must hold integers or timestamps, got Arrow type {col.type}")
        ticks, unit = _datetime_ticks(_arrow_numpy(col), name)
        return ticks, unit, tz

    def codes(self, name: str):
        import pyarrow as pa
        import pyarrow.compute as pc

        col = self._column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        uniques = pc.unique(col).drop_null()
        uniques = uniques.take(pc.sort_indices(uniques))
        codes = pc.index_in(col, value_set=uniques)
        codes = codes.fill_null(-1) if codes.null_count else codes
        return _arrow_numpy(codes).astype(np.int64), _id_array(uniques.to_pylist())


def _arrow_numpy(col) -> np.ndarray:
    """A ChunkedArray as numpy: in place for one chunk of numbers without nulls, else one copy."""
    if col.num_chunks == 1 and col.null_count == 0:
        try:
            return col.chunk(0).to_numpy(zero_copy_only=True)
        except Exception:  # noqa: BLE001 - a layout that cannot be shared: copy below
            pass
    if col.num_chunks == 0:
        return np.empty(0, dtype=col.type.to_pandas_dtype())
    return col.to_numpy()


def _id_array(uniques: Any) -> np.ndarray:
    """Unique ids as a 1-D array; tuples and strings kept as Python objects."""
    values = list(uniques) if not isinstance(uniques, np.ndarray) else uniques
    if isinstance(values, np.ndarray) and values.dtype.kind in "iufbM":
        return values
    out = np.empty(len(values), dtype=object)
    for k, v in enumerate(values):  # a slice assignment would unpack tuples into a 2-D array
        out[k] = tuple(_plain(x) for x in v) if isinstance(v, tuple) else v
    if out.size and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in out):
        return out.astype(np.int64)
    return out


def columns_of(frame: Any) -> _Columns:
    """The right column reader for a pandas or polars DataFrame or a pyarrow Table."""
    module = type(frame).__module__.split(".")[0]
    if module == "pandas":
        return _PandasColumns(frame)
    if module == "polars":
        return _ArrowColumns(frame.to_arrow())  # zero-copy for numeric columns
    if module == "pyarrow":
        import pyarrow as pa

        if isinstance(frame, pa.RecordBatch):
            frame = pa.Table.from_batches([frame])
        if isinstance(frame, pa.Table):
            return _ArrowColumns(frame)
    raise TypeError(f"frame must be a pandas or polars DataFrame or a pyarrow Table, got {type(frame).__name__}")


# -- the build -------------------------------------------------------------------


def from_frame(frame: Any, *, id: Any, time: str, target: Any, past: Any = (), future: Any = (),
               static: Any = (), window: int, horizon: int = 1, stride: int = 1, fill: str = "raise",
               scale: str | None = None, dtype: Any = "float32", step: Any = None) -> Panel:
    """A long-format table as a :class:`~fastbatch.panel.Panel`.

    Parameters
    ----------
    frame:
        A pandas or polars DataFrame or a pyarrow Table, one row per (series, time step), in any order.
    id:
        The series id column (any hashable values), a list of columns (ids are
        then tuples), or ``None`` for one series.  Series come in the order of
        their sorted ids (first appearance for ids that do not compare).
    time:
        The time column: integers, or timestamps (pandas datetime64, with or
        without a time zone, Arrow timestamp or date), regular within each series.
    target, past, future, static:
        Column names (a name or a list).  ``past``: observed covariates, known
        up to the forecast start; ``future``: known over the window and the
        horizon; ``static``: constant per series (numbers, or categories as
        integer codes: pandas ``category`` and Arrow dictionary columns give
        their codes).
    window, horizon, stride:
        ``T``, ``H`` and the steps between window starts.  Series shorter than
        ``T + H`` are left out and counted in ``Panel.skipped``.
    fill:
        ``"raise"`` (default): a missing step or a null/NaN in target or
        covariates is an error.  ``"ffill"``: missing steps are inserted and
        they, and nulls, take the last value of their series (a null in a
        series' first row stays an error).  ``"nan"``: missing steps are
        inserted as NaN and nulls become NaN.
    scale:
        ``None``, ``"standard"`` or ``"robust"``: recorded in the options; the
        statistics are fitted by :func:`fastbatch.panel.windows` / ``split``.
    dtype:
        The batch dtype, float32 or float64; values are kept in the source's
        dtype and cast by the gather.  Columns that cannot be cast to it
        (``same_kind``) are refused.
    step:
        The step between time stamps of every series (an integer, or a
        timedelta such as ``"1h"``/``np.timedelta64(1, "h")``).  By default each
        series' step is its smallest difference between consecutive times.

    Raises
    ------
    ValueError, TypeError
        Before anything is built: naming the column, the series and the value.
    """
    options = make_options(id=id, time=time, target=target, past=past, future=future, static=static,
                           window=window, horizon=horizon, stride=stride, fill=fill, scale=scale, dtype=dtype,
                           step=step)
    return build(columns_of(frame), options)


def build(table: _Columns, o: PanelOptions) -> Panel:
    """The checks and the build of :func:`from_frame`, on a column reader."""
    wanted = [*(() if o.id is None else _names(o.id, "id")), o.time, *o.target, *o.past, *o.future, *o.static]
    missing = [c for c in wanted if c not in table.names]
    if missing:
        raise ValueError(f"columns {missing} are missing from the table; it has {table.names}")
    if table.n_rows == 0:
        raise ValueError("the table has no rows")
    ticks, unit, tz = table.time(o.time)
    codes, series_ids = _series_codes(table, o.id)
    blocks = {role: [_numeric(table, c, role, o, codes, series_ids) for c in getattr(o, role)]
              for role in ("target", "past", "future", "static")}
    axis = PanelTime(np.empty(0, np.int64), np.empty(0, np.int64), unit, tz)
    layout = _Layout(codes, ticks, series_ids, axis, o)
    values_cols = blocks["target"] + blocks["past"]
    names = o.target + o.past + o.future
    for name, col in zip(names, values_cols + blocks["future"]):
        layout.check_nulls(name, col)
    static = layout.static_rows(o.static, blocks["static"])
    # Every check is done: the per-row series codes (8 bytes a row) go
    # before the arrays are made, so the two are never held together.
    del codes, ticks
    layout.checked()
    values = layout.gather(values_cols)
    future = layout.gather(blocks["future"])
    time = PanelTime(layout.start, layout.step, unit, tz)
    return Panel(values, future, static, layout.lengths, series_ids[layout.keep], time, o, layout.skipped)


def _numeric(table: _Columns, name: str, role: str, o: PanelOptions, codes: np.ndarray,
             series_ids: np.ndarray) -> np.ndarray:
    """A value column as numbers castable to the batch dtype, or a TypeError naming column, series and value."""
    try:
        col = table.numeric(name, role)
    except _NotNumeric as error:
        row, value = table.example(name)
        hint = ("encode it as integer codes first (e.g. pandas .cat.codes)" if role == "static" else
                "categories must be given as static integer codes, or encoded as numbers first")
        raise TypeError(
            f"column {name!r} ({role}) must be numeric (bool, int or float) to be cast to {o.dtype}, got {error}: "
            f"series {_plain(series_ids[codes[row]])!r} holds {_plain(value)!r} (row {row}); {hint}") from None
    if not np.can_cast(col.dtype, o.dtype, "same_kind"):  # pragma: no cover - every numeric kind casts to float
        raise TypeError(f"column {name!r} ({role}) has dtype {col.dtype}, which cannot be cast to {o.dtype}")
    return col


def _series_codes(table: _Columns, id: Any) -> tuple[np.ndarray, np.ndarray]:
    """Int64 codes of each row's series, in sorted-id order, and the ids."""
    if id is None:
        return np.zeros(table.n_rows, np.int64), _id_array([None])
    names = _names(id, "id")
    parts = []
    for name in names:
        codes, uniques = table.codes(name)
        if codes.size and codes.min() < 0:
            row = int(np.argmax(codes < 0))
            raise ValueError(f"id column {name!r} holds a null at row {row}; every row needs a series id")
        parts.append((codes, uniques))
    if len(parts) == 1:
        return parts[0]
    # Several id columns: one mixed-radix key, sorted like the tuples.
    sizes = [len(uniques) for _, uniques in parts]
    if math.prod(sizes) >= _KEY_LIMIT:  # the key would overflow: unique rows instead
        unique_rows, codes = np.unique(np.stack([c for c, _ in parts], axis=1), axis=0, return_inverse=True)
        ids = [u[unique_rows[:, k]] for k, (_, u) in enumerate(parts)]
        return codes.reshape(-1).astype(np.int64), _id_array(list(zip(*ids)))
    key = np.zeros(table.n_rows, np.int64)
    for (codes, _), size in zip(parts, sizes):
        key = key * size + codes
    unique_keys, codes = _dense(key)
    ids, rest = [], unique_keys.copy()
    for (_, uniques), size in zip(reversed(parts), reversed(sizes)):
        ids.append(uniques[rest % size])
        rest //= size
    return codes, _id_array(list(zip(*reversed(ids))))


def _dense(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted unique keys, code of each key)``: O(N) when the keys are already sorted."""
    if key.size and np.all(key[1:] >= key[:-1]):
        new = np.empty(key.size, bool)
        new[0] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        return key[new], np.cumsum(new) - 1
    unique, inverse = np.unique(key, return_inverse=True)
    return unique, inverse.astype(np.int64)


class _NoSeriesLeft(ValueError):
    def __init__(self, message: str, n_series: int) -> None:
        super().__init__(message)
        self.n_series = n_series


class _Layout:
    """Where each source row goes: the sort (only if needed), the checks, inserted steps, left-out series."""

    def __init__(self, codes: np.ndarray, ticks: np.ndarray, series_ids: np.ndarray, axis: PanelTime,
                 o: PanelOptions) -> None:
        self.o, self.axis, self.ids = o, axis, series_ids
        self.codes, self.ticks = codes, ticks  # source order, for messages
        # The checks read the rows in (series, time) order through the sort,
        # in kernels: no temporary of the table's length when it is in order.
        self.order = None if rows_in_order(codes, ticks) else _sort_order(codes, ticks)
        n_series = series_ids.shape[0]
        counts = np.zeros(n_series, np.int64)
        smallest = np.full(n_series, _INT64_MAX, np.int64)
        r = scan_series(codes, ticks, self.order, counts, smallest)
        if r >= 0:
            raise ValueError(f"series {self._show_id(self._sorted(codes, r))} has two rows at time "
                             f"{axis.show(self._sorted(ticks, r))} (column {o.time!r}); each (id, time) pair "
                             "must be unique")
        starts = np.zeros(n_series, np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        self._starts = starts
        given = 0 if o.step is None else _step_ticks(o.step, axis)
        self.step = np.full(n_series, given, np.int64) if given else np.where(smallest == _INT64_MAX, 1, smallest)
        found = scan_steps(codes, ticks, self.order, self.step, given > 0)
        self._check_steps(codes, ticks, found)
        self.has_gaps = found[2] >= 0
        first = self._sorted(ticks, starts)
        last = self._sorted(ticks, starts + counts - 1)
        lengths = (last - first) // self.step + 1
        span = o.window + o.horizon
        self.keep = lengths >= span
        if not self.keep.any():
            raise _NoSeriesLeft(
                f"every series is shorter than window + horizon = {span} steps (the longest has "
                f"{int(lengths.max())}); none is left", n_series=int(lengths.shape[0]))
        self.skipped = int((~self.keep).sum())
        self.lengths = lengths[self.keep].astype(np.int64)
        self.source = self._source_rows(codes, ticks, starts, first, lengths)
        self.start, self.step = first[self.keep], self.step[self.keep]

    def _sorted(self, a: np.ndarray, rows: Any) -> Any:
        """``a`` at positions ``rows`` of the (series, time) order."""
        return a[rows] if self.order is None else a[self.order[rows]]

    def _check_steps(self, codes: np.ndarray, ticks: np.ndarray, found: np.ndarray) -> None:
        """Raise for the first row closer than ``step=``, then not regular, then followed by a gap (fill='raise')."""
        o, axis = self.o, self.axis
        close, irregular, gap = (int(r) for r in found)
        if close >= 0:
            r = close
            raise ValueError(f"series {self._show_id(self._sorted(codes, r))}: {axis.show(self._sorted(ticks, r + 1))} "
                             f"follows {axis.show(self._sorted(ticks, r))}, closer than step={o.step!r}")
        if irregular >= 0:
            r = irregular
            a, b = self._sorted(ticks, r), self._sorted(ticks, r + 1)
            code = self._sorted(codes, r)
            raise ValueError(
                f"series {self._show_id(code)} is not regular in column {o.time!r}: {axis.show(b)} follows "
                f"{axis.show(a)}, which is not a whole number of its steps of {int(self.step[code])}")
        if gap >= 0 and o.fill == "raise":
            r = gap
            a, b = self._sorted(ticks, r), self._sorted(ticks, r + 1)
            code = self._sorted(codes, r)
            raise ValueError(
                f"series {self._show_id(code)} has a gap in column {o.time!r}: the step after "
                f"{axis.show(a)}, {axis.show(a + self.step[code])}, is missing (next: "
                f"{axis.show(b)}); pass fill='ffill' or fill='nan' to insert missing steps")

    def _source_rows(self, codes, ticks, starts, first, lengths) -> np.ndarray | None:
        """For each output row, its source row; None for the identity.

        Inserted steps (``self.inserted``) read the row before them for
        fill='ffill' and row 0 for fill='nan' (then overwritten with NaN).
        """
        self.inserted = None
        if self.order is None and not self.has_gaps and self.keep.all():
            return None
        if self.order is not None:
            codes, ticks = codes[self.order], ticks[self.order]
        out_starts = np.zeros(lengths.shape[0], np.int64)
        np.cumsum(np.where(self.keep, lengths, 0)[:-1], out=out_starts[1:])
        keep_row = self.keep[codes]
        if self.has_gaps:
            dest = out_starts[codes] + (ticks - first[codes]) // self.step[codes]
        else:
            dest = out_starts[codes] + (np.arange(codes.shape[0]) - starts[codes])
        sorted_rows = np.full(int(self.lengths.sum()), -1, np.int64)
        sorted_rows[dest[keep_row]] = np.flatnonzero(keep_row)
        self.inserted = sorted_rows < 0 if self.has_gaps else None
        if self.o.fill == "ffill" and self.has_gaps:
            # A series' first row is never inserted, so no value leaks across series.
            np.maximum.accumulate(sorted_rows, out=sorted_rows)
        rows = np.maximum(sorted_rows, 0)
        return rows if self.order is None else self.order[rows]

    def _show_id(self, code: int) -> str:
        return repr(_plain(self.ids[int(code)]))

    # -- per column ------------------------------------------------------------
    def check_nulls(self, name: str, col: np.ndarray) -> None:
        """Refuse NaN (fill='raise'), and a NaN in a series' first row for fill='ffill'."""
        if col.dtype.kind != "f" or self.o.fill == "nan":
            return
        r = first_nan(_kernel_column(col))
        if r < 0:
            return
        if self.o.fill == "raise":
            raise ValueError(f"column {name!r} holds a null/NaN in series {self._show_id(self.codes[r])} at time "
                             f"{self.axis.show(self.ticks[r])}; pass fill='ffill' or fill='nan', or clean it first")
        bad = np.isnan(col[self._first_source_rows()])
        if bad.any():
            s = int(np.argmax(bad))
            raise ValueError(f"column {name!r} holds a null/NaN in the first row of series {self._show_id(s)}: "
                             "fill='ffill' has no earlier value to carry forward")

    def _first_source_rows(self) -> np.ndarray:
        """The source row of each series' first time step (all series, kept or not)."""
        return self._starts if self.order is None else self.order[self._starts]

    def static_rows(self, names: Sequence[str], cols: list[np.ndarray]) -> np.ndarray:
        """``(n_kept_series, n_static)``: each static column's value per series, checked constant."""
        first = self._first_source_rows()
        out = np.empty((int(self.keep.sum()), len(cols)), _common_dtype(cols, False))
        for j, (name, col) in enumerate(zip(names, cols)):
            per_series = col[first]
            kernel_col = _kernel_column(col)
            r = first_nan(kernel_col) if col.dtype.kind == "f" else -1
            if r >= 0:
                raise ValueError(f"static column {name!r} holds a null/NaN in series {self._show_id(self.codes[r])} "
                                 f"at time {self.axis.show(self.ticks[r])}")
            r = first_varying(kernel_col, kernel_col[first], self.codes)
            if r >= 0:
                s = int(self.codes[r])
                raise ValueError(f"static column {name!r} varies within series {self._show_id(s)}: "
                                 f"{_plain(per_series[s])!r} and {_plain(col[r])!r} (at time "
                                 f"{self.axis.show(self.ticks[r])})")
            out[:, j] = per_series[self.keep]
        return out

    def checked(self) -> None:
        """Drop what only the checks and their messages read (the rows' codes, times and sort)."""
        self.codes = self.ticks = self.order = None

    def gather(self, cols: list[np.ndarray]) -> np.ndarray:
        """The columns as one row-major ``(N_out, len(cols))`` array in output row order (a view when it can be).

        Row-major, so that a window's rows are one contiguous run for the
        gather (:func:`fastbatch.panel.gather_panel_runs`).  Filled column by
        column by a kernel that reads each source column once, through the
        sort when there is one: no temporary of the data's size.
        """
        n_out = int(self.lengths.sum())
        nan_rows = self.inserted is not None and self.o.fill == "nan"
        dtype = _common_dtype(cols, nan_rows)
        ffill = self.o.fill == "ffill" and any(c.dtype.kind == "f" and first_nan(_kernel_column(c)) >= 0 for c in cols)
        if self.source is None and len(cols) == 1 and cols[0].dtype == dtype and not ffill \
                and cols[0].flags.c_contiguous:
            return cols[0][:, None]  # the source itself: no copy
        out = np.empty((n_out, len(cols)), dtype)
        for j, col in enumerate(cols):
            fill_column(out, j, _kernel_column(col), self.source)
        if nan_rows:
            out[self.inserted] = np.nan
        if ffill:
            ffill_rows(out)
        return out


def _kernel_column(col: np.ndarray) -> np.ndarray:
    """A column as Numba reads it: booleans as their bytes, float16 (which it cannot read) as float32."""
    if col.dtype == np.bool_:
        return col.view(np.uint8)
    return col.astype(np.float32) if col.dtype == np.float16 else col


@jit()
def fill_column(out, j, col, source):
    """``out[:, j] = col`` (``source`` None) or ``col[source]``, cast to ``out``'s dtype.

    Reference: ``tests/reference_frames.py::reference_fill_column``.
    """
    if source is None:
        for r in range(out.shape[0]):
            out[r, j] = col[r]
    else:
        for r in range(out.shape[0]):
            out[r, j] = col[source[r]]


@jit()
def ffill_rows(out):
    """Carry each column's last value down over NaN, in place (check_nulls made sure no series starts with one).

    Reference: ``tests/reference_frames.py::reference_ffill_rows``.
    """
    for r in range(1, out.shape[0]):
        for j in range(out.shape[1]):
            if np.isnan(out[r, j]):
                out[r, j] = out[r - 1, j]


def _common_dtype(cols: list[np.ndarray], needs_nan: bool) -> np.dtype:
    if not cols:
        return np.dtype(np.float32)
    dtype = np.result_type(*[c.dtype for c in cols])
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    if dtype.kind != "f" and needs_nan:
        dtype = np.dtype(np.float64)
    if dtype == np.float16:
        dtype = np.dtype(np.float32)  # Numba reads no float16
    return dtype


@jit()
def rows_in_order(codes, ticks):
    """Whether the rows are sorted by series, then strictly by time (no duplicate).

    Reference: ``tests/reference_frames.py::reference_rows_in_order``.
    """
    for r in range(codes.shape[0] - 1):
        if codes[r + 1] < codes[r] or (codes[r + 1] == codes[r] and ticks[r + 1] <= ticks[r]):
            return False
    return True


@jit()
def _at(order, r):
    """The source row at position ``r`` of the (series, time) order (``order`` None: the rows are in it)."""
    return r if order is None else order[r]


@jit()
def scan_series(codes, ticks, order, counts, smallest):
    """One pass over the rows in (series, time) order: rows per series and each series' smallest time step.

    Adds to ``counts[s]`` and lowers ``smallest[s]`` (left as it is for a
    series of one row); returns the first position whose next row has the
    same series and time (a duplicate), or -1.
    Reference: ``tests/reference_frames.py::reference_scan_series``.
    """
    n = codes.shape[0]
    duplicate = -1
    for r in range(n):
        c = codes[_at(order, r)]
        counts[c] += 1
        if r + 1 < n and codes[_at(order, r + 1)] == c:
            diff = ticks[_at(order, r + 1)] - ticks[_at(order, r)]
            if diff == 0 and duplicate < 0:
                duplicate = r
            if diff < smallest[c]:
                smallest[c] = diff
    return duplicate


@jit()
def scan_steps(codes, ticks, order, step, given):
    """The first position (-1: none) whose step to the next row of its series is, in order: smaller than a
    ``given`` step; not a whole number of steps; more than one step (a gap).

    Reference: ``tests/reference_frames.py::reference_scan_steps``.
    """
    found = np.full(3, -1, np.int64)
    for r in range(codes.shape[0] - 1):
        c = codes[_at(order, r)]
        if codes[_at(order, r + 1)] != c:
            continue
        diff = ticks[_at(order, r + 1)] - ticks[_at(order, r)]
        if given and diff < step[c] and found[0] < 0:
            found[0] = r
        if diff % step[c] != 0 and found[1] < 0:
            found[1] = r
        if diff != step[c] and found[2] < 0:
            found[2] = r
    return found


@jit()
def first_nan(col):
    """The first index of a NaN in ``col``, or -1."""
    for r in range(col.shape[0]):
        if np.isnan(col[r]):
            return r
    return -1


@jit()
def first_varying(col, per_series, codes):
    """The first row whose value differs from its series' (``per_series[codes[r]]``), or -1."""
    for r in range(col.shape[0]):
        if col[r] != per_series[codes[r]]:
            return r
    return -1


def _sort_order(codes: np.ndarray, ticks: np.ndarray) -> np.ndarray:
    """Rows in (series, time) order: by placement in O(N) when the series are complete, else a sort."""
    n_series = int(codes.max()) + 1
    order = _placement_order(codes, ticks, n_series)
    if order is not None:
        return order
    lo, hi = int(ticks.min()), int(ticks.max())
    if (hi - lo + 1) * n_series < 2**62:
        return np.argsort(codes * (hi - lo + 1) + (ticks - lo), kind="stable")
    return np.lexsort((ticks, codes))


def _placement_order(codes: np.ndarray, ticks: np.ndarray, n_series: int) -> np.ndarray | None:
    """The sorting permutation without a sort, or None when a series is not a complete regular grid.

    A series of ``n`` rows spanning ``lo..hi`` with no gap and no duplicate
    is exactly the times ``lo + k * (hi - lo) / (n - 1)``, so each row's
    place follows from its time.  Anything else (gaps, duplicates, irregular
    steps) falls back to the sort, whose checks then name the problem.
    """
    order = np.empty(codes.shape[0], np.int64)
    return order if _place_rows(codes, ticks, n_series, order) else None


@jit()
def _place_rows(codes, ticks, n_series, order):
    """:func:`_placement_order`'s two passes over the rows; False as soon as a series is not a complete grid."""
    counts = np.zeros(n_series, np.int64)
    lo = np.full(n_series, np.iinfo(np.int64).max, np.int64)
    hi = np.full(n_series, np.iinfo(np.int64).min, np.int64)
    for r in range(codes.shape[0]):
        c = codes[r]
        counts[c] += 1
        lo[c] = min(lo[c], ticks[r])
        hi[c] = max(hi[c], ticks[r])
    starts = np.zeros(n_series, np.int64)
    step = np.ones(n_series, np.int64)
    for c in range(n_series):
        if c > 0:
            starts[c] = starts[c - 1] + counts[c - 1]
        gaps = max(counts[c] - 1, 1)
        if (hi[c] - lo[c]) % gaps != 0:
            return False
        step[c] = max((hi[c] - lo[c]) // gaps, 1)
    filled = np.zeros(codes.shape[0], np.bool_)
    for r in range(codes.shape[0]):
        c = codes[r]
        offset = ticks[r] - lo[c]
        if offset % step[c] != 0 or offset // step[c] >= counts[c]:
            return False
        d = starts[c] + offset // step[c]
        if filled[d]:
            return False
        filled[d] = True
        order[d] = r
    return True


def _step_ticks(step: Any, axis: PanelTime) -> int:
    if axis.unit == "M":
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"the time column holds month starts, counted in months: give step as a number of "
                             f"months (an integer >= 1), got step={step!r}")
        return int(step)
    if axis.unit is None:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"step must be an integer >= 1 for an integer time column, got step={step!r}")
        return int(step)
    try:
        import pandas as pd

        delta = pd.Timedelta(step).to_timedelta64()
    except ImportError:
        delta = np.timedelta64(step)
    ticks = int(delta.astype(f"timedelta64[{axis.unit}]").astype(np.int64))
    if ticks < 1:
        raise ValueError(f"step must be a positive duration of at least one {axis.unit}, got step={step!r}")
    return ticks


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, for messages."""
    return value.item() if isinstance(value, np.generic) else value


# -- files: Parquet and Arrow IPC, with an out-of-core cache ---------------------------

_IPC_SUFFIXES = (".arrow", ".feather", ".ipc")
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
# What the cache key reads of each file: its tail holds the footer metadata of
# both formats (Parquet's FileMetaData, Arrow IPC's footer), which changes with
# any rewrite; size and mtime catch the rest.
_TAIL_BYTES = 64 * 1024
_CACHE_VERSION = 1
# Parquet and IPC files are read whole when their arrays would take less than
# this share of the memory available now; larger ones go through the cache.
_IN_MEMORY_SHARE = 0.25


def from_parquet(path: Any, *, cache: bool | str = "auto", cache_dir: Any = None, batch_rows: int = 250_000,
                 **options: Any) -> Panel:
    """A Parquet file or dataset (or an Arrow IPC/Feather file) as a :class:`~fastbatch.panel.Panel`.

    Parameters
    ----------
    path:
        A ``.parquet`` file, a folder of them (read in sorted path order, all
        sub-folders included), or an Arrow IPC/Feather file (``.arrow``,
        ``.feather``, ``.ipc``), which is memory-mapped (``pyarrow.memory_map``).
    cache:
        ``"auto"`` (default): data whose arrays would take more than a quarter
        of the memory available now is converted once into memory-mapped
        ``.npy`` files and read from them; smaller data is read into memory.
        ``True``/``False``: always/never use the cache.
    cache_dir:
        Where the cache goes; default: a ``.fastbatch-cache`` folder beside
        the data.  Each conversion is a sub-folder named by a SHA-256 of the
        files' names, sizes, modification times and last 64 KiB (the footer
        metadata of both formats) and of the options that shape the arrays
        (id, time, the columns, fill, step, window and horizon); a later call
        with the same files and options maps it again without reading the
        data.  Written to a temporary folder and renamed, so a crash leaves no
        half cache.
    batch_rows:
        Rows read at a time during the conversion (row group by row group):
        memory stays near ``batch_rows`` rows plus the longest series.
    **options:
        Those of :func:`from_frame`.

    Notes
    -----
    The conversion reads the data series by series, so in the files each
    series' rows must be together (sorted by id, or at least grouped; within a
    series any order).  Series keep the order in which they come (ids sorted
    within each block read).  One series without ``id`` is read whole.
    """
    import pyarrow as pa

    o = make_options(**options)
    files, ipc = _data_files(path)
    columns = [*(() if o.id is None else _names(o.id, "id")), o.time, *o.target, *o.past, *o.future, *o.static]
    n_rows = _count_rows(files, ipc)
    if cache == "auto":
        import psutil

        estimate = n_rows * 8 * (len(columns) + 2)
        cache = estimate > _IN_MEMORY_SHARE * psutil.virtual_memory().available
    if not cache:
        table = _read_ipc(files[0]).read_all() if ipc else pa.concat_tables(
            [_parquet(f).read(columns=_present(f, columns, ipc)) for f in files])
        return build(_ArrowColumns(table), o)
    root = Path(files[0]).parent if Path(path).is_file() else Path(path)
    folder = Path(cache_dir) if cache_dir is not None else root / ".fastbatch-cache"
    target = folder / _cache_key(files, root, o)
    if not (target / "meta.json").exists():
        for f in files:  # every column there before any conversion starts
            _present(f, columns, ipc)
        schema = _read_ipc(files[0]).schema if ipc else _parquet(files[0]).schema_arrow
        _convert(_batches(files, ipc, columns, batch_rows), schema, o, target)
        # Arrow's allocator keeps what the conversion's blocks used (about
        # 250 MiB at one million rows a block) unless asked to give it back.
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    return load_cache(target, o)


def _data_files(path: Any) -> tuple[list[Path], bool]:
    p = Path(os.fspath(path))
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in _PARQUET_SUFFIXES and ".fastbatch-cache" not in f.parts)
        if not files:
            raise ValueError(f"path={str(p)!r} is a folder without .parquet files")
        return files, False
    if not p.exists():
        raise FileNotFoundError(f"path={str(p)!r} does not exist")
    return [p], p.suffix in _IPC_SUFFIXES


def _parquet(path: Path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


def _read_ipc(path: Path):
    import pyarrow as pa

    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:  # the streaming format has no footer
        return pa.ipc.open_stream(pa.memory_map(str(path), "r"))


def _count_rows(files: list[Path], ipc: bool) -> int:
    if ipc:
        reader = _read_ipc(files[0])
        if hasattr(reader, "num_record_batches"):  # reads only batch headers: the data stays mapped
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return 0  # the streaming format: unknown without reading it
    return sum(_parquet(f).metadata.num_rows for f in files)


def _present(path: Path, columns: list[str], ipc: bool) -> list[str]:
    """``columns``, after checking the file has them (the message lists what it has)."""
    names = _read_ipc(path).schema.names if ipc else _parquet(path).schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"columns {missing} are missing from {str(path)!r}; it has {names}")
    return columns


def _batches(files: list[Path], ipc: bool, columns: list[str], batch_rows: int) -> Iterator[Any]:
    """Record batches of the needed columns, file by file, row group by row group."""
    for f in files:
        _present(f, columns, ipc)
        if ipc:
            reader = _read_ipc(f)
            if hasattr(reader, "num_record_batches"):  # the file format: batches read from the mapping
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = iter(reader)
            for batch in batches:
                yield batch.select(columns)
        else:
            yield from _parquet(f).iter_batches(batch_size=batch_rows, columns=columns)


def _cache_key(files: list[Path], root: Path, o: PanelOptions) -> str:
    h = hashlib.sha256()
    shape = {k: getattr(o, k) for k in ("id", "time", "target", "past", "future", "static", "fill", "window",
                                        "horizon")}
    shape["step"] = None if o.step is None else str(o.step)
    h.update(json.dumps([_CACHE_VERSION, shape], sort_keys=True, default=str).encode())
    for f in files:
        stat = f.stat()
        name = f.relative_to(root) if f.is_relative_to(root) else f.name
        h.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        with open(f, "rb") as fh:
            fh.seek(max(0, stat.st_size - _TAIL_BYTES))
            h.update(fh.read())
    return h.hexdigest()[:32]


def _series_blocks(batches: Iterator[Any], id: Any) -> Iterator[Any]:
    """Tables of whole series: each batch up to its last series boundary; the rest waits for the next."""
    import pyarrow as pa
    import pyarrow.compute as pc

    carry, seen = None, set()
    names = () if id is None else _names(id, "id")
    for batch in batches:
        table = pa.Table.from_batches([batch])
        if carry is not None:
            table = pa.concat_tables([carry, table])
        if table.num_rows == 0:
            continue
        last = table.num_rows - 1
        same = np.ones(table.num_rows, bool)
        for name in names:
            col = table.column(name)
            same &= pc.fill_null(pc.equal(col, col[last]), False).to_numpy(zero_copy_only=False)
        cut = 0 if same.all() else int(np.flatnonzero(~same).max()) + 1
        if cut == 0:
            carry = table
            continue
        if names and same[:cut].any():
            # The series carried over also has rows before the cut: its rows are not together.
            raise ValueError(_SCATTERED.format(_block_id(table, names, last)))
        carry = table.slice(cut)
        yield _check_new_series(table.slice(0, cut), names, seen)
    if carry is not None and carry.num_rows:
        yield _check_new_series(carry, names, seen)


_SCATTERED = ("series {!r} appears in two separate places of the data: the out-of-core conversion reads series "
              "by series, so sort the data by id (and time) or pass cache=False to read it into memory")


def _block_id(table: Any, names: Sequence[str], row: int) -> Any:
    values = tuple(table.column(n)[row].as_py() for n in names)
    return values if len(values) > 1 else values[0]


def _check_new_series(block: Any, names: Sequence[str], seen: set) -> Any:
    """``block``, after checking none of its series came in an earlier block (the data is grouped by id)."""
    if not names:
        return block
    keys = block.group_by(list(names)).aggregate([]).to_pylist()
    ids = [tuple(k[n] for n in names) if len(names) > 1 else k[names[0]] for k in keys]
    again = [i for i in ids if i in seen]
    if again:
        raise ValueError(_SCATTERED.format(again[0]))
    seen.update(ids)
    return block


class _NpyAppender:
    """A ``.npy`` file written block by block: the header, sized for any shape, is rewritten at the end."""

    _HEADER = 256

    def __init__(self, path: Path, dtype: np.dtype, width: int) -> None:
        self.path, self.dtype, self.width, self.rows = path, dtype, width, 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * self._HEADER)

    def append(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        import struct

        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, self.width)}
        text = repr(header).ljust(self._HEADER - 10 - 1) + "\n"
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1"))
        self.file.close()


def _schema_dtype(schema: Any, names: Sequence[str], needs_nan: bool) -> np.dtype:
    """The dtype every block of these columns is stored in, decided from the schema before any block is read.

    Blocks of one file can differ (ints with nulls come as float64, NaN
    inserted for fill='nan'), so the file's dtype is the widest they can take.
    """
    import pyarrow as pa

    dtypes = []
    for name in names:
        t = schema.field(name).type
        t = t.index_type if pa.types.is_dictionary(t) else t
        if pa.types.is_boolean(t):
            dtypes.append(np.dtype(np.uint8))
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            dtypes.append(np.dtype(t.to_pandas_dtype()))
        else:  # build() refuses it with a message naming the column, series and value
            dtypes.append(np.dtype(np.float64))
    return _common_dtype([np.empty(0, d) for d in dtypes], needs_nan)


def _convert(batches: Iterator[Any], schema: Any, o: PanelOptions, target: Path) -> None:
    """Write the panel of ``batches`` into ``target`` (via a temporary folder), block of series by block."""
    import shutil
    import uuid

    temp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    temp.mkdir(parents=True)
    try:
        nan = o.fill != "raise"
        files = {name: _NpyAppender(temp / f"{name}.npy", _schema_dtype(schema, cols, nan and name != "static"),
                                    len(cols))
                 for name, cols in (("values", o.target + o.past), ("future", o.future), ("static", o.static))}
        lengths, starts, steps, ids = [], [], [], []
        skipped, unit, tz = 0, None, None
        for block in _series_blocks(batches, o.id):
            try:
                part = build(_ArrowColumns(block), o)
            except _NoSeriesLeft as error:
                skipped += error.n_series
                continue
            for name in files:
                files[name].append(getattr(part, name))
            lengths.append(part.lengths)
            starts.append(part.time.start)
            steps.append(part.time.step)
            ids.extend(part.series_ids.tolist())
            skipped += part.skipped
            unit, tz = part.time.unit, part.time.tz
        for f in files.values():
            f.close()
        if not lengths:
            raise ValueError(f"every series is shorter than window + horizon = {o.window + o.horizon} steps; "
                             "none is left")
        np.save(temp / "lengths.npy", np.concatenate(lengths))
        np.save(temp / "start.npy", np.concatenate(starts))
        np.save(temp / "step.npy", np.concatenate(steps))
        with open(temp / "ids.pkl", "wb") as fh:
            pickle.dump(_id_array(ids), fh)
        (temp / "meta.json").write_text(json.dumps({"version": _CACHE_VERSION, "unit": unit, "tz": tz,
                                                    "skipped": skipped}))
        try:
            os.rename(temp, target)
        except OSError:  # another process finished the same conversion first: use theirs
            shutil.rmtree(temp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def load_cache(folder: Any, o: PanelOptions) -> Panel:
    """The panel converted into ``folder`` by :func:`from_parquet`, its arrays memory-mapped."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    with open(folder / "ids.pkl", "rb") as fh:
        ids = pickle.load(fh)  # written by _convert above, never user input

    def mapped(name: str) -> np.ndarray:
        # An empty file cannot be mapped; nothing to map anyway.
        array = np.load(folder / f"{name}.npy", mmap_mode="r") if (folder / f"{name}.npy").stat().st_size > 256 \
            else np.load(folder / f"{name}.npy")
        return array

    time = PanelTime(np.load(folder / "start.npy"), np.load(folder / "step.npy"), meta["unit"], meta["tz"])
    return Panel(mapped("values"), mapped("future"), mapped("static"), np.load(folder / "lengths.npy"), ids, time,
                 o, meta["skipped"], source=str(folder))
