"""Shared pieces of the pytest-benchmark suites.

Sizes are small on purpose: each suite takes seconds, and under
``--benchmark-disable`` every test runs its target once, as a quick check that
the benchmarked code still works.  The figures for docs/performance.md come
from ``python -m bench.speed``, not from here.

The loader suites also put fastbatch's speed-up over the per-window
``DataLoader``, measured in the same run, into ``extra_info`` (see
:func:`record_speedup`): the one figure CI fails on (``bench.ci_compare``).
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Callable, Iterable

import numpy as np
import pytest
import torch

from bench.baselines import WindowDataset
from bench.ci_compare import RATIO_KEY


@pytest.fixture(scope="session")
def series():
    """``series(n, features)``: float32 data in [0, 1), ``(n,)`` when ``features == 1``, cached per shape."""
    cache: dict[tuple[int, int], np.ndarray] = {}

    def make(n: int, features: int = 1) -> np.ndarray:
        if (n, features) not in cache:
            rng = np.random.default_rng(n * 31 + features)
            cache[(n, features)] = rng.random((n,) if features == 1 else (n, features), dtype=np.float32)
        return cache[(n, features)]

    return make


@pytest.fixture
def record_rate(benchmark):
    """``record_rate(samples, nbytes=None)``: put samples/s and GB/s of one round into ``extra_info``.

    ``nbytes`` counts bytes read + written, as ``bench.speed`` does.  Returns
    the samples/s of the median round, or ``None`` when benchmarks are disabled.
    """

    def record(samples: int, nbytes: int | None = None) -> float | None:
        benchmark.extra_info["samples_per_round"] = int(samples)
        if nbytes is not None:
            benchmark.extra_info["bytes_per_round"] = int(nbytes)
        if benchmark.stats is None:  # --benchmark-disable: nothing was timed
            return None
        median = benchmark.stats.stats.median
        benchmark.extra_info["samples_per_s"] = samples / median
        if nbytes is not None:
            benchmark.extra_info["gb_per_s"] = nbytes / median / 1e9
        return samples / median

    return record


def count_samples(batches: Iterable) -> int:
    samples = 0
    for x, _ in batches:
        samples += x.shape[0]
    return samples


@pytest.fixture(scope="session")
def per_window_dataloader():
    """``per_window_dataloader(data, window, horizon, batch_size)``: a round of the textbook baseline.

    A round is about 4096 windows from a fresh shuffled ``DataLoader``
    iterator over :class:`bench.baselines.WindowDataset`: its cost is per
    window, so a few thousand windows time it as well as an epoch does.
    """

    def make(data: np.ndarray, window: int, horizon: int, batch_size: int, samples: int = 4096) -> Callable[[], int]:
        loader = torch.utils.data.DataLoader(WindowDataset(data, window, horizon), batch_size=batch_size, shuffle=True)
        n_batches = max(4, samples // batch_size)
        return lambda: count_samples(itertools.islice(iter(loader), n_batches))

    return make


@pytest.fixture
def record_speedup(benchmark):
    """``record_speedup(ours, dataloader)``: fastbatch's samples/s over the per-window DataLoader's, same run.

    ``ours`` and ``dataloader`` each run one round and return its samples; the
    rounds alternate (so a busy spell of a shared machine hits both alike) and
    the ratio is that of the median rates.  Recorded in
    ``extra_info["speedup_vs_dataloader"]``, with both rates.
    """

    def record(ours: Callable[[], int], dataloader: Callable[[], int]) -> float:
        rates: dict[str, list[float]] = {"fastbatch": [], "dataloader": []}
        for _ in range(1 if benchmark.disabled else 3):
            for name, run in (("fastbatch", ours), ("dataloader", dataloader)):
                t0 = time.perf_counter()
                samples = run()
                rates[name].append(samples / (time.perf_counter() - t0))
        fastbatch, baseline = statistics.median(rates["fastbatch"]), statistics.median(rates["dataloader"])
        benchmark.extra_info["fastbatch_samples_per_s_alternating"] = fastbatch
        benchmark.extra_info["dataloader_samples_per_s"] = baseline
        benchmark.extra_info[RATIO_KEY] = fastbatch / baseline
        return fastbatch / baseline

    return record
