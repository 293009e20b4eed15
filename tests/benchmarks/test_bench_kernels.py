"""The gather kernel alone: random window ids into a preallocated chunk."""

from __future__ import annotations

import numpy as np
import pytest

import fastbatch as fb
from bench.baselines import window_views

# (steps, features, window, batch-sized chunk of windows)
SHAPES = {
    "textbook": (200_000, 1, 10, 32 * 1024),
    "wide": (400_000, 8, 64, 2048),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_gather_random_windows(benchmark, record_rate, series, shape):
    n, features, window, chunk = SHAPES[shape]
    data = series(n, features)
    windows = fb.SlidingWindows(data, window=window, horizon=1)
    ids = np.random.default_rng(0).permutation(len(windows))[:chunk].astype(np.int32)
    out_x = np.empty((chunk, window, features), np.float32)
    out_y = np.empty((chunk, 1, features), np.float32)

    x, y = benchmark.pedantic(windows.gather, args=(ids, out_x, out_y), rounds=20, warmup_rounds=2)

    xv, yv = window_views(data, window, 1)
    assert np.array_equal(x, xv[ids]) and np.array_equal(y, yv[ids])
    record_rate(chunk, 2 * chunk * windows.window_nbytes)
