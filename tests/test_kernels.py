"""The compiled kernels against their plain-numpy / plain-Python references.

The kernels are called directly, the way SlidingWindows calls them: data as
``(N, F)`` (1-D data as ``(N, 1)``), int32 window ids, int64 target columns,
contiguous outputs.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fastbatch.kernels import gather_windows, shuffled_order
from reference import (
    LAYOUTS_1D,
    LAYOUTS_2D,
    MASK64,
    as_array,
    geometries,
    lay_out,
    reference_count,
    reference_gather,
    reference_shuffled_order,
    series,
)


@st.composite
def gather_cases(draw, layouts_2d=LAYOUTS_2D, layouts_1d=LAYOUTS_1D):
    """A geometry, a layout and any list of valid window ids (repeats and any order)."""
    n_steps, n_features, geometry = draw(geometries())
    layout = draw(st.sampled_from(layouts_1d if n_features is None else layouts_2d))
    count = reference_count(n_steps, **{k: v for k, v in geometry.items() if k != "target_columns"})
    ids = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=12))
    return series(n_steps, n_features), layout, geometry, np.array(ids, dtype=np.int32)


def run_gather(data, ids, geometry, out_dtype):
    """Call the kernel on ``(N, F)`` data with outputs pre-filled with a value no window holds."""
    a = as_array(data)
    a2 = a[:, None] if a.ndim == 1 else a
    n_features = a2.shape[1]
    targets = geometry.get("target_columns")
    cols = np.arange(n_features) if targets is None else np.asarray(targets) % n_features
    out_x = np.full((len(ids), geometry["window"], n_features), -7, dtype=out_dtype)
    out_y = np.full((len(ids), geometry["horizon"], len(cols)), -7, dtype=out_dtype)
    gather_windows(a2, ids, geometry["stride"], geometry["dilation"], geometry["window"], geometry["horizon"],
                   cols.astype(np.int64), out_x, out_y)
    if a.ndim == 1:
        return out_x[:, :, 0], out_y[:, :, 0]
    return out_x, out_y


@given(gather_cases())
def test_gather_copies_exactly_the_reference_windows(scratch, case):
    values, layout, geometry, ids = case
    data = lay_out(values, layout, scratch)
    x, y = run_gather(data, ids, geometry, np.float64)
    ex, ey = reference_gather(values, ids, **geometry)
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
    # The kernel writes only its outputs.
    np.testing.assert_array_equal(as_array(data), values)


@given(gather_cases(layouts_2d=("C",), layouts_1d=("C",)), st.sampled_from([np.float64, np.int64, np.int32]))
def test_gather_casts_to_the_output_dtype_in_the_same_pass(case, source_dtype):
    values, _, geometry, ids = case
    values = values.astype(source_dtype)
    x, y = run_gather(values, ids, geometry, np.float32)
    ex, ey = reference_gather(values, ids, dtype=np.float32, **geometry)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)


def test_gather_casts_with_float_rounding_not_truncation():
    # float64 -> float32 must round to nearest, as numpy's astype does.
    values = np.array([[0.1], [1 / 3], [1e-40], [3.4e38], [2.0**-149 * 0.75], [16777217.0]])
    x, _ = run_gather(values, np.array([0], dtype=np.int32), dict(window=6, horizon=0, stride=1, dilation=1),
                      np.float32)
    np.testing.assert_array_equal(x[0], values.astype(np.float32))


def test_gather_accepts_int64_ids_for_more_than_2_31_windows():
    # Past 2**31 windows the ids are int64; the kernel must index with them unchanged.
    values = series(40, 2)
    ids = np.array([30, 0, 17], dtype=np.int64)
    geometry = dict(window=4, horizon=2, stride=1, dilation=2)
    x, y = run_gather(values, ids, geometry, np.float64)
    ex, ey = reference_gather(values, ids, **geometry)
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)


def shuffled_kernel(n: int, key: int) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int32)
    shuffled_order(out, np.uint64(key))
    return out


@given(st.integers(0, 600), st.integers(0, MASK64))
def test_shuffled_order_is_the_reference_permutation(n, key):
    out = shuffled_kernel(n, key)
    np.testing.assert_array_equal(out, reference_shuffled_order(n, key))
    np.testing.assert_array_equal(np.sort(out), np.arange(n))


def test_shuffled_order_handles_the_smallest_and_int64_outputs():
    assert shuffled_kernel(0, 5).shape == (0,)
    np.testing.assert_array_equal(shuffled_kernel(1, 5), [0])
    out = np.empty(50, dtype=np.int64)
    shuffled_order(out, np.uint64(123))
    np.testing.assert_array_equal(out, shuffled_kernel(50, 123))


def test_shuffled_order_is_uniform_over_positions():
    # Every id lands at every position about equally often across keys; an
    # off-by-one in Fisher-Yates (Sattolo's cycle, a biased swap range) fails this.
    n, keys = 5, 5000
    counts = np.zeros((n, n), dtype=np.int64)
    for key in range(keys):
        counts[np.arange(n), shuffled_kernel(n, key * 0x1234567)] += 1
    expected = keys / n  # 1000, standard deviation about 28
    assert np.abs(counts - expected).max() < 150, counts


@given(gather_cases(layouts_2d=("C",), layouts_1d=("C",)), st.sampled_from([np.float64, np.int32]))
def test_gather_runs_equals_the_reference_for_contiguous_windows(case, source_dtype):
    """The run-copy kernel (C-contiguous data, dilation 1, all targets) against the reference."""
    from fastbatch.kernels import gather_runs

    values, _, geometry, ids = case
    geometry = dict(geometry, dilation=1, target_columns=None)
    values = values.astype(source_dtype)
    count = reference_count(values.shape[0], **{k: v for k, v in geometry.items() if k != "target_columns"})
    if count < 1:
        return
    ids = ids % count
    flat = values.reshape(-1)
    n_features = 1 if values.ndim == 1 else values.shape[1]
    out_x = np.full((len(ids), geometry["window"] * n_features), -7, dtype=np.float32)
    out_y = np.full((len(ids), geometry["horizon"] * n_features), -7, dtype=np.float32)
    gather_runs(flat, ids, geometry["stride"] * n_features, geometry["window"] * n_features,
                geometry["horizon"] * n_features, out_x, out_y)
    ex, ey = reference_gather(values, ids, dtype=np.float32, **geometry)
    np.testing.assert_array_equal(out_x, ex.reshape(len(ids), -1))
    np.testing.assert_array_equal(out_y, ey.reshape(len(ids), -1))


def test_a_stride_past_the_data_gives_its_one_window_and_one_past_int64_is_refused():
    import pytest

    import fastbatch as fb

    w = fb.SlidingWindows(np.arange(20.0), window=5, stride=2**63 - 1)
    assert len(w) == 1
    x, y = w.gather(np.array([0]))
    np.testing.assert_array_equal(x[0], np.arange(5.0))
    np.testing.assert_array_equal(y[0], [5.0])
    with pytest.raises(ValueError, match=rf"stride must be an integer <= {2**63 - 1}, got stride={2**70}"):
        fb.SlidingWindows(np.arange(20.0), window=5, stride=2**70)


def test_public_gather_refuses_ids_and_outputs_the_kernel_would_overrun():
    import pytest

    import fastbatch as fb

    w = fb.SlidingWindows(np.arange(100.0).reshape(50, 2), window=4)
    n = len(w)
    with pytest.raises(IndexError, match=rf"ids must be window indices in \[0, {n}\), got {n}: out of range"):
        w.gather(np.array([0, n]))
    with pytest.raises(IndexError, match="got -1"):
        w.gather(np.array([-1]))
    with pytest.raises(TypeError, match="ids must be a 1-D array or list of integer window indices"):
        w.gather(np.array([[0, 1]]))
    with pytest.raises(TypeError, match="ids must be a 1-D array or list of integer window indices"):
        w.gather(np.array([0.5]))
    with pytest.raises(TypeError, match=r"ids must be a 1-D array or list of integer window indices, got 3"):
        w.gather(3)
    with pytest.raises(IndexError, match=rf"got {2**64 - 1}: out of range"):
        w.gather(np.array([2**64 - 1], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"out_x must be a writeable C-contiguous numeric array of shape \(2, 4, 2\)"):
        w.gather(np.array([0, 1]), np.empty((1, 4, 2)), np.empty((2, 1, 2)))
    readonly = np.empty((2, 1, 2))
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out_y must be a writeable"):
        w.gather(np.array([0, 1]), np.empty((2, 4, 2)), readonly)
    x, y = w.gather(np.array([n - 1], dtype=np.uint64))
    np.testing.assert_array_equal(x[0], np.arange(100.0).reshape(50, 2)[n - 1 : n + 3])
