"""SlidingWindows: counts, zero-copy views, every input layout, and every argument error."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastbatch as fb
from reference import LAYOUTS_1D, LAYOUTS_2D, as_array, geometries, lay_out, reference_count, reference_window, series


@st.composite
def laid_out_windows(draw):
    n_steps, n_features, geometry = draw(geometries())
    layout = draw(st.sampled_from(LAYOUTS_1D if n_features is None else LAYOUTS_2D))
    return series(n_steps, n_features), layout, geometry


@given(geometries(max_extra=200))
def test_count_is_the_number_of_starts_that_fit(case):
    n_steps, n_features, geometry = case
    w = fb.SlidingWindows(series(n_steps, n_features), **geometry)
    assert len(w) == reference_count(n_steps, **{k: v for k, v in geometry.items() if k != "target_columns"})


@given(laid_out_windows())
def test_every_window_is_a_view_of_the_reference_slice(scratch, case):
    values, layout, geometry = case
    data = lay_out(values, layout, scratch)
    array = as_array(data)
    writeable = array.flags.writeable
    w = fb.SlidingWindows(data, **geometry)
    targets = geometry.get("target_columns")
    for i in range(len(w)):
        x, y = w[i]
        ex, ey = reference_window(values, i, **geometry)
        assert x.shape == ex.shape and y.shape == ey.shape
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
        assert x.dtype == values.dtype and y.dtype == values.dtype
        assert np.shares_memory(x, array), "the input of a window must be a view, not a copy"
        if geometry["horizon"] and targets is None:
            assert np.shares_memory(y, array)
    np.testing.assert_array_equal(w[-1][0], w[len(w) - 1][0])
    # Looking at windows never writes the data nor changes its flags.
    assert array.flags.writeable == writeable
    np.testing.assert_array_equal(array, values)


def test_textbook_windows():
    w = fb.SlidingWindows(np.arange(1, 1001, dtype=np.float32), window=10)
    assert len(w) == 990
    x, y = w[0]
    np.testing.assert_array_equal(x, np.arange(1, 11))
    np.testing.assert_array_equal(y, [11])
    x, y = w[989]
    np.testing.assert_array_equal(x, np.arange(990, 1000))
    np.testing.assert_array_equal(y, [1000])


def test_dilation_skips_steps_and_the_target_follows_the_last_input():
    w = fb.SlidingWindows(np.arange(100), window=3, horizon=2, stride=5, dilation=4)
    # span = (3-1)*4 + 1 + 2 = 11, so (100 - 11) // 5 + 1 windows.
    assert len(w) == 18
    x, y = w[2]
    np.testing.assert_array_equal(x, [10, 14, 18])
    np.testing.assert_array_equal(y, [19, 20])


def test_horizon_zero_gives_empty_targets():
    data = series(20, 3)
    w = fb.SlidingWindows(data, window=20, horizon=0)
    assert len(w) == 1
    x, y = w[0]
    assert x.shape == (20, 3) and y.shape == (0, 3)


@pytest.mark.parametrize(
    "target_columns, expected",
    [
        ([2], [2]),
        (2, [2]),
        ([-1], [3]),
        ([0, 2], [0, 2]),
        ([0, 1, 3], [0, 1, 3]),  # unevenly spaced
        ([3, 2, 1, 0], [3, 2, 1, 0]),  # all columns, reversed
        ([1, 1, 0, 2], [1, 1, 0, 2]),  # repeats, as many as there are features
        ([-4, -1], [0, 3]),
        (np.array([1, 3], dtype=np.uint8), [1, 3]),
    ],
)
def test_target_columns_select_and_order_the_target_features(target_columns, expected):
    data = series(12, 4)
    w = fb.SlidingWindows(data, window=3, horizon=2, target_columns=target_columns)
    x, y = w[4]
    np.testing.assert_array_equal(x, data[4:7])
    np.testing.assert_array_equal(y, data[7:9][:, expected])


def test_torch_tensor_windows_share_its_memory():
    t = torch.arange(60, dtype=torch.float32).reshape(30, 2).requires_grad_()
    w = fb.SlidingWindows(t, window=4, horizon=2)
    x, y = w[3]
    assert isinstance(x, np.ndarray)
    assert np.shares_memory(x, t.detach().numpy())
    np.testing.assert_array_equal(x, t.detach().numpy()[3:7])
    np.testing.assert_array_equal(y, t.detach().numpy()[7:9])


def test_float16_windows_keep_their_dtype():
    data = series(10, 2, np.float16)
    x, y = fb.SlidingWindows(data, window=3)[1]
    assert x.dtype == np.float16
    np.testing.assert_array_equal(y, data[4:5])


def test_requested_dtype_in_foreign_byte_order_means_the_native_one():
    assert fb.SlidingWindows(series(10, None), window=2, dtype=">f4").dtype == np.dtype(np.float32)
    assert fb.SlidingWindows(series(10, None), window=2, dtype=torch.float32).dtype == np.dtype(np.float32)


@pytest.mark.parametrize("name", ["window", "stride", "dilation"])
@pytest.mark.parametrize(
    "value, error, shown",
    [
        (0, ValueError, "=0"),
        (-3, ValueError, "=-3"),
        (2.5, TypeError, "2.5"),
        (2.0, TypeError, "2.0"),
        ("4", TypeError, "'4'"),
        (None, TypeError, "None"),
        (True, TypeError, "True"),
        (np.float64(3), TypeError, "3.0"),
    ],
)
def test_positive_integer_arguments_are_checked(name, value, error, shown):
    kwargs = dict(window=3, stride=1, dilation=1)
    kwargs[name] = value
    with pytest.raises(error, match=f"{name}.*{re.escape(shown)}"):
        fb.SlidingWindows(series(50, None), **kwargs)


@pytest.mark.parametrize("value, error, shown", [(-1, ValueError, "horizon=-1"), (True, TypeError, "True"),
                                                  (1.5, TypeError, "1.5")])
def test_horizon_is_checked(value, error, shown):
    with pytest.raises(error, match=f"horizon.*{re.escape(shown)}"):
        fb.SlidingWindows(series(50, None), window=3, horizon=value)


def test_numpy_integers_are_integers():
    w = fb.SlidingWindows(series(50, None), window=np.int64(3), horizon=np.int32(2), stride=np.uint8(2))
    assert len(w) == reference_count(50, window=3, horizon=2, stride=2)


@pytest.mark.parametrize(
    "data, error, shown",
    [
        (np.array(3.0), ValueError, "shape ()"),
        (np.zeros((4, 3, 2)), ValueError, "shape (4, 3, 2)"),
        (np.zeros(0), ValueError, "shape (0,)"),
        (np.zeros((0, 3)), ValueError, "shape (0, 3)"),
        (np.zeros((10, 0)), ValueError, "shape (10, 0)"),
        (np.array(["1", "2", "3", "4"]), TypeError, "<U1"),
        (np.ones(10, dtype=np.complex128), TypeError, "complex128"),
        (np.ones(10, dtype=bool), TypeError, "bool"),
        (np.array([1.0, None] * 5, dtype=object), TypeError, "object"),
        (torch.ones(10, dtype=torch.bool), TypeError, "bool"),
        (torch.ones(10, dtype=torch.complex64), TypeError, "complex64"),
        (torch.ones(10, dtype=torch.bfloat16), TypeError, "bfloat16"),
        ("0123456789", TypeError, "str"),
        ([1.0, 2.0, 3.0, 4.0], TypeError, "list"),
        (np.arange(10.0, dtype=">f8"), TypeError, ">f8"),
    ],
)
def test_unusable_data_is_refused(data, error, shown):
    with pytest.raises(error, match=f"data.*{re.escape(shown)}"):
        fb.SlidingWindows(data, window=2, horizon=0)


def test_a_tensor_off_the_cpu_is_refused():
    with pytest.raises(ValueError, match="data.*meta"):
        fb.SlidingWindows(torch.zeros(50, device="meta"), window=3)


@pytest.mark.parametrize("window, horizon, dilation, steps", [(10, 1, 1, 10), (3, 0, 5, 10), (1, 9, 1, 9)])
def test_data_too_short_for_one_window_is_refused(window, horizon, dilation, steps):
    with pytest.raises(ValueError, match=f"too short.*{steps} steps.*window={window}.*horizon={horizon}.*dilation={dilation}"):
        fb.SlidingWindows(series(steps, 2), window=window, horizon=horizon, dilation=dilation)
    # One more step and there is exactly one window.
    assert len(fb.SlidingWindows(series(steps + 1, 2), window=window, horizon=horizon, dilation=dilation)) == 1


@pytest.mark.parametrize(
    "target_columns, error, shown",
    [
        ([3], ValueError, "[3]"),
        ([0, -4], ValueError, "[0, -4]"),
        ([], TypeError, "[]"),
        ([0.5], TypeError, "[0.5]"),
        ([[0, 1]], TypeError, "[[0, 1]]"),
        ("a", TypeError, "'a'"),
        ([True], TypeError, "[True]"),
        (True, TypeError, "True"),
    ],
)
def test_bad_target_columns_are_refused(target_columns, error, shown):
    with pytest.raises(error, match=f"target_columns.*{re.escape(shown)}"):
        fb.SlidingWindows(series(20, 3), window=2, target_columns=target_columns)


def test_target_columns_on_univariate_data_are_refused():
    with pytest.raises(ValueError, match=r"target_columns.*1-D.*\[0\]"):
        fb.SlidingWindows(series(20, None), window=2, target_columns=[0])


@pytest.mark.parametrize(
    "dtype, shown",
    [("complex64", "complex64"), ("nonsense", "nonsense"), (bool, "bool"), (torch.bfloat16, "bfloat16"),
     ("float16", "float16")],
)
def test_bad_batch_dtype_is_refused(dtype, shown):
    with pytest.raises(TypeError, match=f"dtype.*{re.escape(shown)}"):
        fb.SlidingWindows(series(20, 2), window=2, dtype=dtype)


def test_float16_data_cannot_be_cast():
    with pytest.raises(TypeError, match="dtype.*float32.*float16"):
        fb.SlidingWindows(series(20, 2, np.float16), window=2, dtype="float32")


@pytest.mark.parametrize("index, error, shown", [(7, IndexError, "7"), (-8, IndexError, "-8"),
                                                  (1.0, TypeError, "1.0"), (True, TypeError, "True")])
def test_window_index_is_checked(index, error, shown):
    w = fb.SlidingWindows(series(10, None), window=3, horizon=1)
    assert len(w) == 7
    with pytest.raises(error, match=f"index.*{re.escape(shown)}"):
        w[index]
