"""SlidingWindows as a torch map-style Dataset: __getitem__, __getitems__ and fastbatch.collate."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

import fastbatch as fb
from reference import reference_gather, series


def windows(**kw):
    return fb.SlidingWindows(series(200, 3, np.float32), window=8, horizon=2, target_columns=[2], **kw)


def test_getitems_is_the_stacked_windows_as_tensors():
    w = windows()
    ids = [5, 0, 190, -1, 5]
    batch = w.__getitems__(ids)
    assert len(batch) == len(ids)
    x, y = fb.collate(batch)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    ex, ey = reference_gather(series(200, 3, np.float32), [i % len(w) for i in ids], window=8, horizon=2,
                              target_columns=[2])
    np.testing.assert_array_equal(x.numpy(), ex)
    np.testing.assert_array_equal(y.numpy(), ey)
    assert fb.collate(w.__getitems__([]))[0].shape == (0, 8, 3)
    # As a sequence, the batch is its windows: what default_collate expects.
    x1, y1 = batch[1]
    assert torch.equal(x1, x[1]) and torch.equal(y1, y[1]) and len(batch[1:3]) == 2


def test_without_collate_fn_the_batches_are_still_right():
    w = windows()
    fast = list(DataLoader(w, batch_size=8, collate_fn=fb.collate))
    default = list(DataLoader(w, batch_size=8))
    assert len(fast) == len(default)
    for (fx, fy), (dx, dy) in zip(fast, default):
        assert torch.equal(fx, dx) and torch.equal(fy, dy)


N = len(windows())


@pytest.mark.parametrize("ids,error,match", [
    ([0, N], IndexError, rf"ids must be window indices in \[-{N}, {N}\) \(negative ids count from the end\), got {N}"),
    ([-N - 1], IndexError, rf"got {-N - 1}: out of range"),
    (np.array([2**64 - 1], np.uint64), IndexError, rf"got {2**64 - 1}: out of range"),
    (np.array([2**63], np.uint64), IndexError, rf"got {2**63}: out of range"),
    ([0.5], TypeError, "list of integer window indices"),
    ([[1, 2]], TypeError, "list of integer window indices"),
    ([1, [2]], TypeError, "list of integer window indices"),
])
def test_getitems_checks_indices_before_the_kernel_reads(ids, error, match):
    with pytest.raises(error, match=match):
        windows().__getitems__(ids)


def test_getitems_and_gather_share_one_id_check_but_only_getitems_counts_from_the_end():
    w = windows()
    x, _ = fb.collate(w.__getitems__(np.array([N - 1, 0], np.uint64)))
    np.testing.assert_array_equal(x.numpy(), w.gather(np.array([N - 1, 0]))[0])
    x, _ = fb.collate(w.__getitems__(np.array([-1, -N], np.int16)))
    np.testing.assert_array_equal(x.numpy(), w.gather(np.array([N - 1, 0]))[0])
    with pytest.raises(IndexError, match=rf"ids must be window indices in \[0, {N}\), got -1"):
        w.gather(np.array([-1]))


def test_dataloader_with_batch_size_none_gives_one_window_at_a_time_as_tensors():
    w = fb.SlidingWindows([series(30, 3, np.float32), series(20, 3, np.float32) + 1000], window=8, horizon=2,
                          target_columns=[2, 0], return_series_id=True)
    items = list(DataLoader(w, batch_size=None, collate_fn=fb.collate))
    assert len(items) == len(w)
    for i, (x, y, s) in enumerate(items):
        ex, ey, es = w[i]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (8, 3)
        np.testing.assert_array_equal(x.numpy(), ex)
        np.testing.assert_array_equal(y.numpy(), ey)
        assert s.item() == es
    items[0][0].add_(1.0)  # a window handed out is the user's: the data is not touched
    np.testing.assert_array_equal(w[0][0], series(30, 3, np.float32)[:8])


def test_dataloader_with_collate_yields_every_window_once_as_batches():
    w = windows()
    loader = DataLoader(w, batch_size=16, shuffle=True, collate_fn=fb.collate,
                        generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(w) // 16)
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (len(w), 8, 3)
    assert sorted(x[:, 0, 0].tolist()) == sorted(w[i][0][0, 0] for i in range(len(w)))
    assert all(b[1].shape[1:] == (2, 1) for b in batches)


def test_the_per_window_path_gives_the_same_batches():
    w = windows()
    sampler = list(range(0, len(w), 7))
    fast = list(DataLoader(w, batch_size=5, sampler=sampler, collate_fn=fb.collate))
    # A Dataset without __getitems__ (this wrapper) goes window by window through default_collate.
    class PerWindow(torch.utils.data.Dataset):
        def __len__(self):
            return len(w)

        def __getitem__(self, i):
            return w[i]

    slow = list(DataLoader(PerWindow(), batch_size=5, sampler=sampler, collate_fn=fb.collate))
    assert len(fast) == len(slow)
    for (fx, fy), (sx, sy) in zip(fast, slow):
        assert torch.equal(fx, sx) and torch.equal(fy, sy)


def test_subset_and_series_ids_pass_through():
    w = fb.SlidingWindows([np.arange(20.0), np.arange(100.0, 130.0)], window=3, return_series_id=True)
    sub = Subset(w, list(range(len(w) - 4, len(w))))
    (x, y, s), = list(DataLoader(sub, batch_size=4, collate_fn=fb.collate))
    assert s.tolist() == [1, 1, 1, 1] and x[0, 0].item() == 100.0 + 30 - 3 - 1 - 3
    x, y, s = w[0]
    assert s == 0 and isinstance(x, np.ndarray)


def test_windows_pickle_for_worker_processes(tmp_path):
    w = fb.SlidingWindows([np.arange(20.0), np.arange(100.0, 130.0)], window=3)
    w.gather(np.array([0], np.int32))  # builds the numba list, which must not travel
    clone = pickle.loads(pickle.dumps(w))
    np.testing.assert_array_equal(clone.gather(np.arange(len(w), dtype=np.int32))[0],
                                  w.gather(np.arange(len(w), dtype=np.int32))[0])
    # A memory-mapped file travels as its path, not its contents.
    np.save(tmp_path / "big.npy", np.zeros(1_000_000, np.float32))
    mm = fb.SlidingWindows.from_npy(tmp_path / "big.npy", window=4)
    blob = pickle.dumps(mm)
    assert len(blob) < 10_000
    assert isinstance(pickle.loads(blob).data, np.memmap)


@pytest.mark.slow
def test_dataloader_workers_read_a_memmap(tmp_path):
    np.save(tmp_path / "s.npy", series(500, 2, np.float32))
    w = fb.SlidingWindows.from_npy(tmp_path / "s.npy", window=4)
    loader = DataLoader(w, batch_size=64, shuffle=True, collate_fn=fb.collate, num_workers=2,
                        multiprocessing_context="spawn")
    x = torch.cat([b[0] for b in loader])
    assert x.shape[0] == len(w) and len(set(x[:, 0, 0].tolist())) == len(w)


def test_collate_keeps_the_default_for_lists_of_windows():
    samples = [(np.ones(3), np.zeros(1)), (np.ones(3), np.zeros(1))]
    x, y = fb.collate(samples)
    assert x.shape == (2, 3) and y.shape == (2, 1)
    batch = (torch.ones(2, 3), torch.zeros(2, 1))
    assert fb.collate(batch) is batch
    assert fb.collate(fb.compat.WindowBatch(batch)) is batch
