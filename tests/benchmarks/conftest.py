"""Shared pieces of the pytest-benchmark suites.

Sizes are small on purpose: each suite takes seconds, and under
``--benchmark-disable`` every test runs its target once, as a quick check that
the benchmarked code still works.  The figures for docs/performance.md come
from ``python -m bench.speed``, not from here.
"""

from __future__ import annotations

import numpy as np
import pytest


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
