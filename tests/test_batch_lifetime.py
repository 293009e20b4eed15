"""A batch belongs to the user: fresh objects, memory kept while referred to, one producer per staging.

Also the iterator's behaviour when threads or interrupts get in the way:
two threads iterating one loader, one iterator shared by threads, an
iterator used again after a ``KeyboardInterrupt``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import fastbatch as fb
import fastbatch.loader as loader_module
from helpers_resume import as_numpy, assert_same_batches


def _series(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_gradients_and_attributes_never_carry_over_to_later_batches(prefetch):
    """An adversarial loop's requires_grad, .grad and attributes stay with the batch they were set on."""
    w = fb.SlidingWindows(_series(300_000), window=10)
    loader = fb.WindowLoader(w, batch_size=32, prefetch=prefetch)
    carried = []
    for k, (x, y) in enumerate(loader):
        if x.requires_grad or x.grad is not None or hasattr(x, "tag") or y.requires_grad:
            carried.append(k)
        if k % 40 == 0:
            x.requires_grad_(True)
            (x * 2.0).sum().backward()
            x.tag = k
    assert len(loader) == 9375 and carried == []


def test_every_batch_is_a_new_object_even_when_all_are_kept():
    w = fb.SlidingWindows(_series(20_000), window=10, return_series_id=True)
    batches = list(fb.WindowLoader(w, batch_size=16))
    objects = [id(t) for batch in batches for t in batch]
    assert len(set(objects)) == len(objects)


def test_a_held_view_keeps_the_memory_after_the_batch_is_dropped():
    """The racy case of reference counting: z = x[0], then x dropped; z must keep its values."""
    w = fb.SlidingWindows(_series(50_000, seed=3), window=10)
    loader = fb.WindowLoader(w, batch_size=32, shuffle=True, seed=4, prefetch=4)
    expected = as_numpy(fb.WindowLoader(w, batch_size=32, shuffle=True, seed=4, prefetch=0))
    kept = {}
    for k, (x, _) in enumerate(loader):
        if k % 97 == 0:
            kept[k] = x[0]
        del x
    loader.set_epoch(0)
    for _ in loader:  # the same epoch again over the same staging
        pass
    assert kept
    for k, z in kept.items():
        np.testing.assert_array_equal(z.numpy(), expected[k][0][0], err_msg=f"row 0 of batch {k}")


def test_two_running_producers_never_share_staging():
    store = loader_module._StagingStore()
    first = store.lend("cpu", torch.device("cpu"), 2)
    second = store.lend("cpu", torch.device("cpu"), 2)
    assert first is not second
    store.give_back(first)
    store.give_back(second)  # the store keeps one; the other is freed
    assert store.lend("cpu", torch.device("cpu"), 2) is first


@pytest.mark.parametrize("path", ["cpu", "pinned"])
def test_a_superseded_producer_still_writing_does_not_touch_the_new_epoch(path, monkeypatch):
    """The old producer outlives its join timeout while writing garbage into its staging, repeatedly."""
    import fastbatch.prefetch as prefetch

    monkeypatch.setattr(prefetch, "_JOIN_TIMEOUT_S", 0.01)
    w = fb.SlidingWindows(np.arange(40_000, dtype=np.float32).reshape(-1, 4), window=8)
    real = fb.SlidingWindows.gather
    stalled = threading.Event()
    release = threading.Event()

    def gather(self, ids, out_x=None, out_y=None, **kwargs):
        result = real(self, ids, out_x, out_y, **kwargs)
        if threading.current_thread().name == "fastbatch-prefetch" and not release.is_set() \
                and stalled_owner.get("thread") in (None, threading.current_thread()):
            stalled_owner["thread"] = threading.current_thread()
            stalled.set()
            while not release.is_set():  # a producer that is slow to notice it was stopped
                out_x[...] = -1
                out_y[...] = -1
                time.sleep(0.001)
        return result

    stalled_owner: dict = {}
    monkeypatch.setattr(fb.SlidingWindows, "gather", gather)
    loader = fb.WindowLoader(w, batch_size=50, shuffle=True, seed=1, prefetch=2)
    loader._path = path
    old = iter(loader)
    assert stalled.wait(10)
    new = iter(loader)  # supersedes `old`, whose thread is still inside gather
    got = as_numpy(new)
    release.set()
    with pytest.raises(RuntimeError, match="stopped by a newer iter"):
        next(old)
    monkeypatch.setattr(fb.SlidingWindows, "gather", real)
    reference = fb.WindowLoader(w, batch_size=50, shuffle=True, seed=1, prefetch=0)
    reference.set_epoch(1)
    assert_same_batches(got, as_numpy(reference), "the epoch after the superseded one")


