"""The producer's pieces on their own: ids per chunk, thread policy, staging of series ids, device memory."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

import fastbatch as fb
import fastbatch.loader as loader_module
from fastbatch.device import usable_bytes
from fastbatch.order import EpochOrder
from fastbatch.staging import PinnedSlot


@pytest.fixture
def record_spans(monkeypatch):
    """Every EpochOrder.ids call: (start, stop, Numba threads at the call)."""
    calls = []
    real = EpochOrder.ids

    def ids(self, start, stop):
        calls.append((start, stop, numba.get_num_threads()))
        return real(self, start, stop)

    monkeypatch.setattr(EpochOrder, "ids", ids)
    return calls


@pytest.mark.parametrize("path", ["cpu", "pinned", "resident"])
def test_window_ids_are_made_one_chunk_at_a_time_on_every_path(path, record_spans, monkeypatch):
    monkeypatch.setattr(loader_module, "CHUNK_BYTES", 16 << 10)
    monkeypatch.setattr(loader_module, "DEVICE_CHUNK_BYTES", 16 << 10)
    w = fb.SlidingWindows(np.zeros((50_000, 2), np.float32), window=8, horizon=2)
    loader = fb.WindowLoader(w, batch_size=32, order="feistel", seed=1, prefetch=0)
    loader._path = path
    it = iter(loader)
    next(it)
    # The first batch needs the first chunk's ids only, never the epoch's.
    assert len(record_spans) == 1
    start, stop, _ = record_spans[0]
    assert start == 0 and stop == loader.chunk_batches * 32 < len(w)
    for _ in it:
        pass
    assert sum(stop - start for start, stop, _ in record_spans) == len(w)


def test_the_order_kernel_runs_under_the_measured_thread_count(record_spans):
    w = fb.SlidingWindows(np.zeros(100_000, np.float32), window=8)
    for _ in fb.WindowLoader(w, batch_size=256, order="feistel", seed=1, num_threads=1, prefetch=2):
        pass
    assert record_spans and {threads for _, _, threads in record_spans} == {1}


def test_series_ids_travel_in_the_staging_slot_with_the_windows(monkeypatch):
    """The pinned path copies ids from the slot (pinned on a GPU), not from a pageable array per chunk."""
    carved = []
    real = PinnedSlot.fields

    def fields(self, specs, n):
        carved.append(len(specs))
        return real(self, specs, n)

    monkeypatch.setattr(PinnedSlot, "fields", fields)
    w = fb.SlidingWindows([np.ones(500), np.zeros(700)], window=5, return_series_id=True)
    loader = fb.WindowLoader(w, batch_size=40, prefetch=0)
    loader._path = "pinned"
    batches = list(loader)
    assert carved and set(carved) == {3}  # x, y and the series ids
    series = torch.cat([b[2] for b in batches])
    np.testing.assert_array_equal(series.numpy(), w.series_of(np.arange(len(w))))


@pytest.mark.parametrize(
    "free,total,fraction,reserved,allocated,expected",
    [
        (60, 100, 1.0, 20, 5, 15 + 60),  # cached-unused memory counts, and the card's free memory
        (60, 100, 0.5, 20, 5, 15 + 30),  # the per-process fraction caps what may still be reserved
        (60, 100, 0.2, 30, 30, 0),  # already over the fraction: nothing more
        (5, 100, 1.0, 0, 0, 5),  # another process holds the card
    ],
)
def test_usable_device_memory_counts_the_allocator_and_the_process_fraction(free, total, fraction, reserved,
                                                                            allocated, expected):
    assert usable_bytes(free, total, fraction, reserved, allocated) == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_loader_on_another_device_leaves_the_callers_current_device_alone():
    torch.cuda.set_device(0)
    w = fb.SlidingWindows(np.zeros((1000, 2), np.float32), window=4)
    for placement in ("host", "device"):
        for _ in fb.WindowLoader(w, batch_size=64, device="cuda:1", placement=placement, prefetch=0):
            assert torch.cuda.current_device() == 0
    assert torch.cuda.current_device() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_placement_respects_the_process_memory_fraction():
    torch.cuda.set_per_process_memory_fraction(0.01)
    try:
        n = int(torch.cuda.mem_get_info()[1] * 0.01) // 4  # float32 rows of the whole allowance
        w = fb.SlidingWindows(np.zeros(n, np.float32), window=4)
        assert fb.WindowLoader(w, batch_size=64, device="cuda").placement == "host"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


@pytest.mark.parametrize("path", ["cpu", "pinned", "resident"])
def test_the_next_epoch_is_prepared_ahead_and_used_only_when_it_is_the_one_asked_for(path):
    from helpers_resume import as_numpy, assert_same_batches

    w = fb.SlidingWindows(np.random.default_rng(1).standard_normal((3000, 2)), window=6, horizon=2)
    kwargs = dict(batch_size=50, shuffle=True, seed=4)

    def reference(epoch):
        loader = fb.WindowLoader(w, prefetch=0, **kwargs)
        loader.set_epoch(epoch)
        return as_numpy(loader)

    loader = fb.WindowLoader(w, prefetch=2, **kwargs)
    loader._path = path
    assert_same_batches(as_numpy(loader), reference(0), "epoch 0")
    ahead = loader._store._ahead
    assert ahead is not None and ahead[1] == 1  # epoch 1's order and first chunk, made during epoch 0
    assert_same_batches(as_numpy(loader), reference(1), "epoch 1, started from what was made ahead")
    loader.set_epoch(5)  # not the epoch prepared (2): that one is dropped
    assert_same_batches(as_numpy(loader), reference(5), "epoch 5 after a jump")
    state = loader.state_dict()
    loader.load_state_dict({**state, "epoch": 6, "position": 3, "windows": 150})  # mid-epoch: never taken
    assert_same_batches(as_numpy(loader), reference(6)[3:], "epoch 6 resumed at batch 3")


@pytest.mark.parametrize("path", ["cpu", "pinned", "resident"])
def test_an_epochs_order_is_gone_before_the_next_one_is_made_ahead(path, monkeypatch):
    """A stored shuffle takes 4 bytes a window: the producer drops the epoch's order once its last chunk is made,
    so the order it makes ahead for the next epoch never sits beside it (nor the first chunk made ahead)."""
    import gc
    import weakref

    from fastbatch.pipeline import Plan

    alive: weakref.WeakSet = weakref.WeakSet()
    held_at_each_make = []
    real = Plan.epoch_order

    def epoch_order(self, epoch):
        gc.collect()
        held_at_each_make.append(len(alive))
        order = real(self, epoch)
        alive.add(order)
        return order

    monkeypatch.setattr(Plan, "epoch_order", epoch_order)
    w = fb.SlidingWindows(np.arange(3000.0), window=6, horizon=2)
    loader = fb.WindowLoader(w, batch_size=50, shuffle=True, seed=4, prefetch=2)
    loader._path = path
    for _ in range(3):
        for _batch in loader:
            pass
    # Epoch 0 made at the first iter(); epochs 1, 2 and 3 made ahead by the producer of the epoch before.
    assert held_at_each_make == [0, 0, 0, 0]
