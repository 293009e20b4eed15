"""The per-window torch DataLoader baseline, and fastbatch's speed-up over it."""

from __future__ import annotations

import torch

import fastbatch as fb
from bench import baselines as bl

# Textbook setting, small: 1-D series, window 10, horizon 1, batch 32.
N, WINDOW, BATCH = 20_000, 10, 32


def _epoch(it) -> int:
    samples = 0
    for x, _ in it:
        samples += x.shape[0]
    return samples


def test_per_window_dataloader_epoch(benchmark, record_rate, series):
    dataset = bl.WindowDataset(series(N), WINDOW, 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)

    samples = benchmark.pedantic(_epoch, setup=lambda: ((iter(loader),), {}), rounds=3, warmup_rounds=1)

    assert samples == len(dataset)
    record_rate(samples, 2 * samples * (WINDOW + 1) * 4)


def test_speedup_over_per_window_dataloader(benchmark, record_rate, record_speedup, series):
    """extra_info["speedup_vs_dataloader"]: fastbatch samples/s over the per-window DataLoader's, whole epochs.

    Both are timed in alternation (see ``record_speedup``), so a busy spell of
    a shared machine hits both alike.
    """
    data = series(N)
    windows = fb.SlidingWindows(data, window=WINDOW, horizon=1)
    loader = fb.WindowLoader(windows, batch_size=BATCH, shuffle=True, seed=0)
    per_window = torch.utils.data.DataLoader(bl.WindowDataset(data, WINDOW, 1), batch_size=BATCH, shuffle=True)

    samples = benchmark.pedantic(_epoch, setup=lambda: ((iter(loader),), {}), rounds=5, warmup_rounds=1)
    assert samples == len(windows)
    record_rate(samples)
    record_speedup(lambda: _epoch(iter(loader)), lambda: _epoch(iter(per_window)))
