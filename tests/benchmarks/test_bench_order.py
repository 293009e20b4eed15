"""Epoch order generation: the cost a shuffled epoch pays before its first batch."""

from __future__ import annotations

import numpy as np
import pytest

from fastbatch import order

N_WINDOWS = 2_000_000


def test_stored_shuffle(benchmark, record_rate):
    perm = benchmark.pedantic(order.shuffled, args=(N_WINDOWS, 0, 1), rounds=5, warmup_rounds=1)
    assert np.array_equal(np.sort(perm), np.arange(N_WINDOWS))
    record_rate(N_WINDOWS)


def _computed_kinds():
    return [k for k in getattr(order, "ORDERS", ()) if k in ("feistel",)]


@pytest.mark.parametrize("kind", _computed_kinds() or [pytest.param("feistel", marks=pytest.mark.skip("no computed orders"))])
def test_computed_order(benchmark, record_rate, kind):
    """A computed (not stored) permutation, evaluated for the whole epoch in one call."""

    def epoch_ids():
        return order.EpochOrder(N_WINDOWS, kind=kind, seed=0, epoch=1).ids(0, N_WINDOWS)

    ids = benchmark.pedantic(epoch_ids, rounds=5, warmup_rounds=1)
    assert np.array_equal(np.sort(ids), np.arange(N_WINDOWS))
    record_rate(N_WINDOWS)
