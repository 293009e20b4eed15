"""The build's kernels (fastbatch/frames.py) against their plain-numpy references (tests/reference_frames.py).

Inputs come in every 1-D layout a table's columns can have (contiguous,
strided as a column of a row-major 2-D block, read-only, memory-mapped).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fastbatch.frames import (_INT64_MAX, _kernel_column, ffill_rows, fill_column, first_nan, first_varying,
                              rows_in_order, scan_series, scan_steps)
from reference import lay_out
from reference_frames import (reference_ffill_rows, reference_fill_column, reference_rows_in_order,
                              reference_scan_series, reference_scan_steps)

LAYOUTS = ("C", "rows", "readonly", "memmap")


@st.composite
def rows(draw, directory):
    """``(codes, ticks, order, n_series)``: rows of a few series, in (series, time) order or with the sort."""
    n_series = draw(st.integers(1, 4))
    n = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, n_series, n).astype(np.int64)
    # Few distinct times: duplicates, gaps and irregular steps all come up.
    ticks = (rng.integers(-3, draw(st.integers(1, 30)), n) * draw(st.sampled_from([1, 2, 3]))).astype(np.int64)
    order = np.lexsort((ticks, codes))
    if draw(st.booleans()):  # already in order: the kernels read the rows as they are
        codes, ticks, order = codes[order], ticks[order], None
    layout = draw(st.sampled_from(LAYOUTS))
    return lay_out(codes, layout, directory), lay_out(ticks, layout, directory), order, n_series


@given(data=st.data())
def test_rows_in_order_matches_reference(data, scratch):
    codes, ticks, _, _ = data.draw(rows(scratch))
    assert rows_in_order(codes, ticks) == reference_rows_in_order(codes, ticks)


@given(data=st.data())
def test_scan_series_matches_reference(data, scratch):
    codes, ticks, order, n_series = data.draw(rows(scratch))
    counts = np.zeros(n_series, np.int64)
    smallest = np.full(n_series, _INT64_MAX, np.int64)
    duplicate = scan_series(codes, ticks, order, counts, smallest)
    want_counts, want_smallest, want_duplicate = reference_scan_series(codes, ticks, order, n_series)
    assert duplicate == want_duplicate
    np.testing.assert_array_equal(counts, want_counts)
    assert [None if v == _INT64_MAX else v for v in smallest.tolist()] == want_smallest


@given(data=st.data(), given_step=st.booleans())
def test_scan_steps_matches_reference(data, given_step, scratch):
    codes, ticks, order, n_series = data.draw(rows(scratch))
    step = np.array([data.draw(st.integers(1, 4)) for _ in range(n_series)], np.int64)
    found = scan_steps(codes, ticks, order, step, given_step)
    assert found.tolist() == reference_scan_steps(codes, ticks, order, step, given_step)


@given(data=st.data(), out_dtype=st.sampled_from(["float32", "float64", "uint8"]),
       col_dtype=st.sampled_from(["float32", "float64", "int64", "bool", "uint8"]),
       layout=st.sampled_from(LAYOUTS), sorted_=st.booleans())
def test_fill_column_matches_reference(data, out_dtype, col_dtype, layout, sorted_, scratch):
    n, width = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 4))
    j = data.draw(st.integers(0, width - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    col = rng.integers(0, 2 if col_dtype in ("bool", "uint8") else 100, n).astype(col_dtype)
    col = lay_out(col, layout, scratch)
    source = None if sorted_ else rng.integers(0, n, data.draw(st.integers(1, 30)))
    rows_out = n if source is None else source.shape[0]
    got = np.full((rows_out, width), 7, out_dtype)
    want = got.copy()
    fill_column(got, j, _kernel_column(col), source)
    reference_fill_column(want, j, col, source)
    np.testing.assert_array_equal(got, want)


@given(data=st.data(), dtype=st.sampled_from(["float32", "float64"]))
def test_ffill_rows_and_first_nan_match_reference(data, dtype):
    n, width = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    out = rng.normal(size=(n, width)).astype(dtype)
    out[rng.random((n, width)) < data.draw(st.floats(0, 1))] = np.nan
    nan_at = np.flatnonzero(np.isnan(out[:, 0]))
    assert first_nan(out[:, 0]) == (int(nan_at[0]) if nan_at.size else -1)
    want = out.copy()
    reference_ffill_rows(want)
    ffill_rows(out)
    np.testing.assert_array_equal(out, want)


@given(data=st.data(), layout=st.sampled_from(LAYOUTS))
def test_first_varying_matches_reference(data, layout, scratch):
    n_series, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 30))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, n_series, n).astype(np.int64)
    per_series = rng.integers(0, 3, n_series).astype(np.float64)
    col = per_series[codes]
    if data.draw(st.booleans()):
        col[rng.integers(0, n)] += data.draw(st.sampled_from([0.0, 1.0]))
    varies = np.flatnonzero(col != per_series[codes])
    got = first_varying(lay_out(col, layout, scratch), per_series, lay_out(codes, layout, scratch))
    assert got == (int(varies[0]) if varies.size else -1)
