"""WindowLoader: one shuffled epoch per round, from a fresh iterator (its order included).

Each setting also records its speed-up over the per-window DataLoader in the
same run (``extra_info["speedup_vs_dataloader"]``), which CI checks.
"""

from __future__ import annotations

import pytest

import fastbatch as fb

# (steps, features, window, batch)
SETTINGS = {
    "textbook": (200_000, 1, 10, 32),
    "wide": (200_000, 8, 64, 512),
}


def _epoch(it) -> int:
    samples = 0
    for x, _ in it:
        samples += x.shape[0]
    return samples


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_loader_epoch(benchmark, record_rate, record_speedup, per_window_dataloader, series, setting):
    n, features, window, batch = SETTINGS[setting]
    data = series(n, features)
    windows = fb.SlidingWindows(data, window=window, horizon=1)
    loader = fb.WindowLoader(windows, batch_size=batch, shuffle=True, seed=0)

    samples = benchmark.pedantic(_epoch, setup=lambda: ((iter(loader),), {}), rounds=5, warmup_rounds=1)

    assert samples == len(windows)
    record_rate(samples, 2 * samples * windows.window_nbytes)
    record_speedup(lambda: _epoch(iter(loader)), per_window_dataloader(data, window, 1, batch))
