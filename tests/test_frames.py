"""Long-format tables to panels and windows, against a pandas groupby-and-slice reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fastbatch.frames import from_frame
from fastbatch.panel import PanelArrays, gather, split, windows
from reference_frames import frames, reference_stats, reference_windows

pa = pytest.importorskip("pyarrow")


def as_backend(df: pd.DataFrame, backend: str):
    if backend == "arrow":
        return pa.Table.from_pandas(df, preserve_index=False)
    if backend == "polars":
        pl = pytest.importorskip("polars")
        return pl.from_arrow(pa.Table.from_pandas(df, preserve_index=False))
    return df


def stacked(ref_windows, field, dtype):
    return np.stack([w[field] for w in ref_windows]) if ref_windows else None


def assert_windows_equal(got: PanelArrays, want: list[dict]) -> None:
    assert got.series.shape[0] == len(want)
    for name in ("past", "future", "static", "target"):
        np.testing.assert_array_equal(getattr(got, name), np.stack([w[name] for w in want]), err_msg=name)
    np.testing.assert_array_equal(got.series, [w["series"] for w in want])


def same_ids(got: np.ndarray, want: list) -> bool:
    return [tuple(g) if isinstance(g, tuple) else g for g in got.tolist()] == list(want)


def backends_for(df: pd.DataFrame, options: dict) -> list[str]:
    """Arrow and polars hold no tuples in a column."""
    tuples = options["id"] == "id" and isinstance(df["id"].iloc[0], tuple)
    return ["pandas"] if tuples else ["pandas", "arrow", "polars"]


@given(case=frames(), data=st.data())
def test_every_window_equals_the_pandas_reference(case, data):
    df, options = case
    backend = data.draw(st.sampled_from(backends_for(df, options)))
    ids, want = reference_windows(df, **options)
    if not want:
        with pytest.raises(ValueError, match="shorter than window \\+ horizon"):
            from_frame(as_backend(df, backend), **options)
        return
    panel = from_frame(as_backend(df, backend), **options)
    assert same_ids(panel.series_ids, ids)
    n_groups = 1 if options["id"] is None else df.groupby(options["id"]).ngroups
    assert panel.skipped == n_groups - len(ids)
    index = windows(panel)
    assert_windows_equal(gather(panel, index, np.arange(len(index))), want)


@given(case=frames(gaps=True), fill=st.sampled_from(["ffill", "nan"]), data=st.data())
def test_fill_inserts_missing_steps_like_reindex(case, fill, data):
    df, options = case
    backend = data.draw(st.sampled_from(backends_for(df, options)))
    ids, want = reference_windows(df, **options, fill=fill)
    assume(want)
    panel = from_frame(as_backend(df, backend), **options, fill=fill)
    index = windows(panel)
    assert_windows_equal(gather(panel, index, np.arange(len(index))), want)


def numeric_cutoff(df, at_fraction):
    times = np.sort(df["t"].unique())
    return times[min(len(times) - 1, int(at_fraction * len(times)))]


@given(case=frames(), at_fraction=st.floats(0, 1), data=st.data())
def test_split_by_time_matches_reference_and_does_not_leak(case, at_fraction, data):
    df, options = case
    at = numeric_cutoff(df, at_fraction)
    if isinstance(at, np.datetime64) or hasattr(at, "tz"):
        at = pd.Timestamp(at)
    assume(options["horizon"] >= 1)
    ids, every = reference_windows(df, **{**options, "stride": 1})
    assume(every)
    stride = options["stride"]
    # Training: the usual grid, the whole target before the cutoff.
    want_train = [w for w in reference_windows(df, **options)[1] if w["target_end"] < at]
    # Validation: targets from the cutoff on, every stride-th from the first such window of each series.
    want_valid = []
    for s in range(len(ids)):
        want_valid += [w for w in every if w["series"] == s and w["target_start"] >= at][::stride]
    panel = from_frame(df, **options)
    if not want_train or not want_valid:
        with pytest.raises(ValueError, match="leaves no (training|validation) window"):
            split(panel, at=at)
        return
    train, valid = split(panel, at=at)
    assert_windows_equal(gather(panel, train, np.arange(len(train))), want_train)
    assert_windows_equal(gather(panel, valid, np.arange(len(valid))), want_valid)


def test_split_last_k_steps():
    df = pd.DataFrame({"id": np.repeat(["a", "b"], [10, 7]), "t": np.r_[np.arange(10), np.arange(7)],
                       "y": np.arange(17.0)})
    panel = from_frame(df, id="id", time="t", target="y", window=3, horizon=2, stride=2)
    train, valid = split(panel, last=2)
    tr = gather(panel, train, np.arange(len(train)))
    va = gather(panel, valid, np.arange(len(valid)))
    # Series a: 8 training steps (0-7): windows at 0, 2 (target 3-4, 5-6); 4 would need step 8.
    # Series b: 5 training steps: window at 0 only.  Validation: the last 2 steps of each.
    assert tr.past[:, 0, 0].tolist() == [0, 2, 10]
    assert va.target[:, :, 0].tolist() == [[8, 9], [15, 16]]
    assert va.past[:, :, 0].tolist() == [[5, 6, 7], [12, 13, 14]]
    with pytest.raises(ValueError, match="leaves no training window"):
        split(panel, last=9)
    with pytest.raises(TypeError, match="exactly one of at= .* or last="):
        split(panel)


@given(case=frames(), kind=st.sampled_from(["standard", "robust"]), at_fraction=st.floats(0.3, 1))
def test_scaling_uses_training_statistics_and_inverts(case, kind, at_fraction):
    df, options = case
    assume(options["id"] is not None)
    try:
        panel = from_frame(df, **options, scale=kind)
    except ValueError:
        return
    columns = options["target"] + options["past"]
    at = numeric_cutoff(df, at_fraction)
    at = pd.Timestamp(at) if not isinstance(at, (int, np.integer)) else at
    try:
        train, valid = split(panel, at=at)
    except ValueError:
        train, at = windows(panel), None
    kept = [k for k, _ in df.groupby(options["id"], sort=True)]
    keep = [k in set(map(lambda v: tuple(v) if isinstance(v, tuple) else v, panel.series_ids.tolist()))
            for k in kept]
    center, scale = reference_stats(df, id=options["id"], time="t", columns=columns, kind=kind, before=at)
    np.testing.assert_allclose(train.scaler.center, center[keep], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(train.scaler.scale, scale[keep], rtol=1e-9, atol=1e-9)
    # inverse(scaled target) is the data's target, up to float32 rounding.
    ids = np.arange(len(train))
    got = gather(panel, train, ids)
    plain = gather(panel, windows_without_scaling(panel, train), ids)
    back = train.scaler.inverse(got.target.astype(np.float64), got.series)
    np.testing.assert_allclose(back, plain.target, rtol=1e-5, atol=1e-5 * np.abs(scale).max())


def windows_without_scaling(panel, index):
    from fastbatch.panel import WindowIndex

    return WindowIndex(index.first_rows, index.offsets, index.stride, None)


# -- bad input: each names the column, the series and the value -------------------------


def frame(**overrides):
    df = pd.DataFrame({"id": np.repeat(["a", "b"], 6), "t": np.tile(np.arange(6), 2), "y": np.arange(12.0),
                       "p": np.ones(12), "f": np.zeros(12), "s": np.repeat([1, 2], 6)})
    for k, v in overrides.items():
        df[k] = v
    return df


OPTIONS = dict(id="id", time="t", target="y", past="p", future="f", static="s", window=3, horizon=1)
BAD = [
    ("missing column", frame().drop(columns="p"), {}, ValueError, r"columns \['p'\] are missing"),
    ("duplicate (id, time)", frame(t=np.r_[np.arange(6), [0, 1, 2, 2, 4, 5]]), {}, ValueError,
     r"series 'b' has two rows at time 2 \(column 't'\)"),
    ("gap", frame(t=np.r_[np.arange(6), [0, 1, 2, 4, 5, 6]]), {}, ValueError,
     r"series 'b' has a gap in column 't': the step after 2, 3, is missing"),
    ("irregular", frame(t=np.r_[np.arange(6), [0, 2, 4, 6, 9, 11]]), {}, ValueError,
     r"series 'b' is not regular in column 't': 9 follows 6, which is not a whole number of its steps of 2"),
    ("NaN target", frame(y=np.r_[np.arange(8.0), [np.nan], np.arange(3.0)]), {}, ValueError,
     r"column 'y' holds a null/NaN in series 'b' at time 2"),
    ("null future", frame(f=pd.array([0.0] * 3 + [None] + [0.0] * 8, dtype="Float64")), {}, ValueError,
     r"column 'f' holds a null/NaN in series 'a' at time 3"),
    ("string covariate", frame(p=["x"] * 12), {}, TypeError, r"column 'p' \(past\) must be numeric .* series 'a' holds 'x'"),
    ("static varies", frame(s=np.r_[[1] * 6, [2, 2, 3, 2, 2, 2]]), {}, ValueError,
     r"static column 's' varies within series 'b': 2 and 3 \(at time 2\)"),
    ("too short", frame(), dict(window=6), ValueError, r"every series is shorter than window \+ horizon = 7 steps"),
    ("ffill leading NaN", frame(y=np.r_[[np.nan], np.arange(11.0)]), dict(fill="ffill"), ValueError,
     r"column 'y' .* first row of series 'a'"),
    ("null id", frame(id=["a"] * 6 + [None] * 6), {}, ValueError, r"id column 'id' holds a null at row 6"),
    ("float time", frame(t=np.tile(np.arange(6.0), 2)), {}, TypeError, r"time column 't' must hold integers or"),
    ("role twice", frame(), dict(past="y"), ValueError, r"column 'y' is given as both target and past"),
    ("bad fill", frame(), dict(fill="bfill"), ValueError, r"fill must be one of"),
    ("bad dtype", frame(), dict(dtype="int32"), TypeError, r"dtype must be float32 or float64"),
]


@pytest.mark.parametrize("name, df, options, error, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_named(name, df, options, error, message):
    with pytest.raises(error, match=message):
        from_frame(df, **{**OPTIONS, **options})


def test_short_series_are_skipped_and_counted():
    df = frame(id=np.repeat(["a", "b"], [8, 4]), t=np.r_[np.arange(8), np.arange(4)], s=np.repeat([1, 2], [8, 4]))
    panel = from_frame(df, **{**OPTIONS, "window": 4})
    assert panel.skipped == 1 and panel.series_ids.tolist() == ["a"] and panel.lengths.tolist() == [8]
    assert "skipped=1" in repr(panel)


def test_timestamps_and_cutoffs():
    t = pd.date_range("2024-01-01", periods=10, freq="D", unit="s")
    df = pd.DataFrame({"ds": t, "y": np.arange(10.0)})
    panel = from_frame(df, id=None, time="ds", target="y", window=2, horizon=1)
    assert panel.time.unit == "s" and panel.series_ids.tolist() == [None]
    assert list(panel.time.values(0, 2)) == list(t[:2].to_numpy())
    train, valid = split(panel, at="2024-01-08")
    assert gather(panel, valid, np.arange(len(valid))).target[:, 0, 0].tolist() == [7, 8, 9]
    with pytest.raises(TypeError, match="holds timestamps, so the cutoff must be one"):
        split(panel, at=7)


def test_arrow_single_column_is_read_in_place():
    table = pa.table({"id": [1] * 6 + [2] * 6, "t": list(range(6)) * 2, "y": np.arange(12.0)})
    panel = from_frame(table, id="id", time="t", target="y", window=2)
    source = table.column("y").chunk(0).to_numpy(zero_copy_only=True)
    assert np.shares_memory(panel.values, source)


@pytest.mark.parametrize("shuffled", [False, True])
def test_panels_are_row_major_whatever_the_table_layout(shuffled):
    """Columns of a frame made from a 2-D array are strided views; the panel's blocks are row-major copies
    (a single contiguous column stays a view), so the gather copies each window as runs."""
    from fastbatch.panel import runs

    rng = np.random.default_rng(3)
    n = 60
    block = np.column_stack([np.repeat([1, 2, 3], n // 3), np.tile(np.arange(n // 3), 3)] +
                            [rng.integers(-9, 9, n) for _ in range(4)]).astype(np.int64)
    df = pd.DataFrame(block, columns=["id", "t", "y", "p", "f", "g"], copy=False)
    df = df.sample(frac=1, random_state=0) if shuffled else df
    assert not df["y"].to_numpy().flags.c_contiguous  # a column of the frame's one 2-D block
    options = dict(id="id", time="t", target="y", past="p", future=["f", "g"], window=4, horizon=2)
    panel = from_frame(df, **options)
    assert panel.values.flags.c_contiguous and panel.future.flags.c_contiguous and runs(panel)
    one = from_frame(df, id="id", time="t", target="y", window=4, horizon=2)
    assert one.values.flags.c_contiguous and one.values.shape[1] == 1
    _, want = reference_windows(df, **options)
    assert_windows_equal(gather(panel, windows(panel), np.arange(len(want))), want)
    contiguous = pd.DataFrame({c: df[c].to_numpy().copy() for c in df.columns})
    single = from_frame(contiguous.sort_values(["id", "t"]), id="id", time="t", target="y", window=4, horizon=2)
    assert np.shares_memory(single.values, contiguous["y"].to_numpy()) == (not shuffled)


def test_categorical_static_gives_codes_and_step_option():
    df = frame(s=pd.Categorical(np.repeat(["north", "south"], 6)))
    panel = from_frame(df, **OPTIONS)
    assert panel.static[:, 0].tolist() == [0, 1]
    stamps = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.tile([0, 2, 4, 6, 8, 10], 2), unit="h")
    with pytest.raises(ValueError, match="has a gap"):
        from_frame(frame(t=stamps), **OPTIONS, step="1h")
    panel = from_frame(frame(t=stamps), **OPTIONS, step="1h", fill="nan")
    assert panel.lengths.tolist() == [11, 11] and np.isnan(panel.values[1, 0])


# -- files: Parquet, Arrow IPC and the out-of-core cache ---------------------------------


def gappy_frame(n_series=12, length=300, seed=0):
    """Int and float columns, a few missing steps, series of several lengths, sorted by id."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(n_series):
        t = np.arange(length - 7 * k)
        t = t[(rng.random(t.size) > 0.05) | (t == 0) | (t == t[-1])]
        parts.append(pd.DataFrame({"id": f"s{k:02d}", "t": t, "y": rng.normal(size=t.size),
                                   "p": rng.integers(0, 9, t.size), "f": rng.normal(size=t.size).astype(np.float32),
                                   "st": k % 4}))
    return pd.concat(parts, ignore_index=True)


