"""Data files changing under a loader: a shrunk memmap is a clear error, a renamed-over one is harmless."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastbatch as fb
import fastbatch.loader as loader_module


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(loader_module, "CHUNK_BYTES", 16 << 10)


def _series(path):
    values = np.arange(200_000, dtype=np.float32).reshape(-1, 4)
    np.save(path, values)
    return values


def test_a_truncated_memmap_stops_the_loader_with_a_clear_error(tmp_path, small_chunks):
    path = tmp_path / "series.npy"
    _series(path)
    w = fb.SlidingWindows.from_npy(path, window=16)
    it = iter(fb.WindowLoader(w, batch_size=64, shuffle=True, seed=0, prefetch=0))
    next(it)
    os.truncate(path, 4096)
    with pytest.raises(RuntimeError, match=r"series\.npy.*shrank from \d+ to 4096 bytes"):
        for _ in it:
            pass


def test_a_file_replaced_by_rename_keeps_the_old_contents(tmp_path, small_chunks):
    path = tmp_path / "series.npy"
    values = _series(path)
    w = fb.SlidingWindows.from_npy(path, window=16)
    loader = fb.WindowLoader(w, batch_size=64, shuffle=True, seed=0, prefetch=2)
    it = iter(loader)
    batches = [next(it)[0].clone()]
    np.save(tmp_path / "new.npy", np.zeros((10, 4), np.float32))
    os.replace(tmp_path / "new.npy", path)
    batches += [x.clone() for x, _ in it]
    starts = np.concatenate([b[:, 0, 0].numpy() for b in batches]) / 4
    assert sorted(starts.astype(int)) == list(range(len(w)))  # every window once, old contents
    assert all(np.array_equal(b[k].numpy(), values[int(b[k, 0, 0]) // 4 :][:16]) for b in batches[:3] for k in range(3))


def test_in_memory_data_has_no_file_to_check():
    w = fb.SlidingWindows(np.zeros((100, 2)), window=5)
    w.check_source()  # nothing to do, nothing raised
    assert w._source is None
