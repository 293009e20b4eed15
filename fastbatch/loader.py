"""WindowLoader: batches of windows as torch tensors, gathered many at a time.

Per batch, the loader does no Python work beyond handing out two tensor views:
windows are gathered by one kernel call per *chunk* of batches (a few MiB),
and the chunk is split into batches by ``torch.split``.  A chunk buffer is
reused only once nothing outside the loader refers to it, so a batch the user
keeps is never overwritten.
"""

from __future__ import annotations

import secrets
import sys
from typing import Iterator

import numpy as np
import torch

from fastbatch._checks import check_bool, check_int, check_seed
from fastbatch.order import EpochOrder
from fastbatch.windows import SlidingWindows

# About this many bytes of windows are gathered per kernel call: large enough
# that the Python cost per call vanishes behind the copy for tiny batches,
# small enough to stay in the L2/L3 cache of the consumer.  Chosen with
# ``python -m bench.speed`` on the textbook and bandwidth settings.
CHUNK_BYTES = 1 << 21
# Chunk buffers kept for reuse; more are allocated while the user holds batches.
POOL_SIZE = 3


class _ChunkPool:
    """Gather buffers reused once no batch handed out still refers to them."""

    def __init__(self, windows: SlidingWindows, capacity: int) -> None:
        self.windows = windows
        self.capacity = capacity
        self.free: list[tuple[np.ndarray, np.ndarray]] = []
        self.allocations = 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        w = self.windows
        for k in range(len(self.free)):
            # Two references mean free: the pool's tuple and getrefcount's
            # argument.  A torch view handed out holds one more via its storage.
            if (
                self.free[k][0].shape[0] >= n
                and sys.getrefcount(self.free[k][0]) == 2
                and sys.getrefcount(self.free[k][1]) == 2
            ):
                return self.free[k]
        pair = (
            np.empty((n, w.window, w.n_features), dtype=w.dtype),
            np.empty((n, w.horizon, w.n_targets), dtype=w.dtype),
        )
        if len(self.free) >= self.capacity:
            # Every pooled buffer is still held by the user: forget the oldest.
            self.free.pop(0)
        self.free.append(pair)
        self.allocations += 1
        return pair


class WindowLoader:
    """Iterate over batches of windows as torch tensors ``(x, y)``.

    Parameters
    ----------
    windows:
        The :class:`SlidingWindows` to draw from.
    batch_size:
        Windows per batch (>= 1).  A batch size above the number of windows
        gives one batch; memory follows the windows, never ``batch_size`` alone.
    shuffle:
        ``False``: batch ``k`` holds windows ``k*B ... k*B+B-1``.  ``True``:
        each epoch is a permutation of all windows, a pure function of
        ``(seed, epoch)``.
    seed:
        Integer in ``[0, 2**64)``; ``None`` draws one when the loader is made
        (see :attr:`seed`).
    drop_last:
        Drop the last batch when it is partial.

    Each ``iter(loader)`` runs epoch :attr:`epoch` and then advances it by one,
    so consecutive epochs are shuffled differently; :meth:`set_epoch` sets the
    epoch of the next iteration explicitly (as with ``DistributedSampler``).
    """

    def __init__(
        self,
        windows: SlidingWindows,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(windows, SlidingWindows):
            raise TypeError(f"windows must be a fastbatch.SlidingWindows, got {type(windows).__name__}")
        self.windows = windows
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        self.seed = secrets.randbits(63) if seed is None else check_seed(seed)
        self.epoch = 0
        n = len(windows)
        self.n_batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        self._pool = _ChunkPool(windows, POOL_SIZE)

    def __len__(self) -> int:
        """Batches per epoch (iterations per epoch)."""
        return self.n_batches

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (it selects the shuffled order)."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    @property
    def n_samples(self) -> int:
        """Windows delivered per epoch (all of them unless ``drop_last`` drops a tail)."""
        return min(len(self.windows), self.n_batches * self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch = epoch + 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        w, bs = self.windows, self.batch_size
        total = self.n_samples
        order = EpochOrder(len(w), shuffle=self.shuffle, seed=self.seed, epoch=epoch)
        per_chunk = max(1, CHUNK_BYTES // max(1, bs * w.window_nbytes)) * bs
        for start in range(0, total, per_chunk):
            stop = min(start + per_chunk, total)
            bx, by = self._pool.take(stop - start)
            x, y = w.gather(order.ids(start, stop), bx[: stop - start], by[: stop - start])
            xs = torch.from_numpy(x).split(bs)
            ys = torch.from_numpy(y).split(bs)
            del x, y, bx, by
            yield from zip(xs, ys)
            del xs, ys

    def __repr__(self) -> str:
        return (
            f"WindowLoader(n_batches={self.n_batches}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})"
        )
