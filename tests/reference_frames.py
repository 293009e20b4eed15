"""Plain meanings of the panel machinery, written the slow, obvious way, and random frames for hypothesis.

- :func:`reference_gather_panel`: the gather kernel, one window at a time with numpy slicing.
- :func:`reference_rows_in_order`, :func:`reference_scan_series`, :func:`reference_scan_steps`,
  :func:`reference_fill_column`, :func:`reference_ffill_rows`: the build's kernels (fastbatch/frames.py),
  with whole-array numpy operations.
- :func:`reference_windows`: every window of a long-format pandas frame, built with
  ``groupby`` and slicing, with no knowledge of fastbatch's layout.
- :func:`reference_split_starts` and :func:`reference_stats`: the split and the scaling statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import strategies as st


# -- the kernel --------------------------------------------------------------------


def reference_gather_panel(values, future, static, first_rows, offsets, ids, stride, window, horizon, n_targets,
                           dtype, center=None, scale=None, future_center=None, future_scale=None):
    """``(past, future, static, target, series)`` of windows ``ids``, one window at a time."""
    values, future, static = np.asarray(values), np.asarray(future), np.asarray(static)
    out = {"past": [], "future": [], "static": [], "target": [], "series": []}
    for i in np.asarray(ids):
        s = int(np.flatnonzero(np.asarray(offsets)[:-1] <= i).max())
        while offsets[s + 1] <= i:  # empty series own no id
            s += 1
        r = int(first_rows[s]) + (int(i) - int(offsets[s])) * stride
        past = values[r : r + window].astype(np.float64)
        target = values[r + window : r + window + horizon, :n_targets].astype(np.float64)
        fut = future[r : r + window + horizon].astype(np.float64)
        if center is not None:
            past = (past - center[s]) / scale[s]
            target = (target - center[s, :n_targets]) / scale[s, :n_targets]
            fut = (fut - future_center[s]) / future_scale[s]
        out["past"].append(past.astype(dtype))
        out["target"].append(target.astype(dtype))
        out["future"].append(fut.astype(dtype))
        out["static"].append(static[s].astype(dtype))
        out["series"].append(s)
    shapes = {"past": (0, window, values.shape[1]), "future": (0, window + horizon, future.shape[1]),
              "static": (0, static.shape[1]), "target": (0, horizon, n_targets)}
    result = {k: np.stack(v) if v else np.empty(shapes[k], dtype) for k, v in out.items() if k != "series"}
    result["series"] = np.array(out["series"], dtype=np.int64)
    return result


# -- the build's kernels ------------------------------------------------------------------


def _in_series_order(codes, ticks, order):
    """Codes and ticks in (series, time) order, and where consecutive rows belong to one series."""
    codes, ticks = np.asarray(codes), np.asarray(ticks)
    if order is not None:
        codes, ticks = codes[order], ticks[order]
    return codes, ticks, codes[1:] == codes[:-1]


def _first(mask) -> int:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else -1


def reference_rows_in_order(codes, ticks) -> bool:
    codes, ticks = np.asarray(codes), np.asarray(ticks)
    return bool(np.all((codes[1:] > codes[:-1]) | ((codes[1:] == codes[:-1]) & (ticks[1:] > ticks[:-1]))))


def reference_scan_series(codes, ticks, order, n_series):
    """``(counts, smallest step or None per series, first duplicate position or -1)``."""
    codes, ticks, same = _in_series_order(codes, ticks, order)
    diff = ticks[1:] - ticks[:-1]
    counts = np.bincount(codes, minlength=n_series)
    smallest = [None] * n_series
    for r in np.flatnonzero(same):
        c = codes[r]
        smallest[c] = diff[r] if smallest[c] is None else min(smallest[c], diff[r])
    return counts, smallest, _first(same & (diff == 0))


def reference_scan_steps(codes, ticks, order, step, given):
    """First positions of: a step below ``step`` (only when ``given``), a non-multiple, a gap."""
    codes, ticks, same = _in_series_order(codes, ticks, order)
    diff = ticks[1:] - ticks[:-1]
    step_row = np.asarray(step)[codes[:-1]]
    return [_first(same & (diff < step_row)) if given else -1, _first(same & (diff % step_row != 0)),
            _first(same & (diff != step_row))]


def reference_fill_column(out, j, col, source):
    out[:, j] = col if source is None else np.asarray(col)[source]


def reference_ffill_rows(out):
    """Each column's NaN take the last value above them (pandas' ffill)."""
    out[:] = pd.DataFrame(out).ffill().to_numpy(dtype=out.dtype)


# -- frames --------------------------------------------------------------------------


def regular_series(frame: pd.DataFrame, time: str, step, fill: str) -> pd.DataFrame:
    """One series' rows on its full time grid, missing steps inserted (fill='ffill' or 'nan')."""
    frame = frame.sort_values(time).set_index(time)
    grid = pd.Index(np.arange(frame.index[0], frame.index[-1] + step, step) if not isinstance(step, pd.Timedelta)
                    else pd.date_range(frame.index[0], frame.index[-1], freq=step), name=time)
    frame = frame.reindex(grid)
    if fill == "ffill":
        frame = frame.ffill()
    return frame.reset_index()