def test_two_threads_iterating_one_loader_get_whole_epochs_or_the_documented_error():
    """Runs in which both threads overlap: each gets correct windows, a full epoch or the RuntimeError."""
    data = np.arange(20_000, dtype=np.float64)
    w = fb.SlidingWindows(data, window=5, horizon=0)
    outcomes = []
    for run in range(40):
        loader = fb.WindowLoader(w, batch_size=64, shuffle=True, seed=run, prefetch=2)
        results: dict = {}

        def consume(name: str, start: threading.Barrier) -> None:
            start.wait()
            rows = []
            try:
                for x, _ in loader:
                    rows.append(x.numpy()[:, 0].copy())
                    # Each row is a window of the data: consecutive steps.
                    assert np.array_equal(x.numpy() - x.numpy()[:, :1], np.broadcast_to(np.arange(5.0), x.shape))
                results[name] = ("done", rows)
            except RuntimeError as error:
                results[name] = (str(error), rows)

        start = threading.Barrier(2)
        threads = [threading.Thread(target=consume, args=(n, start)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        for name, (outcome, rows) in results.items():
            starts = np.concatenate(rows) if rows else np.empty(0)
            assert len(np.unique(starts)) == len(starts), f"run {run}: thread {name} got a window twice"
            if outcome == "done":
                assert len(starts) == len(w), f"run {run}: thread {name} ended its epoch early"
            else:
                assert "stopped by a newer iter()" in outcome, outcome
            outcomes.append(outcome == "done")
    assert len(outcomes) == 80


@pytest.mark.parametrize("prefetch", [0, 2])
def test_one_iterator_shared_by_threads_hands_each_batch_to_exactly_one(prefetch):
    w = fb.SlidingWindows(np.arange(30_000, dtype=np.float64), window=4, horizon=0)
    for run in range(6):
        it = iter(fb.WindowLoader(w, batch_size=16, shuffle=True, seed=run, prefetch=prefetch))
        got: list = []

        def consume() -> None:
            for x, _ in it:
                got.append(x[:, 0].numpy().copy())

        threads = [threading.Thread(target=consume) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        starts = np.sort(np.concatenate(got))
        np.testing.assert_array_equal(starts, np.arange(len(w), dtype=np.float64))


class _Interrupting:
    """A gather that raises KeyboardInterrupt on call ``at`` (as Ctrl-C would inside it)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0
        self.real = fb.SlidingWindows.gather

    def __call__(self, windows, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(windows, *args, **kwargs)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_after_an_interrupt_the_iterator_raises_and_the_state_resumes_exactly(prefetch, monkeypatch):
    monkeypatch.setattr(loader_module, "CHUNK_BYTES", 4 << 10)  # many chunks
    w = fb.SlidingWindows(_series(20_000, seed=7), window=10)
    kwargs = dict(batch_size=32, shuffle=True, seed=9)
    expected = as_numpy(fb.WindowLoader(w, prefetch=0, **kwargs))
    interrupting = _Interrupting(at=3)
    monkeypatch.setattr(fb.SlidingWindows, "gather", lambda self, *a, **k: interrupting(self, *a, **k))
    loader = fb.WindowLoader(w, prefetch=prefetch, **kwargs)
    it = iter(loader)
    got = []
    with pytest.raises(KeyboardInterrupt):
        for batch in it:
            got.append(tuple(t.numpy().copy() for t in batch))
    with pytest.raises(RuntimeError, match="KeyboardInterrupt"):
        next(it)
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["position"] == len(got) < len(expected)
    monkeypatch.undo()
    resumed = fb.WindowLoader(w, prefetch=prefetch, **kwargs)
    resumed.load_state_dict(state)
    assert_same_batches(got + as_numpy(resumed), expected, "delivered before the interrupt, then resumed")


def test_a_real_interrupt_while_waiting_never_loses_a_batch(monkeypatch):
    """SIGINT at random moments while the consumer waits on a slow producer; the state counts only delivered batches."""
    import os
    import signal

    monkeypatch.setattr(loader_module, "CHUNK_BYTES", 1)  # one batch a chunk: the consumer waits on each
    w = fb.SlidingWindows(_series(5_000, seed=8), window=10)
    kwargs = dict(batch_size=64, shuffle=True, seed=2, prefetch=2)
    expected = as_numpy(fb.WindowLoader(w, **kwargs))
    real = fb.SlidingWindows.gather

    def slow(self, *args, **kw):
        time.sleep(0.004)
        return real(self, *args, **kw)

    rng = np.random.default_rng(0)
    interrupted = 0
    for trial in range(8):
        monkeypatch.setattr(fb.SlidingWindows, "gather", slow)
        loader = fb.WindowLoader(w, **kwargs)
        it = iter(loader)
        got = []
        timer = threading.Timer(float(rng.uniform(0.001, 0.1)), os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        ended = False
        while True:
            batch, kept = None, len(got)
            try:
                batch = next(it)
                got.append(tuple(t.numpy().copy() for t in batch))
            except StopIteration:
                ended = True
                break
            except KeyboardInterrupt:
                # Most often inside next(); when it lands between next() and the copy, the
                # batch was delivered (and counted): keep it, as a user's loop would have it.
                if batch is not None and len(got) == kept:
                    got.append(tuple(t.numpy().copy() for t in batch))
                break
        try:
            timer.join()
        except KeyboardInterrupt:  # the signal came after the epoch ended
            pass
        monkeypatch.setattr(fb.SlidingWindows, "gather", real)
        state = loader.state_dict()
        if ended:  # the epoch outran the timer: nothing to resume
            assert state["position"] == 0 and len(got) == len(expected), f"trial {trial}"
            continue
        interrupted += 1
        assert state["position"] == len(got) < len(expected), f"trial {trial}"
        resumed = fb.WindowLoader(w, **kwargs)
        resumed.load_state_dict(state)
        assert_same_batches(got + as_numpy(resumed), expected, f"trial {trial}")
    assert interrupted >= 4  # an epoch of slow gathers outlasts the timer, as a rule
