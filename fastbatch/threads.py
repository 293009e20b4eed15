"""How many threads the gather kernel uses: measured, not guessed.

A parallel kernel on every core is twice as fast as one thread on an idle
machine, and several times slower when another process or the training step
keeps a core busy: an OpenMP region cannot end before its descheduled thread
has run (measured on 2 cores: 1.0 ms against 2.0 ms idle, 8 ms against
2.3 ms with one core busy, for the same 17 MB gather).  So the loader times
its own gathers and uses whichever of "all threads" and "one thread" moves
more bytes per second now, trying the other one every few chunks.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numba

from fastbatch._checks import check_int

# Try the other thread count once every this many chunks, so the choice
# follows the machine when its load changes.
EXPLORE_EVERY = 16
# Gathers of each choice not counted at the start (see GatherThreads.record).
WARMUP_SAMPLES = 1
# Weight of the newest measurement in the running rate of a choice.
_SMOOTHING = 0.3


def max_threads() -> int:
    """The most threads a Numba kernel may use in this process (NUMBA_NUM_THREADS)."""
    return int(numba.config.NUMBA_NUM_THREADS)


class GatherThreads:
    """The thread count for each gather, chosen by measured bytes per second.

    ``num_threads=None`` chooses between :func:`max_threads` and 1; an integer
    fixes it.  Numba's thread count is thread-local: it is set around each
    kernel call and restored afterwards, so the caller's own Numba code is
    unaffected.
    """

    def __init__(self, num_threads: int | None = None) -> None:
        limit = max_threads()
        if num_threads is None:
            self.choices: tuple[int, ...] = (limit, 1) if limit > 1 else (1,)
        else:
            num_threads = check_int("num_threads", num_threads, minimum=1)
            if num_threads > limit:
                raise ValueError(
                    f"num_threads must be between 1 and NUMBA_NUM_THREADS={limit}, got num_threads={num_threads}"
                )
            self.choices = (num_threads,)
        self.rates: dict[int, float | None] = {c: None for c in self.choices}
        self.samples: dict[int, int] = {c: 0 for c in self.choices}
        self.calls = 0

    def choose(self) -> int:
        self.calls += 1
        untried = [c for c in self.choices if self.rates[c] is None]
        if untried:
            return min(untried, key=lambda c: self.samples[c])
        best = max(self.choices, key=lambda c: self.rates[c])
        if len(self.choices) > 1 and self.calls % EXPLORE_EVERY == 0:
            return next(c for c in self.choices if c != best)
        return best

    def record(self, threads: int, nbytes: int, seconds: float) -> None:
        self.samples[threads] += 1
        if self.samples[threads] <= WARMUP_SAMPLES:
            # A choice's first gathers write into fresh staging memory, whose
            # page faults cost as much as the copy: not what the choice is worth.
            return
        rate = nbytes / max(seconds, 1e-9)
        old = self.rates[threads]
        self.rates[threads] = rate if old is None else (1 - _SMOOTHING) * old + _SMOOTHING * rate

    @contextmanager
    def run(self, nbytes: int) -> Iterator[int]:
        """Run the body with the chosen thread count and learn from its duration."""
        threads = self.choose()
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        start = time.perf_counter()
        try:
            yield threads
        finally:
            self.record(threads, nbytes, time.perf_counter() - start)
            numba.set_num_threads(previous)
