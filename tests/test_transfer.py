"""Loader options for devices, dtypes and standardisation; CUDA paths marked ``gpu``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastbatch as fb
from fastbatch.normalize import feature_stats

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def series():
    return np.random.default_rng(2).normal(3.0, 2.0, size=(5_000, 3))


def _reference(w: fb.SlidingWindows, ids, mean=None, std=None, dtype=np.float32):
    xs, ys = zip(*(w[int(i)] for i in ids))
    x, y = np.stack(xs).astype(np.float64), np.stack(ys).astype(np.float64)
    if mean is not None:
        x = (x - mean) / std
        y = (y - mean[w.target_columns]) / std[w.target_columns]
    return x.astype(dtype), y.astype(dtype)


def test_dtype_cast_happens_in_the_gather(series):
    w = fb.SlidingWindows(series, window=12, horizon=3)
    loader = fb.WindowLoader(w, batch_size=50, dtype=np.float32)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    rx, ry = _reference(w, range(50))
    assert np.array_equal(x.numpy(), rx) and np.array_equal(y.numpy(), ry)


def test_bfloat16_batches_equal_the_float32_batch_rounded(series):
    w = fb.SlidingWindows(series, window=12, horizon=3)
    x16, _ = next(iter(fb.WindowLoader(w, batch_size=20, dtype=torch.bfloat16)))
    x32, _ = next(iter(fb.WindowLoader(w, batch_size=20, dtype=torch.float32)))
    assert x16.dtype == torch.bfloat16
    assert torch.equal(x16, x32.to(torch.bfloat16))


def test_normalize_true_uses_the_statistics_of_the_data(series):
    w = fb.SlidingWindows(series, window=8, horizon=2, target_columns=[2, 0])
    loader = fb.WindowLoader(w, batch_size=len(w), dtype="float32", normalize=True)
    x, y = next(iter(loader))
    mean, std = series.mean(axis=0), series.std(axis=0)
    rx, ry = _reference(w, range(len(w)), mean, std)
    np.testing.assert_allclose(x.numpy(), rx, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), ry, rtol=1e-6, atol=1e-6)
    all_x = x.numpy()[:, 0, :]  # first step of every window: nearly all rows
    assert abs(all_x.mean(axis=0)).max() < 0.05


def test_normalize_with_given_statistics_matches_reference_bits(series):
    w = fb.SlidingWindows(series, window=8, horizon=2)
    mean, std = np.array([1.0, 2.0, 3.0]), np.array([0.5, 4.0, 2.0])
    x, y = next(iter(fb.WindowLoader(w, batch_size=64, shuffle=True, seed=9, normalize=(mean, std), dtype="float32")))
    # The same seed gives the same windows: standardise the raw batch in numpy.
    raw_x, raw_y = next(iter(fb.WindowLoader(w, batch_size=64, shuffle=True, seed=9)))
    expect_x = ((raw_x.numpy().astype(np.float64) - mean) / std).astype(np.float32)
    expect_y = ((raw_y.numpy().astype(np.float64) - mean) / std).astype(np.float32)
    assert np.array_equal(x.numpy(), expect_x) and np.array_equal(y.numpy(), expect_y)


def test_feature_stats_are_blockwise_exact_and_ignore_nan(monkeypatch):
    import fastbatch.normalize as norm

    monkeypatch.setattr(norm, "_BLOCK_ROWS", 37)
    data = np.random.default_rng(0).normal(1e6, 3.0, size=(1000, 2))
    data[5, 1] = np.nan
    mean, std = feature_stats(data)
    np.testing.assert_allclose(mean, np.nanmean(data, axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, np.nanstd(data, axis=0), rtol=1e-9)
    const = np.ones((10, 1))
    assert feature_stats(const)[1][0] == 1.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"device": "tpu"}, ValueError, "device must be"),
        ({"device": 3.5}, TypeError, "device must be"),
        ({"device": "meta"}, ValueError, "CPU or CUDA"),
        ({"prefetch": -1}, ValueError, "prefetch must be an integer >= 0, got prefetch=-1"),
        ({"prefetch": 1.5}, TypeError, "prefetch must be an integer"),
        ({"placement": "gpu"}, ValueError, "placement must be one of"),
        ({"placement": "device"}, ValueError, "placement='device' needs a CUDA device"),
        ({"normalize": "yes"}, TypeError, "normalize must be None, True"),
        ({"normalize": ([0.0, 0.0, 0.0], [1.0, 0.0, 1.0])}, ValueError, "positive finite stds"),
        ({"normalize": True, "dtype": "int32"}, TypeError, "normalize needs a float32 or float64"),
        ({"dtype": "complex64"}, TypeError, "real numeric dtype"),
        ({"dtype": "not-a-dtype"}, TypeError, "dtype must be a numeric dtype"),
    ],
)
def test_bad_loader_options_are_named(series, kwargs, error, match):
    w = fb.SlidingWindows(series, window=8)
    with pytest.raises(error, match=match):
        fb.WindowLoader(w, batch_size=4, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_a_gpu_is_a_clear_error(series):
    w = fb.SlidingWindows(series, window=8)
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        fb.WindowLoader(w, batch_size=4, device="cuda")


def _cpu_batches(w, **kwargs):
    return [(x.clone(), y.clone()) for x, y in fb.WindowLoader(w, device="cpu", **kwargs)]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("placement", ["host", "device"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_cuda_batches_equal_cpu_bits(series, placement, prefetch):
    w = fb.SlidingWindows(series, window=12, horizon=3, target_columns=[1])
    kwargs = dict(batch_size=100, shuffle=True, seed=4, dtype="float32", normalize=True)
    expected = _cpu_batches(w, **kwargs)
    loader = fb.WindowLoader(w, device="cuda", placement=placement, prefetch=prefetch, **kwargs)
    got = [(x, y) for x, y in loader]
    assert len(got) == len(expected)
    for (x, y), (rx, ry) in zip(got, expected):
        assert x.is_cuda and y.is_cuda
        assert torch.equal(x.cpu(), rx) and torch.equal(y.cpu(), ry)


@pytest.mark.gpu
@gpu
def test_cuda_batches_are_the_users_to_keep(series):
    w = fb.SlidingWindows(series.astype(np.float32), window=12)
    loader = fb.WindowLoader(w, batch_size=64, device="cuda", placement="host", prefetch=2, shuffle=True, seed=1)
    kept = list(loader)
    torch.cuda.synchronize()
    expected = _cpu_batches(w, batch_size=64, shuffle=True, seed=1)
    for (x, _), (rx, _) in zip(kept, expected):
        assert torch.equal(x.cpu(), rx)


@pytest.mark.gpu
@gpu
def test_cuda_univariate_and_bfloat16(series):
    w = fb.SlidingWindows(series[:, 0], window=10, horizon=2)
    for placement in ("host", "device"):
        x, y = next(iter(fb.WindowLoader(w, batch_size=8, device="cuda", placement=placement, dtype=torch.bfloat16)))
        assert x.shape == (8, 10) and y.shape == (8, 2) and x.dtype == torch.bfloat16
        rx, _ = next(iter(fb.WindowLoader(w, batch_size=8, dtype="float32")))
        assert torch.equal(x.cpu(), rx.to(torch.bfloat16))


@pytest.mark.parametrize("univariate", [False, True])
@pytest.mark.parametrize("normalize", [None, True])
def test_device_resident_arithmetic_equals_the_host_kernel(series, univariate, normalize):
    """The device path's index arithmetic, run by torch on the CPU, gives the host kernel's bits.

    On a GPU the same torch operations run on the device (tests marked gpu
    and bench/gpu_check.py compare the CUDA results).
    """
    data = series[:, 1] if univariate else series
    kwargs = {} if univariate else {"target_columns": [2, 0]}
    w = fb.SlidingWindows(data, window=9, horizon=3, stride=2, dilation=3, **kwargs)
    host = fb.WindowLoader(w, batch_size=33, shuffle=True, seed=11, dtype="float32", normalize=normalize, prefetch=0)
    resident = fb.WindowLoader(w, batch_size=33, shuffle=True, seed=11, dtype="float32", normalize=normalize)
    resident._path = "resident"  # on the CPU: exercises DeviceWindows without CUDA
    got, expected = list(resident), list(host)
    assert len(got) == len(expected) == len(host)
    for (x, y), (rx, ry) in zip(got, expected):
        assert x.shape == rx.shape and y.shape == ry.shape
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_upload_in_blocks_handles_strided_data(monkeypatch):
    import fastbatch.device as device

    monkeypatch.setattr(device, "_UPLOAD_ROWS_BYTES", 100)
    base = np.arange(3000, dtype=np.float64).reshape(500, 6)
    view = base[::3, ::2]
    out = device.upload(view, torch.device("cpu"))
    assert np.array_equal(out.numpy(), view)
