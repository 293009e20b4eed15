"""The panel gather kernel against its plain-numpy reference (tests/reference_frames.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastbatch.panel import (Panel, PanelArrays, PanelOptions, PanelTime, Scaler, WindowIndex, empty_arrays,
                             gather, runs, split, windows)
from reference import lay_out
from reference_frames import reference_gather_panel

# The 2-D layouts of tests/reference.py that hold numpy arrays.
LAYOUTS = ("C", "F", "rows", "cols", "readonly", "memmap")


@st.composite
def panels(draw, directory):
    """A random panel (values of a random dtype and layout) and its options."""
    window, horizon = draw(st.integers(1, 6)), draw(st.integers(0, 4))
    stride = draw(st.integers(1, 5))
    n_series = draw(st.integers(1, 5))
    lengths = np.array([draw(st.integers(0, window + horizon + 15)) for _ in range(n_series)], np.int64)
    lengths[draw(st.integers(0, n_series - 1))] = window + horizon + draw(st.integers(0, 10))
    n_targets, n_past = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    n_future, n_static = draw(st.integers(0, 3)), draw(st.integers(0, 2))
    source = draw(st.sampled_from(["float64", "float32", "int64", "bool"]))
    # One layout for the three blocks: each combination of array types is a
    # Numba specialisation to compile, and every layout is still drawn.
    layout = draw(st.sampled_from(LAYOUTS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = int(lengths.sum())

    def block(cols, rows=n):
        a = rng.normal(size=(rows, cols)) * 50
        a = a > 0 if source == "bool" else a.astype(source)
        return lay_out(a, layout, directory) if a.size else a  # an empty file cannot be mapped

    options = PanelOptions(id="id", time="t", target=tuple(f"y{j}" for j in range(n_targets)),
                           past=tuple(f"p{j}" for j in range(n_past)), future=tuple(f"f{j}" for j in range(n_future)),
                           static=tuple(f"s{j}" for j in range(n_static)), window=window, horizon=horizon,
                           stride=stride, dtype=np.dtype(draw(st.sampled_from(["float32", "float64"]))))
    time = PanelTime(np.zeros(n_series, np.int64), np.ones(n_series, np.int64))
    panel = Panel(block(n_targets + n_past), block(n_future), block(n_static, n_series), lengths,
                  np.arange(n_series), time, options)
    return panel


def check_against_reference(panel: Panel, index: WindowIndex, ids: np.ndarray) -> None:
    got = gather(panel, index, ids)
    sc = index.scaler
    stats = {} if sc is None else dict(center=sc.center, scale=sc.scale, future_center=sc.future_center,
                                       future_scale=sc.future_scale)
    o = panel.options
    want = reference_gather_panel(panel.values, panel.future, panel.static, index.first_rows, index.offsets, ids,
                                  index.stride, o.window, o.horizon, panel.n_targets, o.dtype, **stats)
    for name in PanelArrays._fields:
        a = getattr(got, name)
        assert a.dtype == want[name].dtype, name
        np.testing.assert_array_equal(a, want[name], err_msg=name)


@given(data=st.data())
def test_gather_matches_reference(data, scratch):
    panel = data.draw(panels(scratch))
    index = windows(panel)
    if len(index) == 0:
        return
    ids = np.array(data.draw(st.lists(st.integers(0, len(index) - 1), max_size=40)), dtype=np.int64)
    check_against_reference(panel, index, ids)


@given(data=st.data(), kind=st.sampled_from(["standard", "robust"]))
def test_scaled_gather_matches_reference(data, kind, scratch):
    from dataclasses import replace

    panel = data.draw(panels(scratch))
    panel = replace(panel, options=replace(panel.options, scale=kind))
    index = windows(panel)
    if len(index) == 0:
        return
    ids = np.array(data.draw(st.lists(st.integers(0, len(index) - 1), max_size=40)), dtype=np.int64)
    check_against_reference(panel, index, ids)


@given(data=st.data())
def test_split_windows_gather_matches_reference(data, scratch):
    panel = data.draw(panels(scratch))
    last = data.draw(st.integers(1, int(panel.lengths.max())))
    try:
        train, valid = split(panel, last=last)
    except ValueError:
        return  # a side without windows: test_frames checks the message
    for index in (train, valid):
        ids = np.arange(len(index), dtype=np.int64)
        check_against_reference(panel, index, ids)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("scale", [None, "robust"])
def test_row_major_panels_take_the_runs_kernel_and_others_the_strided_one(layout, scale, scratch, monkeypatch):
    """Row-major values and future (C, read-only, memory-mapped) are copied as runs, any other layout by the
    strided kernel; both give the reference's windows, with a static block of odd strides beside them."""
    from fastbatch import panel as pn

    rng = np.random.default_rng(2)
    o = PanelOptions(id="id", time="t", target=("a", "b"), past=("p",), future=("f", "g"), static=("s", "u"),
                     window=5, horizon=3, stride=2, scale=scale)
    values = lay_out(rng.normal(size=(80, 3)).astype(np.float32), layout, scratch)
    future = lay_out(rng.normal(size=(80, 2)), layout, scratch)
    static = lay_out(rng.normal(size=(3, 2)), "cols", scratch)
    panel = Panel(values, future, static, np.array([40, 9, 31], np.int64), np.arange(3),
                  PanelTime(np.zeros(3, np.int64), np.ones(3, np.int64)), o)
    row_major = layout in ("C", "readonly", "memmap")
    assert runs(panel) == row_major
    called = []
    run_parallel = pn.run_parallel
    monkeypatch.setattr(pn, "run_parallel", lambda kernel, *args: called.append(kernel) or run_parallel(kernel, *args))
    index = windows(panel)
    called.clear()
    check_against_reference(panel, index, rng.permutation(len(index)))
    assert called == [pn.gather_panel_runs if row_major else pn.gather_panel_kernel]