FILE_OPTIONS = dict(id="id", time="t", target="y", past="p", future="f", static="st", window=16, horizon=4,
                    fill="nan")


def assert_same_panel(got, want):
    for name in ("values", "future", "static", "lengths"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.series_ids.tolist() == want.series_ids.tolist()
    np.testing.assert_array_equal(got.time.start, want.time.start)
    assert got.skipped == want.skipped


def write_parquet(df, path, row_group_size=500):
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size)


def test_parquet_cache_equals_the_frame_and_is_reused(tmp_path, monkeypatch):
    from fastbatch import frames

    df = gappy_frame()
    write_parquet(df, tmp_path / "data.parquet")
    want = from_frame(df, **FILE_OPTIONS)
    assert want.values.dtype == np.float64  # ints with NaN inserted: every block is stored alike
    in_memory = frames.from_parquet(tmp_path / "data.parquet", cache=False, **FILE_OPTIONS)
    assert_same_panel(in_memory, want)
    cached = frames.from_parquet(tmp_path / "data.parquet", cache=True, batch_rows=256, **FILE_OPTIONS)
    assert isinstance(cached.values, np.memmap) and not cached.values.flags.writeable
    assert cached.values.flags.c_contiguous and cached.future.flags.c_contiguous  # the gather's runs
    assert_same_panel(cached, want)
    # Worker processes get the folder's name, not a copy of the data.
    import pickle

    pickled = pickle.dumps(cached)
    assert len(pickled) < cached.values.nbytes / 10
    again = pickle.loads(pickled)
    assert isinstance(again.values, np.memmap)
    assert_same_panel(again, want)
    # The second run maps the cache without converting again.
    monkeypatch.setattr(frames, "_convert", lambda *a, **k: pytest.fail("converted again"))
    assert_same_panel(frames.from_parquet(tmp_path / "data.parquet", cache=True, **FILE_OPTIONS), want)
    # Other options that shape the arrays, or a rewritten file, give a new conversion.
    with pytest.raises(pytest.fail.Exception, match="converted again"):
        frames.from_parquet(tmp_path / "data.parquet", cache=True, **{**FILE_OPTIONS, "fill": "ffill"})
    write_parquet(df.assign(y=df.y + 1), tmp_path / "data.parquet")
    with pytest.raises(pytest.fail.Exception, match="converted again"):
        frames.from_parquet(tmp_path / "data.parquet", cache=True, **FILE_OPTIONS)


