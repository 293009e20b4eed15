"""The per-window torch DataLoader baseline, and fastbatch's speed-up over it."""

from __future__ import annotations

import statistics
import time

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


def test_speedup_over_per_window_dataloader(benchmark, record_rate, series):
    """extra_info["speedup"]: fastbatch samples/s over the per-window DataLoader's.

    Whole epochs of both are timed in alternation (so a busy spell of a shared
    machine hits both alike); the speed-up is the ratio of the median epochs.
    """
    data = series(N)
    windows = fb.SlidingWindows(data, window=WINDOW, horizon=1)
    loader = fb.WindowLoader(windows, batch_size=BATCH, shuffle=True, seed=0)
    per_window = torch.utils.data.DataLoader(bl.WindowDataset(data, WINDOW, 1), batch_size=BATCH, shuffle=True)

    samples = benchmark.pedantic(_epoch, setup=lambda: ((iter(loader),), {}), rounds=5, warmup_rounds=1)
    assert samples == len(windows)
    record_rate(samples)

    rounds = 1 if benchmark.disabled else 3
    times: dict[str, list[float]] = {"fastbatch": [], "dataloader": []}
    for _ in range(rounds):
        for name, source in (("fastbatch", loader), ("dataloader", per_window)):
            t0 = time.perf_counter()
            assert _epoch(iter(source)) == samples
            times[name].append(time.perf_counter() - t0)
    speedup = statistics.median(times["dataloader"]) / statistics.median(times["fastbatch"])
    benchmark.extra_info["speedup"] = speedup
    benchmark.extra_info["fastbatch_epoch_s"] = statistics.median(times["fastbatch"])
    benchmark.extra_info["dataloader_epoch_s"] = statistics.median(times["dataloader"])
