"""O(1)-memory epoch orders: the keyed Feistel bijection, sharding by rank, and the threshold.

The plain-Python references are in tests/helpers_orders.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastbatch as fb
from fastbatch.kernels import domain_bits, permute_index, rotation
from fastbatch.order import STORED_SHUFFLE_MAX, EpochOrder, epoch_key, resolve_order, shard_size
from helpers_orders import kernel_ids, reference_permute
from reference import MASK64, mix64, reference_epoch_key, reference_shuffled_order

# -- the bijection ------------------------------------------------------------------

SIZES = sorted(
    set(range(1, 70))
    | {2**k + d for k in range(7, 21) for d in (-1, 0, 1)}
    | {101, 257, 997, 4099, 65521, 65537, 104729, 1_000_003, 3 * 2**18, 10**6}
)


@pytest.mark.parametrize("n", SIZES)
def test_feistel_order_is_a_permutation(n):
    for key in (0, 0x0123456789ABCDEF, MASK64):
        ids = kernel_ids(n, "feistel", key)
        assert np.array_equal(np.sort(ids), np.arange(n)), (n, key)


@given(st.integers(1, 5000), st.integers(0, MASK64), st.data())
def test_feistel_kernel_is_the_reference(n, key, data):
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start, min(n, start + 50)))
    got = kernel_ids(n, "feistel", key, start, stop)
    assert list(got) == [reference_permute(p, n, key) for p in range(start, stop)]


def test_feistel_reaches_past_2_32_windows_without_storing_them():
    # 2**40 windows: any position is computed on its own, in the int64 range.
    n = 2**40 + 12345
    order = EpochOrder(n, kind=resolve_order(None, True, n, 4).kind, seed=3, epoch=1)
    assert order.kind == "feistel" and order._perm is None
    tail = order.ids(n - 5, n)
    assert tail.dtype == np.int64 and ((0 <= tail) & (tail < n)).all() and len(set(tail.tolist())) == 5
    key = int(epoch_key(3, 1))
    assert list(tail) == [reference_permute(p, n, key) for p in range(n - 5, n)]


def test_feistel_order_depends_on_seed_and_epoch_and_is_reproducible():
    n = 1000
    a = EpochOrder(n, kind="feistel", seed=1, epoch=0).ids(0, n)
    assert np.array_equal(a, EpochOrder(n, kind="feistel", seed=1, epoch=0).ids(0, n))
    for other in (dict(seed=2, epoch=0), dict(seed=1, epoch=1)):
        b = EpochOrder(n, kind="feistel", **other).ids(0, n)
        assert np.mean(a == b) < 0.02
    assert int(epoch_key(1, 0)) == reference_epoch_key(1, 0)


def test_feistel_order_is_uniform_over_positions():
    # Every id lands at every position about equally often across keys.
    n, keys = 6, 6000
    counts = np.zeros((n, n), dtype=np.int64)
    un = np.uint64(n)
    for key in range(keys):
        k = np.uint64(mix64(key))
        shift = rotation(un, k)
        counts[np.arange(n), [permute_index(np.uint64(p), un, 3, k, shift) for p in range(n)]] += 1
    expected = keys / n  # 1000, standard deviation about 28
    assert np.abs(counts - expected).max() < 150, counts


def test_feistel_permutations_of_a_small_domain_look_random():
    # Pairs of positions: for a random permutation, where positions 0 and 1 go
    # is uniform over the n * (n - 1) ordered pairs.  The keys are fixed, so
    # the statistic is too: six rounds give 1.04 (sd of chi2/dof about 0.022),
    # four rounds 1.22, which this rejects.
    n = 64
    keys = 40 * n * (n - 1)
    un = np.uint64(n)
    bits = domain_bits(un)
    counts = np.zeros((n, n))
    for key in range(keys):
        k = np.uint64(mix64(key + 12345))
        shift = rotation(un, k)
        counts[permute_index(np.uint64(0), un, bits, k, shift), permute_index(np.uint64(1), un, bits, k, shift)] += 1
    off_diagonal = counts[~np.eye(n, dtype=bool)]
    chi2_per_dof = ((off_diagonal - 40.0) ** 2 / 40.0).sum() / (off_diagonal.size - 1)
    assert np.trace(counts) == 0 and chi2_per_dof < 1.12, chi2_per_dof


def test_feistel_order_looks_shuffled_at_scale():
    n = 1 << 20
    ids = kernel_ids(n, "feistel", 99).astype(np.float64)
    positions = np.arange(n, dtype=np.float64)
    assert abs(np.corrcoef(positions, ids)[0, 1]) < 0.01
    # Neighbours in the epoch are not neighbours in the series.
    assert np.mean(np.abs(np.diff(ids)) <= 16) < 0.001
    # Each half of the epoch draws from the whole range.
    assert abs(ids[: n // 2].mean() - n / 2) < n * 0.01


# -- which order, and how much it stores ------------------------------------------------------


def test_shuffle_is_stored_fisher_yates_up_to_the_threshold_and_computed_beyond():
    assert resolve_order(None, True, STORED_SHUFFLE_MAX, 4).kind == "shuffle"
    assert resolve_order(None, True, STORED_SHUFFLE_MAX + 1, 4).kind == "feistel"
    assert resolve_order("feistel", False, 10, 4).kind == "feistel"
    assert resolve_order(None, False, 10**12, 4).kind == "sequential"
    # Below the threshold the default order is still the golden Fisher-Yates one.
    n = 300
    ids = EpochOrder(n, kind=resolve_order(None, True, n, 4).kind, seed=5, epoch=2).ids(0, n)
    np.testing.assert_array_equal(ids, reference_shuffled_order(n, reference_epoch_key(5, 2)))


@pytest.mark.parametrize("order,match", [("random", "order must be one of"), (3, "order must be one of")])
def test_unknown_orders_are_refused(order, match):
    w = fb.SlidingWindows(np.arange(20.0), window=2)
    with pytest.raises(ValueError, match=match):
        fb.WindowLoader(w, batch_size=4, order=order)


def test_shuffle_true_with_a_sequential_order_is_a_contradiction():
    w = fb.SlidingWindows(np.arange(20.0), window=2)
    with pytest.raises(ValueError, match="contradicts"):
        fb.WindowLoader(w, batch_size=4, shuffle=True, order="sequential")


@pytest.mark.parametrize("order", ["feistel", "shuffle", "block"])
def test_the_loader_delivers_every_window_once_with_a_computed_order(order):
    values = np.arange(10_007, dtype=np.float64)
    w = fb.SlidingWindows(values, window=3, horizon=1)
    loader = fb.WindowLoader(w, batch_size=64, order=order, seed=8)
    assert loader.shuffle
    firsts = np.concatenate([x[:, 0].numpy() for x, _ in loader])
    assert np.array_equal(np.sort(firsts), np.arange(len(w)))
    assert not np.array_equal(firsts, np.arange(len(w)))


# -- shards -------------------------------------------------------------------------------


@given(st.integers(1, 300), st.integers(1, 7), st.booleans(), st.sampled_from(["sequential", "feistel", "block", "shuffle"]),
       st.integers(0, 2**20))
def test_ranks_split_each_epoch_like_distributed_sampler(n, world_size, drop_last, kind, seed):
    epoch_order = EpochOrder(n, kind=kind, seed=seed, epoch=0, block=(4, 2))
    full = epoch_order.ids(0, n).astype(np.int64)
    # DistributedSampler: pad by wrapping round (or drop the tail), then rank r takes every world_size-th.
    size = shard_size(n, world_size, drop_last)
    total = size * world_size
    padded = np.resize(full, total) if total >= n else full[:total]
    shards = [EpochOrder(n, kind=kind, seed=seed, epoch=0, block=(4, 2), rank=r,
                         world_size=world_size, drop_last=drop_last) for r in range(world_size)]
    for r, shard in enumerate(shards):
        assert shard.size == size
        np.testing.assert_array_equal(shard.ids(0, size), padded[r::world_size])
        # Any span of positions is the same as the slice of the whole shard.
        if size > 2:
            np.testing.assert_array_equal(shard.ids(1, size - 1), padded[r::world_size][1:-1])
    got = np.concatenate([s.ids(0, size) for s in shards]).astype(np.int64)
    if drop_last or n % world_size == 0:
        assert len(set(got.tolist())) == len(got)  # disjoint
    else:
        assert set(got.tolist()) == set(range(n))  # all windows, the padding repeats a few


# -- memory ----------------------------------------------------------------------------


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, fastbatch as fb

    def anon_kib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    path, tiny = sys.argv[1], sys.argv[2]
    # A smaller file than the default threshold needs: the switch to a computed order is what is measured.
    fb.order.STORED_SHUFFLE_MAX = 2**20
    # Compile every kernel on a tiny file first: the compiler's memory is not the loader's.
    for _ in fb.WindowLoader(fb.SlidingWindows.from_npy(tiny, window=16), batch_size=1024, order="feistel"):
        pass
    w = fb.SlidingWindows.from_npy(path, window=16, horizon=1)
    assert len(w) > 2 * fb.order.STORED_SHUFFLE_MAX
    loader = fb.WindowLoader(w, batch_size=1024, shuffle=True, seed=0)
    assert loader.order.kind == "feistel", loader.order
    before, peak, seen = anon_kib(), 0, 0
    for k, (x, y) in enumerate(loader):
        seen += x.shape[0]
        if k % 64 == 0:
            peak = max(peak, anon_kib())
    assert seen == len(w)
    print((peak - before) / 1024)
    """
)


def test_a_shuffled_epoch_over_a_memmap_adds_little_anonymous_memory(tmp_path, monkeypatch):
    # 4 M windows of a 16 MiB .npy; a stored permutation would take 16 MiB
    # (int32 ids), a computed one takes nothing per window.  The loader's own
    # staging buffers (a few chunks of CHUNK_BYTES, about 5 MiB) are the rest.
    # bench/outofcore.py runs the 2 GiB / 64 M-window version, and
    # docs/integration.md records it.
    n_rows = 2**22 + 15
    path = tmp_path / "series.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows,))[:] = 1.0
    np.save(tmp_path / "tiny.npy", np.zeros(5000, np.float32))
    script = tmp_path / "measure.py"
    script.write_text(MEMORY_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "tiny.npy")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    added_mib = float(out.stdout.strip().splitlines()[-1])
    print(f"a shuffled epoch over {n_rows} rows added {added_mib:.1f} MiB of anonymous memory")
    assert added_mib < 12, f"a shuffled epoch added {added_mib:.1f} MiB of anonymous memory"
