"""The producer thread: errors, shutdown, leaks, concurrency, overlap."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

import fastbatch as fb
from fastbatch.prefetch import Prefetcher


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fastbatch-prefetch")]


@pytest.fixture
def windows():
    data = np.random.default_rng(0).random((20_000, 4), dtype=np.float32)
    return fb.SlidingWindows(data, window=16, horizon=2)


def _all_batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 256, 5000])
def test_prefetch_gives_the_same_batches_as_synchronous(windows, shuffle, batch_size):
    sync = fb.WindowLoader(windows, batch_size=batch_size, shuffle=shuffle, seed=3, prefetch=0)
    ahead = fb.WindowLoader(windows, batch_size=batch_size, shuffle=shuffle, seed=3, prefetch=2)
    a, b = _all_batches(sync), _all_batches(ahead)
    assert len(a) == len(b) == len(sync)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_error_in_producer_reaches_consumer_with_traceback(windows, monkeypatch):
    class KernelFailure(Exception):
        pass

    def failing_gather(*args, **kwargs):
        raise KernelFailure("gather exploded")

    loader = fb.WindowLoader(windows, batch_size=64, prefetch=2)
    monkeypatch.setattr(windows, "gather", failing_gather)
    with pytest.raises(KernelFailure, match="gather exploded") as info:
        next(iter(loader))
    names = [entry.name for entry in info.traceback]
    assert "failing_gather" in names  # the producer's frames travel with the error
    _wait_no_threads()


def test_error_midway_delivers_earlier_batches_first(windows, monkeypatch):
    loader = fb.WindowLoader(windows, batch_size=2000, prefetch=2)
    calls = {"n": 0}
    real = windows.gather

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(windows, "gather", flaky)
    got = []
    with pytest.raises(OSError, match="disk went away"):
        for x, _ in loader:
            got.append(x)
    assert len(got) == 2 * loader.chunk_batches


def _wait_no_threads(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _prefetch_threads(), "a prefetch thread outlived its iterator"


def test_break_drop_and_reiterate_leave_no_thread(windows):
    loader = fb.WindowLoader(windows, batch_size=32, shuffle=True, seed=1, prefetch=2)
    before = threading.active_count()
    for _ in range(1000):
        for k, _batch in enumerate(loader):
            if k == 2:
                break
    for _ in range(100):
        it = iter(loader)
        next(it)
        del it
    for _ in range(100):
        iter(loader)  # a new iter() stops the previous one
    gc.collect()
    _wait_no_threads()
    assert threading.active_count() <= before


def test_host_buffers_are_reused_across_epochs(windows):
    loader = fb.WindowLoader(windows, batch_size=64, shuffle=True, seed=1, prefetch=2)
    for _ in range(5):
        for _batch in loader:
            pass
    first = _allocations(loader)
    for _ in range(20):
        for _batch in loader:
            pass
    # 20 epochs of 3 chunks each: reuse keeps the count at what the pool
    # holds at once (how many are in flight together depends on timing).
    keep = loader._store._idle[0].pool.keep
    assert first <= _allocations(loader) <= keep


def _allocations(loader) -> int:
    """Staging memory the loader has allocated so far (the store keeps it between epochs)."""
    return sum(s.pool.allocations for s in loader._store._idle)


def test_kept_batches_are_never_overwritten(windows):
    loader = fb.WindowLoader(windows, batch_size=100, shuffle=True, seed=5, prefetch=2)
    kept = list(loader)  # every batch held at once: the pool must not recycle any
    for x, y in kept:
        assert x.shape[1:] == (16, 4)
    order = fb.WindowLoader(windows, batch_size=100, shuffle=True, seed=5, prefetch=0)
    order.set_epoch(0)
    for (x, y), (rx, ry) in zip(kept, order):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_superseded_iterator_raises_instead_of_interleaving(windows):
    loader = fb.WindowLoader(windows, batch_size=32, prefetch=2)
    first = iter(loader)
    next(first)
    second = iter(loader)
    next(second)
    with pytest.raises(RuntimeError, match="newer iter"):
        for _ in range(len(loader)):
            next(first)


def test_two_loaders_in_two_threads(windows):
    results: dict[int, object] = {}

    def run(k: int) -> None:
        try:
            loader = fb.WindowLoader(windows, batch_size=128, shuffle=True, seed=k, prefetch=2)
            total = 0.0
            for _ in range(3):
                for x, y in loader:
                    total += float(x.sum())
            results[k] = total
        except BaseException as error:  # noqa: BLE001
            results[k] = error

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    expected = 3 * float(sum(torch.from_numpy(windows[i][0]).sum() for i in range(len(windows))))
    for k in range(2):
        assert not isinstance(results[k], BaseException), results[k]
        assert results[k] == pytest.approx(expected, rel=1e-4)


def test_prefetcher_stops_when_consumer_disappears():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    p = Prefetcher(endless(), depth=2)
    assert next(p) == 0
    del p
    gc.collect()
    _wait_no_threads()
    n = len(produced)
    time.sleep(0.2)
    assert len(produced) == n  # nothing runs after the consumer is gone


def test_prefetch_gathers_the_next_batches_while_the_step_runs(windows, monkeypatch):
    """Overlap as a fact, not a timing: gathers run in the producer thread during the step.

    (How much time it saves is a benchmark: python -m bench.overlap.)
    """
    import fastbatch.loader as loader_module

    monkeypatch.setattr(loader_module, "CHUNK_BYTES", 1)  # one chunk per MIN_CHUNK_BATCHES batches
    real = type(windows).gather
    gathers: list[tuple[float, str]] = []

    def recording_gather(self, *args, **kwargs):
        gathers.append((time.monotonic(), threading.current_thread().name))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(windows), "gather", recording_gather)
    loader = fb.WindowLoader(windows, batch_size=64, shuffle=True, seed=0, prefetch=8)
    it = iter(loader)
    next(it)
    step_start = time.monotonic()
    time.sleep(0.3)  # the training step, releasing the CPU
    step_end = time.monotonic()
    during = [name for t, name in gathers if step_start <= t <= step_end]
    assert during and all(name.startswith("fastbatch-prefetch") for name in during)
    del it


def test_ctrl_c_ends_the_program_promptly(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(
        """
        import numpy as np, sys, time
        import fastbatch as fb
        w = fb.SlidingWindows(np.random.default_rng(0).random((200_000, 8), dtype=np.float32), window=64)
        loader = fb.WindowLoader(w, batch_size=64, shuffle=True, seed=0, prefetch=4)
        print("ready", flush=True)
        while True:
            for x, y in loader:
                time.sleep(0.001)
        """
    ))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        proc.wait(timeout=10)
        assert time.monotonic() - start < 5
        assert proc.returncode != 0
        assert "KeyboardInterrupt" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_interpreter_exit_mid_epoch_does_not_hang(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(textwrap.dedent(
        """
        import numpy as np
        import fastbatch as fb
        w = fb.SlidingWindows(np.random.default_rng(0).random((100_000, 4), dtype=np.float32), window=32)
        loader = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=0, prefetch=8)
        it = iter(loader)
        next(it)
        keep = it  # still alive at exit, its thread blocked on a full queue
        print("exiting", flush=True)
        """
    ))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "exiting"
        start = time.monotonic()  # imports and the first batch are done: from here on it is only the exit
        proc.wait(timeout=60)
        # Stopping the producer takes milliseconds; one that ignores the stop
        # costs the join's 5 s timeout at exit, and a hang the 60 s above.
        assert time.monotonic() - start < 3
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _reference_epoch(windows, **kwargs):
    loader = fb.WindowLoader(windows, prefetch=0, **kwargs)
    return [(x.clone(), y.clone()) for x, y in loader]


_HOLDERS = {
    "batch": (lambda x: x, lambda kept, ex: torch.equal(kept, ex)),
    "slice": (lambda x: x[2:5], lambda kept, ex: torch.equal(kept, ex[2:5])),
    "reshaped": (lambda x: x.view(-1), lambda kept, ex: torch.equal(kept, ex.view(-1))),
    "numpy": (lambda x: x.numpy(), lambda kept, ex: np.array_equal(kept, ex.numpy())),
    "storage": (
        lambda x: (x.untyped_storage(), x.storage_offset(), x.numel()),
        lambda kept, ex: torch.equal(
            torch.tensor([], dtype=torch.float32).set_(kept[0], kept[1], (kept[2],)), ex.reshape(-1)
        ),
    ),
}


@pytest.mark.parametrize("holder", sorted(_HOLDERS))
@pytest.mark.parametrize("prefetch", [0, 8])
def test_batch_memory_is_never_rewritten_while_anything_holds_it(prefetch, holder, monkeypatch):
    """Each way of holding part of a batch (the batch itself dropped) must keep its memory out of reuse."""
    import fastbatch.loader as loader_module

    monkeypatch.setattr(loader_module, "CHUNK_BYTES", 8 << 10)  # many small chunks, many reuses
    data = np.random.default_rng(4).random(60_000, dtype=np.float32)
    w = fb.SlidingWindows(data, window=10)
    kwargs = dict(batch_size=32, shuffle=True, seed=2)
    expected = _reference_epoch(w, **kwargs)
    hold, same = _HOLDERS[holder]
    loader = fb.WindowLoader(w, prefetch=prefetch, **kwargs)
    held = {}
    for k, (x, _y) in enumerate(loader):
        if k % 23 == 0:  # one batch in a few chunks: nothing else keeps those chunks busy
            held[k] = hold(x)
        if k % 50 == 0:
            time.sleep(0.001)  # let the producer run ahead and try to reuse
    loader.set_epoch(1)
    for _ in loader:  # a second epoch over the same buffers
        pass
    assert held
    for k, kept in held.items():
        assert same(kept, expected[k][0]), f"batch {k} held as {holder} was overwritten"
