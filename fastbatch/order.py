"""Epoch orders: which window ids go into which batch, as a pure function.

The order of an epoch depends on ``(seed, epoch, n_windows)`` alone, so two
machines, two thread counts or a resumed run see the same batches, and a
position in the epoch is all a checkpoint needs.
"""

from __future__ import annotations

import numpy as np

_MASK = 2**64 - 1


def _splitmix64(x: int) -> int:
    """splitmix64 on Python ints (the key schedule; the kernels use the same mixer)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def epoch_key(seed: int, epoch: int) -> np.uint64:
    """The 64-bit key of one epoch's permutation: distinct epochs give unrelated keys."""
    return np.uint64(_splitmix64(_splitmix64(seed) ^ (epoch & _MASK)))


def index_dtype(n: int) -> np.dtype:
    """int32 while ids fit (4 bytes a window), int64 beyond."""
    return np.dtype(np.int32) if n < 2**31 else np.dtype(np.int64)


def shuffled(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` for ``(seed, epoch)``: each window exactly once."""
    from fastbatch.kernels import shuffled_order

    out = np.empty(n, dtype=index_dtype(n))
    shuffled_order(out, epoch_key(seed, epoch))
    return out


class EpochOrder:
    """The window ids of one epoch, handed out in consecutive spans.

    ``shuffle=False`` gives ``0, 1, ..., n-1`` without storing anything;
    ``shuffle=True`` stores one permutation (4 bytes a window below 2**31).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, epoch: int) -> None:
        self.n = n
        self._perm = shuffled(n, seed, epoch) if shuffle else None

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Window ids at positions ``start:stop`` of the epoch."""
        if self._perm is None:
            return np.arange(start, stop, dtype=index_dtype(self.n))
        return self._perm[start:stop]
