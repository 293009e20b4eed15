"""The gather's thread count: chosen by measurement, restored for the caller."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastbatch as fb
from fastbatch import threads
from fastbatch.threads import GatherThreads


def test_tries_each_choice_then_keeps_the_faster(monkeypatch):
    monkeypatch.setattr(threads, "max_threads", lambda: 4)
    tuner = GatherThreads()
    assert tuner.choices == (4, 1)
    tried = []
    for _ in range(2 * (threads.WARMUP_SAMPLES + 1)):  # each choice: warm-up gathers, then a measured one
        choice = tuner.choose()
        tried.append(choice)
        tuner.record(choice, 1000, 1.0 if choice == 4 else 0.25)  # one thread: 4 kB/s, all: 1 kB/s
    assert sorted(tried) == [1] * (threads.WARMUP_SAMPLES + 1) + [4] * (threads.WARMUP_SAMPLES + 1)
    picks = [tuner.choose() for _ in range(threads.EXPLORE_EVERY * 3)]
    assert picks.count(1) > picks.count(4) >= 2  # mostly the best, the other now and then


def test_follows_the_machine_when_the_other_choice_becomes_faster(monkeypatch):
    monkeypatch.setattr(threads, "max_threads", lambda: 2)
    tuner = GatherThreads()
    for _ in range(threads.WARMUP_SAMPLES + 1):
        tuner.record(2, 1000, 1.0)
        tuner.record(1, 1000, 0.5)
    assert max(tuner.choices, key=lambda c: tuner.rates[c]) == 1
    for _ in range(20):  # the machine frees up: two threads now take a tenth of the time
        tuner.record(2, 1000, 0.1)
    assert max(tuner.choices, key=lambda c: tuner.rates[c]) == 2


def test_the_first_gathers_of_a_choice_do_not_decide(monkeypatch):
    """Fresh staging memory makes a choice's first gather slow (page faults): it must not condemn the choice."""
    monkeypatch.setattr(threads, "max_threads", lambda: 2)
    tuner = GatherThreads()
    tuner.record(2, 1000, 10.0)  # first gather on two threads: page faults
    tuner.record(1, 1000, 1.0)
    tuner.record(2, 1000, 0.5)  # then two threads at their real speed
    tuner.record(1, 1000, 1.0)
    assert tuner.choose() == 2


def test_a_fixed_count_is_always_used_and_checked():
    assert GatherThreads(1).choices == (1,)
    with pytest.raises(ValueError, match="num_threads must be between 1 and NUMBA_NUM_THREADS=.*got num_threads=100000"):
        GatherThreads(100_000)
    with pytest.raises(TypeError, match="num_threads must be an integer"):
        GatherThreads(1.5)
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1, got num_threads=0"):
        fb.WindowLoader(fb.SlidingWindows(np.zeros(50), window=5), batch_size=4, num_threads=0)


def test_the_callers_numba_thread_count_is_restored():
    before = numba.get_num_threads()
    tuner = GatherThreads(1)
    with tuner.run(100) as used:
        assert used == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    data = np.random.default_rng(0).random(10_000)
    loader = fb.WindowLoader(fb.SlidingWindows(data, window=8), batch_size=64, prefetch=0, num_threads=1)
    for _ in loader:
        pass
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("num_threads", [None, 1])
def test_batches_do_not_depend_on_the_thread_choice(num_threads):
    data = np.random.default_rng(1).random((5_000, 3))
    w = fb.SlidingWindows(data, window=12, horizon=2)
    a = [x.clone() for x, _ in fb.WindowLoader(w, batch_size=100, shuffle=True, seed=3, num_threads=num_threads)]
    b = [x.clone() for x, _ in fb.WindowLoader(w, batch_size=100, shuffle=True, seed=3, num_threads=1, prefetch=0)]
    assert len(a) == len(b) == 50
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
