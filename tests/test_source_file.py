"""Data files changing under a loader: a shrunk memmap is a clear error, a renamed-over one is harmless."""

from __future__ import annotations

import os
import re
import subprocess
import sys

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


# -- every path checks every file: a truncation is an exception, never SIGBUS ----------------

CHILD = """
import os, sys
import numpy as np
from torch.utils.data import DataLoader
import fastbatch as fb
import fastbatch.loader

fastbatch.loader.CHUNK_BYTES = 16 << 10  # many chunks, so reads follow the truncation
how, paths = sys.argv[1], sys.argv[2:]
arrays = [np.load(p, mmap_mode="r") for p in paths]
w = fb.SlidingWindows(arrays if len(arrays) > 1 else arrays[0], window=16)
if how == "loader":
    it = iter(fb.WindowLoader(w, batch_size=64, shuffle=True, seed=0, prefetch=0))
else:
    it = iter(DataLoader(w, batch_size=64, shuffle=True, collate_fn=fb.collate))
next(it)
os.truncate(paths[-1], 4096)
for _ in it:
    pass
print("the epoch ended without an error")
"""


@pytest.mark.parametrize("how, n_files", [("loader", 3), ("dataloader", 3), ("dataloader", 1)])
def test_a_memmap_truncated_mid_epoch_is_a_runtime_error_not_sigbus(tmp_path, how, n_files):
    paths = [tmp_path / f"s{k}.npy" for k in range(n_files)]
    for path in paths:
        _series(path)
    child = subprocess.run([sys.executable, "-c", CHILD, how, *map(str, paths)], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode >= 0, f"killed by signal {-child.returncode} (SIGBUS is 7): {child.stderr[-2000:]}"
    assert child.returncode == 1, child.stdout + child.stderr[-2000:]
    shrank = rf"RuntimeError: the memory-mapped file '.*s{n_files - 1}\.npy' under these windows shrank from \d+ to 4096"
    assert re.search(shrank, child.stderr), child.stderr[-2000:]


def test_check_source_covers_every_series_of_a_list_and_ignores_renames(tmp_path):
    paths = [tmp_path / f"s{k}.npy" for k in range(3)]
    values = [_series(path) for path in paths]
    w = fb.SlidingWindows([np.load(p, mmap_mode="r") for p in paths], window=16)
    np.save(tmp_path / "new.npy", np.zeros((10, 4), np.float32))
    os.replace(tmp_path / "new.npy", paths[0])  # series 0 keeps its old contents mapped
    w.check_source()
    x, _ = w.gather(np.array([0, len(w) - 1]))
    np.testing.assert_array_equal(x[0], values[0][:16])
    os.truncate(paths[1], 4096)
    with pytest.raises(RuntimeError, match=r"s1\.npy' under these windows shrank from \d+ to 4096 bytes"):
        w.check_source()
