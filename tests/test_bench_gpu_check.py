"""bench.gpu_check times its loops in the producer's steady state; the timing logic runs on the CPU here."""

import numpy as np
import pytest
import torch

import fastbatch as fb
from bench import gpu_check
from bench.gpu_check import TIMED_PER_PREFETCHABLE, loader_rate, prefetchable_batches, timed_batches

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Producer:
    """``ready`` batches made while the consumer idled, then one every ``period`` s of a fake clock."""

    def __init__(self, ready: int, period: float) -> None:
        self.ready, self.period, self.now, self.taken = ready, period, 0.0, 0

    def clock(self) -> float:
        return self.now

    def __iter__(self):
        return self

    def __next__(self):
        self.taken += 1
        if self.ready:
            self.ready -= 1
        else:
            self.now += self.period
        return (torch.zeros(1), torch.zeros(1))


def test_batches_prefetched_before_the_clock_starts_are_not_timed():
    producer = Producer(ready=11, period=0.004)
    seconds = timed_batches(producer, 200, prefetchable=12, sync=lambda: None, clock=producer.clock)
    assert seconds == pytest.approx(0.004)  # the producer's rate, not flattered by the 11 ready batches
    assert producer.taken == 2 * 12 + 200


def test_each_batch_goes_through_the_step_drained_ones_too():
    producer, stepped = Producer(ready=3, period=1.0), []
    timed_batches(producer, 40, prefetchable=4, step=lambda x, y: stepped.append(x), sync=lambda: None,
                  clock=producer.clock)
    assert len(stepped) == 8 + 40


def test_too_few_timed_batches_are_refused():
    with pytest.raises(ValueError, match=f"n_batches=100: time at least {TIMED_PER_PREFETCHABLE} x the 12"):
        timed_batches(Producer(0, 1.0), 100, prefetchable=12, sync=lambda: None)
    with pytest.raises(ValueError, match="the epoch ended before 24 \\+ 120 batches"):
        timed_batches(iter([(1, 2)] * 50), 120, prefetchable=12, sync=lambda: None)


def test_the_bound_covers_the_documented_chunks():
    # docs/loader.md: at least four batches a chunk, at most 32 MiB unless one batch is larger.
    assert prefetchable_batches(4, 8 << 20) == 4 + 3 * 4
    assert prefetchable_batches(2, 64 << 20) == 2 + 3 * 4
    assert prefetchable_batches(2, 1 << 20) == 2 + 3 * 32


def test_the_loader_rate_on_the_cpu_times_ten_times_what_can_be_prefetched(monkeypatch):
    # 8 MiB batches, as in the GPU check: chunks of at most four batches.
    windows = fb.SlidingWindows(np.random.default_rng(0).random((200_000, 2), dtype=np.float32), window=1024)
    loader = fb.WindowLoader(windows, batch_size=1024, shuffle=True, seed=0, prefetch=2)
    taken = []
    real = gpu_check.timed_batches

    def spy(batches, n_batches, *, prefetchable, **kwargs):
        taken.append((n_batches, prefetchable))
        return real(batches, n_batches, prefetchable=prefetchable, **kwargs)

    monkeypatch.setattr(gpu_check, "timed_batches", spy)
    assert loader_rate(loader, 5, sync=lambda: None) > 0
    (n_batches, prefetchable), = taken
    assert prefetchable == prefetchable_batches(2, 1024 * windows.window_nbytes) == 14
    assert n_batches == TIMED_PER_PREFETCHABLE * prefetchable


@pytest.mark.gpu
@gpu
def test_the_gpu_check_runs_quick():
    assert gpu_check.main(["--quick"]) == 0
