"""order="block": blocks of consecutive windows shuffled, then windows within a pool of blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastbatch as fb
from fastbatch.order import BLOCK_BYTES, POOL_BLOCKS, EpochOrder, resolve_order
from helpers_orders import kernel_ids, reference_block_order
from reference import MASK64, series


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 63, 64, 65, 255, 257, 1000, 4099, 65537, 1_000_003])
@pytest.mark.parametrize("block", [(1, 1), (1, 8), (4, 1), (5, 3), (64, 8), (1000, 4), (2**20, 8)])
def test_block_order_is_a_permutation(n, block):
    for key in (0, 0xDEADBEEF, MASK64):
        ids = kernel_ids(n, "block", key, block=block)
        assert np.array_equal(np.sort(ids), np.arange(n)), (n, block, key)


@given(st.integers(1, 400), st.integers(1, 12), st.integers(1, 5), st.integers(0, MASK64))
def test_block_kernel_is_the_reference(n, block_windows, pool_blocks, key):
    got = kernel_ids(n, "block", key, block=(block_windows, pool_blocks))
    assert list(got) == reference_block_order(n, key, block_windows, pool_blocks)


def runs(ids: np.ndarray, n: int) -> int:
    """Runs of consecutive ids (modulo n: the rotation may wrap a block round the end)."""
    s = np.sort(ids)
    breaks = np.count_nonzero(np.diff(s) != 1)
    wrap = 1 if (s[0] == 0 and s[-1] == n - 1 and breaks) else 0
    return breaks + 1 - wrap


@pytest.mark.parametrize("n,block_windows,pool_blocks", [(100_003, 500, 4), (65_536, 64, 8), (10_000, 100, 1)])
def test_each_pool_reads_a_few_runs_of_neighbouring_windows(n, block_windows, pool_blocks):
    ids = kernel_ids(n, "block", 42, block=(block_windows, pool_blocks))
    pool = block_windows * pool_blocks
    starts = list(range(0, n - pool - n % block_windows, pool))
    for q, start in enumerate(starts[:-1]):
        # A pool is pool_blocks blocks, and the blocks of a pool are rarely neighbours.
        assert runs(ids[start : start + pool], n) <= pool_blocks, q
    # Within a pool the windows are shuffled, not read block after block.
    first = ids[:pool]
    assert np.mean(np.abs(np.diff(first)) == 1) < 0.05
    # Across the epoch, blocks come in a shuffled order.
    block_of_pool = ids[: len(starts) * pool].reshape(len(starts), pool).min(axis=1)
    assert not np.all(np.diff(block_of_pool) > 0)


def test_block_order_changes_with_the_epoch_and_the_partial_block_moves():
    n, block = 1003, (10, 4)
    a = EpochOrder(n, seed=1, epoch=0, kind="block", block=block).ids(0, n)
    b = EpochOrder(n, seed=1, epoch=1, kind="block", block=block).ids(0, n)
    assert np.mean(a == b) < 0.05
    # The 3 windows of the partial block sit in the last pool: a different run each epoch.
    tails = {tuple(sorted(EpochOrder(n, seed=1, epoch=e, kind="block", block=block).ids(0, n)[-43:] % 10))
             for e in range(5)}
    assert len(tails) > 1


def test_default_block_covers_about_block_bytes_of_rows():
    spec = resolve_order("block", False, 10**9, 32)
    assert (spec.kind, spec.block_windows, spec.pool_blocks) == ("block", BLOCK_BYTES // 32, POOL_BLOCKS)
    assert resolve_order("block", False, 10, 10 * BLOCK_BYTES).block_windows == 1
    spec = resolve_order(fb.BlockShuffle(block_windows=7, pool_blocks=3), False, 100, 4)
    assert (spec.block_windows, spec.pool_blocks) == (7, 3)


def test_a_loader_in_block_order_delivers_every_window_of_every_series_once():
    data = [series(300 + 7 * k, 2, np.float32) + 10_000 * k for k in range(5)]
    w = fb.SlidingWindows(data, window=6, horizon=2, stride=3, return_series_id=True)
    loader = fb.WindowLoader(w, batch_size=10, order=fb.BlockShuffle(block_windows=4, pool_blocks=2), seed=0)
    assert loader.shuffle and loader.order.kind == "block"
    batches = list(loader)
    x, y, s = (np.concatenate([b[k].numpy() for b in batches]) for k in range(3))
    assert x.shape[0] == len(w)
    keys = sorted(map(tuple, x[:, 0, :]))
    expected = sorted(tuple(w[i][0][0]) for i in range(len(w)))
    assert keys == expected
    assert np.array_equal(x[:, 0, 0] // 10_000, s)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(block_windows=0), ValueError, "block_windows must be an integer >= 1"),
    (dict(pool_blocks=0), ValueError, "pool_blocks must be an integer >= 1"),
    (dict(block_windows=2.5), TypeError, "block_windows must be an integer"),
])
def test_block_sizes_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        fb.BlockShuffle(**kwargs)
