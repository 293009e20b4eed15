"""Processes forked after a gather: DataLoader workers and plain forks gather with serial kernels.

GNU OpenMP kills a process forked after its threads started as soon as it
opens a parallel region ("fork() called from a process already using GNU
OpenMP"), so before the fix every DataLoader worker died after any gather in
the parent.  Each test gathers in this process first, so its threads are up.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import fastbatch as fb
from fastbatch._jit import DISABLE_JIT
from fastbatch.order import EpochOrder
from reference import series


def start_parallel_threads(w: fb.SlidingWindows) -> None:
    """A gather here, as a training script does before it builds its DataLoader."""
    w.gather(np.arange(min(len(w), 64)))
    if not DISABLE_JIT:
        import numba

        numba.threading_layer()  # raises unless a parallel kernel really ran in this process


CASES = {
    "one-array": lambda: fb.SlidingWindows(series(400, 3, np.float32), window=8, horizon=2),
    "dilation-targets": lambda: fb.SlidingWindows(series(400, 3), window=5, horizon=2, dilation=3,
                                                  target_columns=[2, 0]),
    "list-of-series": lambda: fb.SlidingWindows([series(150, 2), series(90, 2) + 1e4, series(200, 2) + 2e4],
                                                window=6, return_series_id=True),
    "laid-end-to-end": lambda: fb.SlidingWindows(series(300, 2), window=4, horizon=3, lengths=[100, 120, 80]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dataloader_workers_after_a_gather_in_the_parent_give_the_reference_batches(case):
    w = CASES[case]()
    start_parallel_threads(w)
    order = np.random.default_rng(0).permutation(len(w)).tolist()
    loader = DataLoader(w, batch_size=16, sampler=order, collate_fn=fb.collate, num_workers=2,
                        multiprocessing_context="fork", timeout=300)
    batches = list(loader)
    assert len(batches) == -(-len(w) // 16)
    for k, batch in enumerate(batches):
        ids = order[16 * k : 16 * (k + 1)]
        expected = [np.stack([w[i][part] for i in ids]) for part in range(len(batch))]
        for got, want in zip(batch, expected, strict=True):
            np.testing.assert_array_equal(got.numpy(), want)


def _gather_in_child(w, ids, n, conn) -> None:
    x, y = w.gather(ids)
    order = EpochOrder(n, kind="feistel", seed=5, epoch=2).ids(0, n)
    conn.send((x, y, order))
    conn.close()


def test_a_plain_fork_gathers_and_computes_orders_like_its_parent():
    w = CASES["dilation-targets"]()
    start_parallel_threads(w)
    ids = np.random.default_rng(1).permutation(len(w))
    n = 1000
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_gather_in_child, args=(w, ids, n, send))
    child.start()
    send.close()
    got = receive.recv() if receive.poll(300) else None
    child.join(60)
    assert child.exitcode == 0, f"the forked child ended with exit code {child.exitcode}"
    x, y = w.gather(ids)
    expected_order = EpochOrder(n, kind="feistel", seed=5, epoch=2).ids(0, n)
    for child_part, parent_part in zip(got, (x, y, expected_order), strict=True):
        np.testing.assert_array_equal(child_part, parent_part)
    assert sorted(got[2].tolist()) == list(range(n))


def test_the_parent_keeps_its_parallel_kernels_after_forking():
    from fastbatch import kernels

    w = CASES["one-array"]()
    start_parallel_threads(w)
    list(DataLoader(w, batch_size=64, collate_fn=fb.collate, num_workers=2, multiprocessing_context="fork",
                    timeout=300))
    assert not kernels._serial_only()
    x, _ = w.gather(np.arange(len(w)))
    assert torch.equal(torch.from_numpy(x[:, 0]), torch.from_numpy(series(400, 3, np.float32)[: len(w)]))
