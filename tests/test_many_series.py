"""Many series in one SlidingWindows: a list of arrays, or one array with lengths; never concatenated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastbatch as fb
from fastbatch.normalize import feature_stats
from reference import LAYOUTS_1D, LAYOUTS_2D, lay_out, reference_count, reference_window, series, span


@st.composite
def many_series(draw):
    """Series of different lengths (some too short for a window), a geometry, and a memory layout each."""
    window = draw(st.integers(1, 5))
    horizon = draw(st.integers(0, 3))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    n_features = draw(st.one_of(st.none(), st.integers(1, 3)))
    need = span(window, horizon, dilation)
    lengths = draw(st.lists(st.integers(0, need + 20), min_size=1, max_size=6))
    if max(lengths) < need:
        lengths[draw(st.integers(0, len(lengths) - 1))] = need + draw(st.integers(0, 5))
    layouts = [draw(st.sampled_from(LAYOUTS_1D if n_features is None else LAYOUTS_2D)) for _ in lengths]
    geometry = dict(window=window, horizon=horizon, stride=stride, dilation=dilation)
    return lengths, n_features, layouts, geometry


def make_values(lengths, n_features):
    """Distinct values in every series: series k holds 1000 * (k + 1) + a running count."""
    return [series(n, n_features) + 1000.0 * (k + 1) for k, n in enumerate(lengths)]


def expected_windows(values, geometry):
    """Each series' windows in turn, by the single-series reference: ``[(x, y, series), ...]``."""
    out = []
    for k, v in enumerate(values):
        for i in range(reference_count(len(v), **geometry)):
            out.append((*reference_window(v, i, **geometry), k))
    return out


@given(many_series())
def test_the_windows_of_many_series_are_each_series_windows_in_turn(scratch, case):
    lengths, n_features, layouts, geometry = case
    values = make_values(lengths, n_features)
    data = [lay_out(v, layout, scratch) if len(v) else v for v, layout in zip(values, layouts)]
    expected = expected_windows(values, geometry)
    for w in (fb.SlidingWindows(data, **geometry, return_series_id=True),
              fb.SlidingWindows(np.concatenate(values), lengths=lengths, **geometry, return_series_id=True)):
        assert len(w) == len(expected) == sum(reference_count(n, **geometry) for n in lengths)
        assert w.n_series == len(lengths) and w.many_series
        for i, (ex, ey, es) in enumerate(expected):
            x, y, s = w[i]
            np.testing.assert_array_equal(x, ex)
            np.testing.assert_array_equal(y, ey)
            assert s == es
        ids = np.arange(len(w), dtype=np.int32)[::-1].copy()
        x, y, s = w.gather(ids)
        np.testing.assert_array_equal(x, np.array([e[0] for e in expected])[::-1])
        np.testing.assert_array_equal(y, np.array([e[1] for e in expected]).reshape(len(expected), *w.y_shape)[::-1])
        np.testing.assert_array_equal(s, [e[2] for e in expected][::-1])
        np.testing.assert_array_equal(w.series_of(np.arange(len(w))), [e[2] for e in expected])


@given(many_series(), st.integers(1, 7), st.booleans())
def test_a_loader_over_many_series_hands_out_every_window_once(case, batch_size, drop_last):
    lengths, n_features, _, geometry = case
    values = make_values(lengths, n_features)
    w = fb.SlidingWindows(values, **geometry, return_series_id=True)
    loader = fb.WindowLoader(w, batch_size=batch_size, shuffle=True, seed=1, drop_last=drop_last, prefetch=1)
    batches = list(loader)
    assert len(batches) == len(loader)
    got = sorted((tuple(x.reshape(-1).tolist()), int(s)) for b in batches for x, s in zip(b[0], b[2]))
    expected = sorted((tuple(np.asarray(e[0]).reshape(-1).tolist()), e[2]) for e in expected_windows(values, geometry))
    if drop_last:
        assert len(got) == len(loader) * batch_size and set(got) <= set(expected)
    else:
        assert got == expected


def test_windows_never_cross_a_series_boundary():
    # Two series whose junction would make windows [.., 9, 100, ..] if they were joined.
    a, b = np.arange(10.0), np.arange(100.0, 110.0)
    w = fb.SlidingWindows([a, b], window=4, horizon=2)
    x, y = w.gather(np.arange(len(w), dtype=np.int32))
    assert len(w) == 2 * (10 - 6 + 1)
    rows = np.concatenate([x, y], axis=1)
    assert np.all(np.diff(rows, axis=1) == 1)  # every window is consecutive steps of one series
    joined = fb.SlidingWindows(np.concatenate([a, b]), lengths=[10, 10], window=4, horizon=2)
    np.testing.assert_array_equal(joined.gather(np.arange(len(w), dtype=np.int32))[0], x)


