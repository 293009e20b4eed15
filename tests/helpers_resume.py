"""Shared checkers for the issue-5 tests: resume at any position, and batches as plain arrays.

One checker for resume (after torchdata's ``run_test_save_load_state``): save
at the start, in the middle and at the end of an epoch, load into a freshly
built loader, and compare what comes next with an uninterrupted run.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np


def as_numpy(batches) -> list[tuple[np.ndarray, ...]]:
    """Batches (tuples of tensors) as tuples of numpy copies, so buffers may be reused."""
    return [tuple(t.numpy().copy() for t in batch) for batch in batches]


def assert_same_batches(got, expected, what: str = "") -> None:
    assert len(got) == len(expected), f"{what}: {len(got)} batches, expected {len(expected)}"
    for k, (a, b) in enumerate(zip(got, expected)):
        assert len(a) == len(b), f"{what}: batch {k} has {len(a)} parts, expected {len(b)}"
        for part, (u, v) in enumerate(zip(a, b)):
            np.testing.assert_array_equal(u, v, err_msg=f"{what}: batch {k}, part {part}")


def take(loader, k: int):
    """Start an epoch and take its first ``k`` batches (leaving the iterator alive)."""
    it = iter(loader)
    out = [next(it) for _ in range(k)]
    return it, as_numpy(out)


def check_resume(make_loader: Callable[[], object], *, epochs: int = 2, positions=None) -> None:
    """Save after ``k`` batches (start, middle, end by default), reload into a new loader, compare.

    The state goes through JSON, as a checkpoint would.  After the resumed
    epoch, the following epoch must match the uninterrupted run too.
    """
    reference = make_loader()
    runs = [as_numpy(reference) for _ in range(epochs)]
    n = len(runs[0])
    assert n == len(reference)
    for k in positions if positions is not None else sorted({0, 1, n // 2, max(0, n - 1), n}):
        for epoch in range(epochs - 1):
            first = make_loader()
            first.set_epoch(epoch)
            it, head = take(first, k)
            assert_same_batches(head, runs[epoch][:k], f"head of epoch {epoch} before saving at {k}")
            state = json.loads(json.dumps(first.state_dict()))
            del it
            resumed = make_loader()
            resumed.load_state_dict(state)
            expected_epoch, expected_rest = (epoch, runs[epoch][k:]) if k < n else (epoch + 1, runs[epoch + 1])
            assert state["epoch"] == expected_epoch and state["position"] == (k if k < n else 0), state
            assert_same_batches(as_numpy(resumed), expected_rest, f"resumed at batch {k} of epoch {epoch}")
            if k < n:
                assert_same_batches(as_numpy(resumed), runs[epoch + 1], f"epoch after resuming at {k}")


def tensor_rows(batches, column: int = 0) -> np.ndarray:
    """The first input value of every window in ``batches``: an id for data built with distinct values."""
    return np.concatenate([b[0].reshape(b[0].shape[0], -1)[:, column].numpy() for b in batches]) if batches else np.empty(0)
