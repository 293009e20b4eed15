"""loader.set_batch_size: the next batch has the new size; the epoch's order and exactly-once are kept."""

from __future__ import annotations

import numpy as np
import pytest

import fastbatch as fb
from fastbatch.order import EpochOrder
from helpers_resume import as_numpy, assert_same_batches

# Window i's input starts at i: the first input value of each row is its window id.
_W = fb.SlidingWindows(np.arange(5_000, dtype=np.float64), window=4, horizon=1)


def _ids(batches) -> np.ndarray:
    return np.concatenate([np.asarray(b[0])[:, 0] for b in batches]).astype(np.int64)


def _epoch_order(loader: fb.WindowLoader, epoch: int) -> np.ndarray:
    spec = loader.order
    order = EpochOrder(len(loader.windows), seed=loader.seed, epoch=epoch, kind=spec.kind,
                       block=(spec.block_windows, spec.pool_blocks), rank=loader.rank,
                       world_size=loader.world_size, drop_last=loader.drop_last)
    return order.ids(0, order.size)


@pytest.mark.parametrize("path", ["cpu", "pinned", "resident"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_change_mid_epoch_keeps_the_order_and_every_window_once(path, prefetch):
    loader = fb.WindowLoader(_W, batch_size=32, shuffle=True, seed=3, prefetch=prefetch)
    loader._path = path
    it = iter(loader)
    got = [next(it) for _ in range(7)]
    loader.set_batch_size(100)
    got += list(it)
    sizes = [len(b[0]) for b in got]
    assert sizes[:7] == [32] * 7 and set(sizes[7:-1]) == {100} and sizes[-1] <= 100
    np.testing.assert_array_equal(_ids(got), _epoch_order(loader, 0))
    assert len(loader) == -(-len(_W) // 100)


def test_several_changes_and_a_resume_continue_exactly():
    full_order = None
    loader = fb.WindowLoader(_W, batch_size=16, shuffle=True, seed=5)
    it = iter(loader)
    got = [next(it) for _ in range(3)]
    loader.set_batch_size(50)
    got += [next(it) for _ in range(4)]
    loader.set_batch_size(8)
    got += [next(it) for _ in range(2)]
    state = loader.state_dict()
    assert state["batch_size"] == 8 and state["windows"] == 3 * 16 + 4 * 50 + 2 * 8 and state["position"] == 9
    del it
    resumed = fb.WindowLoader(_W, batch_size=16, shuffle=True, seed=5)  # built as the script builds it
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert {len(b[0]) for b in rest[:-1]} == {8}
    full_order = _epoch_order(loader, 0)
    np.testing.assert_array_equal(_ids(got + rest), full_order)


def test_drop_last_drops_less_than_one_batch_of_the_new_size():
    loader = fb.WindowLoader(_W, batch_size=64, shuffle=True, seed=1, drop_last=True)
    it = iter(loader)
    got = [next(it) for _ in range(10)]
    loader.set_batch_size(300)
    got += list(it)
    delivered = _ids(got)
    assert len(delivered) == 640 + (len(_W) - 640) // 300 * 300
    np.testing.assert_array_equal(delivered, _epoch_order(loader, 0)[: len(delivered)])
    assert all(len(b[0]) == 300 for b in got[10:])


def test_ranks_that_change_at_the_same_step_stay_in_step():
    def run(rank):
        loader = fb.WindowLoader(_W, batch_size=20, shuffle=True, seed=2, rank=rank, world_size=3)
        it = iter(loader)
        got = [next(it) for _ in range(5)]
        loader.set_batch_size(45)
        return got + list(it)

    runs = [run(r) for r in range(3)]
    assert len({len(r) for r in runs}) == 1  # the same number of steps on every rank
    ids = [_ids(r) for r in runs]
    assert len(np.intersect1d(ids[0], ids[1])) <= 2  # disjoint but for DistributedSampler's padding


def test_a_change_between_epochs_applies_to_the_next_one():
    loader = fb.WindowLoader(_W, batch_size=32, shuffle=True, seed=1)
    list(loader)
    loader.set_batch_size(128)
    assert len(loader) == -(-len(_W) // 128)
    second = list(loader)
    assert {len(b[0]) for b in second[:-1]} == {128}
    reference = fb.WindowLoader(_W, batch_size=128, shuffle=True, seed=1)
    reference.set_epoch(1)
    assert_same_batches(as_numpy(second), as_numpy(reference), "epoch 1 at the new size")


@pytest.mark.parametrize("bad,error", [(0, ValueError), (2.5, TypeError), (True, TypeError), (2**63, ValueError)])
def test_bad_batch_sizes_are_refused_naming_the_parameter(bad, error):
    loader = fb.WindowLoader(_W, batch_size=32)
    with pytest.raises(error, match="batch_size"):
        loader.set_batch_size(bad)
    assert loader.batch_size == 32