def test_parquet_folder_with_cache_dir(tmp_path):
    from fastbatch.frames import from_parquet

    df = gappy_frame()
    (tmp_path / "data").mkdir()
    ids = sorted(df.id.unique())
    write_parquet(df[df.id.isin(ids[:5])], tmp_path / "data" / "part-0.parquet")
    write_parquet(df[df.id.isin(ids[5:])], tmp_path / "data" / "part-1.parquet")
    want = from_frame(df, **FILE_OPTIONS)
    assert_same_panel(from_parquet(tmp_path / "data", cache=False, **FILE_OPTIONS), want)
    got = from_parquet(tmp_path / "data", cache=True, cache_dir=tmp_path / "cache", batch_rows=300, **FILE_OPTIONS)
    assert_same_panel(got, want)
    assert len(list((tmp_path / "cache").iterdir())) == 1 and not (tmp_path / "data" / ".fastbatch-cache").exists()


def test_arrow_ipc_is_memory_mapped(tmp_path):
    import pyarrow.feather as feather

    from fastbatch.frames import from_parquet

    # Sorted, complete and long enough: the target column is used as it lies in the file.
    df = pd.DataFrame({"id": np.repeat([3, 5, 8], 50), "t": np.tile(np.arange(50), 3), "y": np.arange(150.0)})
    feather.write_feather(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "data.arrow",
                          compression="uncompressed")
    options = dict(id="id", time="t", target="y", window=8, horizon=2)
    want = from_frame(df, **options)
    got = from_parquet(tmp_path / "data.arrow", cache=False, **options)
    assert_same_panel(got, want)
    assert not got.values.flags.writeable  # a view of the mapped file, not a copy
    assert_same_panel(from_parquet(tmp_path / "data.arrow", cache=True, batch_rows=100, **options), want)