def reference_windows(df: pd.DataFrame, *, id, time, target, past=(), future=(), static=(), window, horizon,
                      stride=1, fill="raise", step=None, dtype=np.float32):
    """Every window of ``df`` in order: ``(series_ids, [dict(past, future, static, target, series, start)])``.

    Series in sorted id order (``groupby(sort=True)``), windows at steps
    ``0, stride, ...`` of each; ``start`` is the time of the window's first step.
    """
    target, past, future, static = (list(c) if isinstance(c, (list, tuple)) else [c] for c in
                                    (target, past, future, static))
    target = [c for c in target if c is not None]
    past, future, static = ([c for c in cols if c is not None] for cols in (past, future, static))
    groups = [(None, df)] if id is None else list(df.groupby(id, sort=True))
    ids, out = [], []
    for key, g in groups:
        g = g.sort_values(time)
        st_ = step if step is not None else np.diff(g[time].to_numpy()).min() if len(g) > 1 else None
        if st_ is not None and isinstance(st_, np.timedelta64):
            st_ = pd.Timedelta(st_)
        if st_ is not None:
            g = regular_series(g, time, st_, fill)
        n = len(g)
        if n < window + horizon:
            continue
        s = len(ids)
        ids.append(key)
        vals = g[target + past].to_numpy(dtype=np.float64)
        fut = g[future].to_numpy(dtype=np.float64) if future else np.empty((n, 0))
        stat = g[static].iloc[0].to_numpy(dtype=np.float64) if static else np.empty(0)
        times = g[time].to_numpy()
        for start in range(0, n - window - horizon + 1, stride):
            out.append(dict(
                past=vals[start : start + window].astype(dtype),
                future=fut[start : start + window + horizon].astype(dtype),
                static=stat.astype(dtype),
                target=vals[start + window : start + window + horizon, : len(target)].astype(dtype),
                series=s, start=times[start], target_start=times[start + window] if horizon else None,
                target_end=times[start + window + horizon - 1] if horizon else None,
            ))
    return ids, out


def reference_stats(df: pd.DataFrame, *, id, time, columns, kind, before=None):
    """Per series (sorted ids) and column: (center, scale) of the rows before ``before`` (all rows if None)."""
    centers, scales = [], []
    for _, g in df.groupby(id, sort=True):
        g = g.sort_values(time)
        if before is not None:
            g = g[g[time] < before]
        x = g[list(columns)].astype(np.float64)
        if len(x) == 0:
            centers.append(np.zeros(len(columns)))
            scales.append(np.ones(len(columns)))
            continue
        if kind == "standard":
            c, d = x.mean().to_numpy(), x.std(ddof=0).to_numpy()
        else:
            c = x.median().to_numpy()
            d = (x.quantile(0.75) - x.quantile(0.25)).to_numpy()
        centers.append(c)
        scales.append(np.where(d > 0, d, 1.0))
    return np.array(centers), np.array(scales)


# -- random frames --------------------------------------------------------------------


ID_KINDS = ("int", "str", "tuple", "columns")
TIME_KINDS = ("int", "timestamp", "timestamp_tz")