def test_a_series_too_short_for_one_window_contributes_none():
    w = fb.SlidingWindows([np.arange(3.0), np.arange(10.0), np.zeros(0), np.arange(5.0)], window=4, horizon=1)
    assert list(w.series_offsets) == [0, 0, 6, 6, 7]
    assert len(w) == 7 and w.locate(6) == (3, 0)


def test_views_of_the_series_not_copies():
    a = np.arange(40.0).reshape(20, 2)
    b = np.arange(100.0, 160.0).reshape(30, 2)
    w = fb.SlidingWindows([a, b], window=3)
    x, y = w[len(w) - 1]
    assert np.shares_memory(x, b) and np.shares_memory(y, b)
    assert w.data.nbytes == a.nbytes + b.nbytes  # the list stands for the rows; nothing was joined
    cat = np.concatenate([a, b])
    w2 = fb.SlidingWindows(cat, lengths=[20, 30], window=3)
    assert np.shares_memory(w2[0][0], cat) and w2.data is cat


def test_normalize_uses_the_statistics_of_all_series():
    rng = np.random.default_rng(0)
    parts = [rng.normal(k, 1 + k, size=(50 + 10 * k, 3)) for k in range(4)]
    w = fb.SlidingWindows(parts, window=4)
    loader = fb.WindowLoader(w, batch_size=1000, normalize=True, dtype=np.float64)
    mean, std = feature_stats(np.concatenate(parts))
    np.testing.assert_allclose(loader._mean, mean)
    np.testing.assert_allclose(loader._std, std)
    (x, _), = list(loader)
    first = (parts[0][:4] - mean) / std
    np.testing.assert_allclose(x[0].numpy(), first)


def test_torch_tensors_and_float16_series_share_a_list():
    parts = [torch.arange(12, dtype=torch.float16).reshape(6, 2), np.arange(100, 116, dtype=np.float16).reshape(8, 2)]
    w = fb.SlidingWindows(parts, window=2, horizon=1)
    x, y = w.gather(np.arange(len(w), dtype=np.int32))
    assert x.dtype == np.float16 and len(w) == 4 + 6
    np.testing.assert_array_equal(x[4], parts[1][:2])


def test_many_series_take_every_placement_and_auto_picks_host_on_the_cpu():
    """Many series are gathered on the device too (tests/test_placement_parity.py); without CUDA, host."""
    w = fb.SlidingWindows([np.arange(10.0), np.arange(10.0)], window=2)
    with pytest.raises(ValueError, match="placement='device' needs a CUDA device"):
        fb.WindowLoader(w, batch_size=2, placement="device")
    assert fb.WindowLoader(w, batch_size=2).placement == "host"


def test_repr_names_the_series():
    w = fb.SlidingWindows([np.arange(10.0), np.arange(20.0)], window=2)
    assert "n_series=2" in repr(w)


@pytest.mark.parametrize(
    "data,kwargs,error,match",
    [
        ([], {}, ValueError, "at least one series"),
        ([np.zeros(10), np.zeros((10, 2))], {}, ValueError, "all 1-D or all 2-D"),
        ([np.zeros((10, 2)), np.zeros((10, 3))], {}, ValueError, "same number of features.*3 in data\\[1\\]"),
        ([np.zeros(10), np.zeros(10, np.float32)], {}, TypeError, "share one dtype"),
        ([np.zeros(10), "abc"], {}, TypeError, "list holding str at data\\[1\\]"),
        ([np.zeros(10), np.zeros((2, 2, 2))], {}, ValueError, "data\\[1\\] must have shape"),
        ([np.zeros(10), np.ones(10, dtype=bool)], {}, TypeError, "data\\[1\\] must have a real numeric dtype"),
        ([np.zeros(2), np.zeros(3)], {}, ValueError, "every series is too short for one window: the longest has 3 steps"),
        ([np.zeros((5, 0))], {}, ValueError, "at least one feature"),
        (np.zeros(10), dict(lengths=[4, 5]), ValueError, "add up to the 10 rows"),
        (np.zeros(10), dict(lengths=[11, -1]), ValueError, "lengths must be >= 0"),
        (np.zeros(10), dict(lengths=[[5, 5]]), TypeError, "lengths must be a non-empty list"),
        (np.zeros(10), dict(lengths=[5.0, 5.0]), TypeError, "lengths must be a non-empty list"),
        ([np.zeros(10)], dict(lengths=[10]), ValueError, "a list of series has its own lengths"),
    ],
)
def test_unusable_series_are_refused(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        fb.SlidingWindows(data, window=2, horizon=2, **kwargs)


def test_from_npy_reads_the_file_in_place(tmp_path):
    values = series(1000, 3, np.float32)
    np.save(tmp_path / "s.npy", values)
    w = fb.SlidingWindows.from_npy(tmp_path / "s.npy", window=8, lengths=[400, 600])
    assert isinstance(w.data, np.memmap) and not w.data.flags.writeable
    np.testing.assert_array_equal(w[len(w) - 1][0], values[-9:-1])
    assert w.n_series == 2 and len(w) == (400 - 9 + 1) + (600 - 9 + 1)