def test_every_window_once_in_order():
    """Window ids walk the series in order: ids 0..n-1 give (series, start) pairs in order, each once."""
    o = PanelOptions(id="id", time="t", target=("y",), window=3, horizon=2, stride=2)
    lengths = np.array([9, 4, 0, 6], np.int64)
    values = np.arange(lengths.sum(), dtype=np.float64)[:, None]
    panel = Panel(values, np.empty((19, 0)), np.empty((4, 0)), lengths, np.arange(4),
                  PanelTime(np.zeros(4, np.int64), np.ones(4, np.int64)), o)
    index = windows(panel)
    got = gather(panel, index, np.arange(len(index)))
    # Series 0 (rows 0-8): starts 0, 2, 4; series 1 (4 rows) is too short; series 3 (rows 13-18): 13.
    assert got.past[:, 0, 0].tolist() == [0, 2, 4, 13]
    assert got.series.tolist() == [0, 0, 0, 3]
    assert got.target[:, :, 0].tolist() == [[3, 4], [5, 6], [7, 8], [16, 17]]


def test_outputs_are_checked():
    o = PanelOptions(id="id", time="t", target=("y",), window=2, horizon=1)
    panel = Panel(np.zeros((5, 1)), np.zeros((5, 1)), np.zeros((1, 1)), np.array([5]), np.arange(1),
                  PanelTime(np.zeros(1, np.int64), np.ones(1, np.int64)), o)
    index = windows(panel)
    with pytest.raises(IndexError, match=r"\[0, 3\), got 3"):
        gather(panel, index, np.array([3]))
    out = empty_arrays(panel, 2)
    with pytest.raises(ValueError, match="out.past must be .* shape \\(1, 2, 1\\)"):
        gather(panel, index, np.array([0]), out=out)
    bad = out._replace(series=np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="out.series must be int64"):
        gather(panel, index, np.array([0, 1]), out=bad)
    got = gather(panel, index, np.array([0, 1]), out=out)
    assert got.past is out.past


def test_inverse_brings_scaled_targets_back():
    import torch

    rng = np.random.default_rng(0)
    o = PanelOptions(id="id", time="t", target=("a", "b"), past=("p",), window=4, horizon=3, scale="robust")
    lengths = np.array([20, 30], np.int64)
    values = rng.normal(size=(50, 3)) * [[10, 0.1, 5]] + [[100, -3, 0]]
    panel = Panel(values, np.empty((50, 0)), np.empty((2, 0)), lengths, np.array(["x", "y"], object),
                  PanelTime(np.zeros(2, np.int64), np.ones(2, np.int64)), o)
    scaled_index = windows(panel)
    plain_index = WindowIndex(scaled_index.first_rows, scaled_index.offsets, scaled_index.stride, None)
    ids = np.arange(len(scaled_index))
    scaled = gather(panel, scaled_index, ids)
    plain = gather(panel, plain_index, ids)
    back = scaled_index.scaler.inverse(scaled.target, scaled.series)
    np.testing.assert_allclose(back, plain.target, rtol=1e-5, atol=1e-4)
    back_t = scaled_index.scaler.inverse(torch.from_numpy(scaled.target), torch.from_numpy(scaled.series))
    assert isinstance(back_t, torch.Tensor) and back_t.dtype == torch.float32
    np.testing.assert_allclose(back_t.numpy(), plain.target, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scaled_index.scaler.transform(plain.target.astype(np.float64), plain.series),
                               scaled.target, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="n_targets=2"):
        scaled_index.scaler.inverse(scaled.target[..., :1], scaled.series)


def test_scaler_ignores_constant_and_empty_training_parts():
    o = PanelOptions(id="id", time="t", target=("y",), window=1, horizon=1)
    values = np.array([[5.0], [5.0], [5.0], [1.0], [3.0]])
    panel = Panel(values, np.empty((5, 0)), np.empty((2, 0)), np.array([3, 2]), np.arange(2),
                  PanelTime(np.zeros(2, np.int64), np.ones(2, np.int64)), o)
    sc = Scaler.fit(panel, "standard", np.array([3, 0]))
    assert sc.center.tolist() == [[5.0], [0.0]] and sc.scale.tolist() == [[1.0], [1.0]]


def test_serial_twins_in_worker_processes(monkeypatch):
    """DataLoader workers and forked children run the kernels' serial twins: same windows, same statistics."""
    from fastbatch import kernels

    rng = np.random.default_rng(1)
    o = PanelOptions(id="id", time="t", target=("y",), future=("f",), window=3, horizon=2, scale="robust")
    panel = Panel(rng.normal(size=(30, 1)), rng.normal(size=(30, 1)), np.zeros((2, 0)), np.array([12, 18]),
                  np.arange(2), PanelTime(np.zeros(2, np.int64), np.ones(2, np.int64)), o)
    index = windows(panel)
    want = gather(panel, index, np.arange(len(index)))
    monkeypatch.setattr(kernels, "_forked_after_launch", True)
    serial_index = windows(panel)
    np.testing.assert_array_equal(serial_index.scaler.center, index.scaler.center)
    got = gather(panel, serial_index, np.arange(len(index)))
    for name in PanelArrays._fields:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