@st.composite
def frames(draw, *, max_series: int = 4, max_extra: int = 12, gaps: bool = False):
    """A random long-format frame and the options to read it: ``(df, options)``.

    Series of random lengths (some may be too short), random id and time
    kinds, 0-2 past, 0-2 future and 0-1 static columns, rows shuffled or
    not; with ``gaps`` some steps are dropped (the options then ask for a fill).
    """
    window = draw(st.integers(1, 5))
    horizon = draw(st.integers(0, 3))
    stride = draw(st.integers(1, 3))
    n_series = draw(st.integers(1, max_series))
    id_kind = draw(st.sampled_from(ID_KINDS))
    time_kind = draw(st.sampled_from(TIME_KINDS))
    n_past, n_future, n_static = draw(st.integers(0, 2)), draw(st.integers(0, 2)), draw(st.integers(0, 1))
    n_targets = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(50)[:n_series]
    rows = []
    # With gaps, one step for all series, given as step=: the smallest
    # difference of a series with gaps may be a multiple of its step.
    common_step = int(draw(st.sampled_from([1, 2, 3])))
    for k in range(n_series):
        length = draw(st.integers(max(1, window + horizon - 1), window + horizon + max_extra))
        step = common_step if gaps else int(draw(st.sampled_from([1, 2, 3])))
        origin = int(draw(st.integers(-5, 5)))
        local = np.arange(length)
        if gaps and length > 2:
            drop = rng.random(length) < 0.2
            drop[0] = drop[-1] = False
            local = local[~drop]
        for j in local:
            rows.append((k, origin + int(j) * step))
    series_k = np.array([r[0] for r in rows])
    steps = np.array([r[1] for r in rows])
    n = len(rows)
    data = {}
    if id_kind == "int":
        data["id"] = labels[series_k].astype(np.int64)
    elif id_kind == "str":
        data["id"] = np.array([f"s{v:02d}" for v in labels[series_k]], dtype=object)
    elif id_kind == "tuple":
        col = np.empty(n, dtype=object)
        for r in range(n):
            col[r] = (int(labels[series_k[r]]) % 3, f"x{labels[series_k[r]]}")
        data["id"] = col
    else:
        data["store"] = (labels[series_k] % 3).astype(np.int64)
        data["item"] = np.array([f"i{v}" for v in labels[series_k]], dtype=object)
    if time_kind == "int":
        data["t"] = steps.astype(np.int64)
    else:
        stamps = pd.Timestamp("2024-03-30") + pd.to_timedelta(steps, unit="h")
        data["t"] = stamps.tz_localize("Europe/Paris", nonexistent="shift_forward") if time_kind == "timestamp_tz" \
            else stamps
    columns = {"target": [f"y{j}" for j in range(n_targets)], "past": [f"p{j}" for j in range(n_past)],
               "future": [f"f{j}" for j in range(n_future)], "static": [f"s{j}" for j in range(n_static)]}
    for role in ("target", "past", "future"):
        for c in columns[role]:
            if draw(st.booleans()):
                data[c] = rng.integers(-100, 100, n).astype(np.int64)
            else:
                data[c] = rng.normal(size=n).astype(draw(st.sampled_from([np.float32, np.float64])))
    for c in columns["static"]:
        data[c] = rng.integers(0, 9, n_series)[series_k].astype(np.int64)
    df = pd.DataFrame(data)
    if time_kind == "timestamp_tz":
        # DST shifts make the Paris wall clock irregular; the UTC instants are regular.
        df["t"] = (pd.Timestamp("2024-03-30", tz="UTC") + pd.to_timedelta(steps, unit="h")).tz_convert("Europe/Paris")
    if draw(st.booleans()):
        df = df.sample(frac=1, random_state=seed % 2**31).reset_index(drop=True)
    id_option = ["store", "item"] if id_kind == "columns" else "id"
    if n_series == 1 and draw(st.booleans()):
        df = df.drop(columns=["store", "item"] if id_kind == "columns" else ["id"])
        id_option = None
    options = dict(id=id_option, time="t", target=columns["target"], past=columns["past"],
                   future=columns["future"], static=columns["static"], window=window, horizon=horizon, stride=stride)
    if gaps:
        options["step"] = common_step if time_kind == "int" else pd.Timedelta(hours=common_step)
    return df, options