def test_cache_refuses_series_split_across_the_files(tmp_path):
    from fastbatch.frames import from_parquet

    df = gappy_frame(n_series=3, length=40)
    write_parquet(pd.concat([df[df.t < 20], df[df.t >= 20]]), tmp_path / "data.parquet")
    with pytest.raises(ValueError, match="series 's00' appears in two separate places"):
        from_parquet(tmp_path / "data.parquet", cache=True, batch_rows=10, **FILE_OPTIONS)
    assert not any((tmp_path / ".fastbatch-cache").iterdir())  # no half cache left behind
    for cache in (False, True):
        with pytest.raises(ValueError, match=r"columns \['nope'\] are missing from"):
            from_parquet(tmp_path / "data.parquet", cache=cache, **{**FILE_OPTIONS, "past": "nope"})


def test_conversion_memory_stays_near_one_block(tmp_path):
    """numpy's allocations during the conversion stay near batch_rows rows, not the data's size."""
    import tracemalloc

    from fastbatch.frames import from_parquet

    df = gappy_frame(n_series=80, length=5000)
    write_parquet(df, tmp_path / "data.parquet", row_group_size=4000)
    data_bytes = len(df) * 8 * 4
    tracemalloc.start()
    try:
        from_parquet(tmp_path / "data.parquet", cache=True, batch_rows=4000, **FILE_OPTIONS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < data_bytes / 5, f"peak {peak} bytes for {data_bytes} bytes of data"


def test_id_columns_past_the_int64_key_give_the_same_series(monkeypatch):
    from fastbatch import frames

    df = pd.DataFrame({"store": [2, 2, 1, 1, 1, 1], "item": ["x", "x", "y", "y", "x", "x"], "t": [0, 1] * 3,
                       "y": np.arange(6.0)})
    options = dict(id=["store", "item"], time="t", target="y", window=1)
    want = from_frame(df, **options)
    assert want.series_ids.tolist() == [(1, "x"), (1, "y"), (2, "x")]
    monkeypatch.setattr(frames, "_KEY_LIMIT", 1)  # as if the columns had billions of values each
    got = from_frame(df, **options)
    assert got.series_ids.tolist() == want.series_ids.tolist()
    np.testing.assert_array_equal(got.values, want.values)


def test_cache_refuses_rows_of_a_series_shuffled_within_one_block(tmp_path):
    """Rows of several series interleaved in one record batch: refused by name, never a false 'gap'."""
    from fastbatch.frames import from_parquet

    df = gappy_frame(n_series=3, length=40)
    write_parquet(df.sample(frac=1, random_state=0), tmp_path / "data.parquet")
    with pytest.raises(ValueError, match="appears in two separate places of the data"):
        from_parquet(tmp_path / "data.parquet", cache=True, **FILE_OPTIONS)
    in_memory = from_parquet(tmp_path / "data.parquet", cache=False, **FILE_OPTIONS)
    assert in_memory.n_series == 3


@pytest.mark.parametrize("freq,step", [("MS", 1), ("QS", 3), ("YS", 12)])
def test_month_start_timestamps_are_counted_in_months(freq, step):
    """Monthly data as neuralforecast users keep it (freq='MS'): regular in months, not in nanoseconds."""
    times = pd.date_range("2019-01-01", periods=30, freq=freq)
    df = pd.DataFrame({"unique_id": np.repeat(["a", "b"], 30), "ds": np.tile(times, 2), "y": np.arange(60.0)})
    panel = from_frame(df, id="unique_id", time="ds", target="y", window=6, horizon=2)
    assert panel.time.unit == "M" and list(panel.time.step) == [step, step]
    np.testing.assert_array_equal(panel.time.values(0, 30), times.to_numpy().astype("datetime64[M]"))
    gappy = df.drop(index=[4])
    with pytest.raises(ValueError, match="has a gap"):
        from_frame(gappy, id="unique_id", time="ds", target="y", window=6, horizon=2)


def test_a_cutoff_inside_a_month_starts_validation_at_the_next_month():
    times = pd.date_range("2020-01-01", periods=36, freq="MS")
    df = pd.DataFrame({"unique_id": "a", "ds": times, "y": np.arange(36.0)})
    mid, start = (split(from_frame(df, id="unique_id", time="ds", target="y", window=12, horizon=3), at=at)
                  for at in ("2022-06-15", "2022-07-01"))
    assert [len(i) for i in mid] == [len(i) for i in start] == [16, 4]
