"""Staging buffers: where the gather kernel writes a chunk of batches.

Two kinds, both allocated once per loader and reused across epochs:

- :class:`HostPool` for batches that stay on the CPU.  The user receives views
  of these buffers, so a buffer is rewritten only when nothing outside the
  pool refers to it any more (its reference count says so).
- :class:`PinnedRing` for batches bound to a CUDA device: ``slots`` pinned
  buffers, each guarded by the CUDA event recorded after its host-to-device
  copy.  A slot is rewritten only once that event has completed.

See NOTE [ Staging, streams and shutdown ] in docs/design.md.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


# torch does not expose how many tensors share a storage publicly; this
# private counter has been stable for years.  Without it, batch views are
# simply made anew for every chunk (slower for tiny batches, equally safe).
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _storage_holders(t: torch.Tensor) -> tuple[int, int]:
    """(tensors sharing ``t``'s storage, Python references to the storage object).

    The first counts views derived from a batch (``x[0]``, ``x.view(-1)``); the
    second a storage handle (``x.untyped_storage()``), which torch keeps as one
    Python object per storage and so does not add to the first.
    """
    storage = t.untyped_storage()
    return _storage_use_count(storage._cdata), sys.getrefcount(storage)


class _BatchViews:
    """The batch views of one full chunk, made once and handed out again on every reuse.

    Making two tensor views costs about a microsecond, as much as gathering a
    32-window batch, so for tiny batches the views are kept with the buffer.
    The buffer is free only when no view is held (each view's reference count
    is back to its idle value) and no tensor derived from one exists (the
    storages' use counts are back to theirs).
    """

    __slots__ = ("n", "batch_size", "xs", "ys", "bases", "view_refs", "storage_refs")

    def __init__(self, n: int, batch_size: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.n, self.batch_size, self.bases = n, batch_size, (x, y)
        self.xs, self.ys = x.split(batch_size), y.split(batch_size)
        # Measured exactly as idle() counts, inside a generator over the tuple.
        self.view_refs = next(sys.getrefcount(v) for v in self.xs)
        self.storage_refs = (_storage_holders(x), _storage_holders(y))

    def idle(self) -> bool:
        if (_storage_holders(self.bases[0]), _storage_holders(self.bases[1])) != self.storage_refs:
            return False
        refs = self.view_refs
        getrefcount = sys.getrefcount
        return all(getrefcount(v) == refs for v in self.xs) and all(getrefcount(v) == refs for v in self.ys)


class ChunkBuffers:
    """``x`` ``(n, T, F)`` and ``y`` ``(n, H, n_targets)`` arrays a chunk is gathered into."""

    __slots__ = ("x", "y", "pinned_x", "pinned_y", "event", "idle_refs", "views", "lease")

    def __init__(self, x: np.ndarray, y: np.ndarray, pinned_x=None, pinned_y=None) -> None:
        self.x, self.y = x, y
        self.pinned_x, self.pinned_y = pinned_x, pinned_y
        self.event = None
        self.idle_refs = (0, 0)
        self.views: _BatchViews | None = None
        # A weak reference to the chunk made from this buffer: alive while the
        # chunk waits in the queue or is being handed out.
        self.lease = None

    @property
    def capacity(self) -> int:
        return int(self.x.shape[0])

    def measure_idle(self) -> None:
        """Record the reference counts of this buffer with nothing handed out."""
        self.idle_refs = (_refs(self, "x"), _refs(self, "y"))

    def is_free(self) -> bool:
        # Free means: no reference beyond those the buffer had when it was made
        # (or when its views were cached).  Every torch tensor made from the
        # arrays holds one more (torch.from_numpy keeps the array alive through
        # the tensor's storage).  The idle counts are measured, not assumed, so
        # this holds on any CPython.
        if self.lease is not None and self.lease() is not None:
            return False
        if (_refs(self, "x"), _refs(self, "y")) != self.idle_refs:
            return False
        return self.views is None or self.views.idle()

    def batch_views(self, n: int, batch_size: int, make) -> tuple[tuple, tuple]:
        """The batch views of the first ``n`` windows, cached when possible.

        ``make(x_array, y_array)`` turns the arrays into the batch tensors.
        """
        views = self.views
        if views is not None and views.n == n and views.batch_size == batch_size:
            return views.xs, views.ys
        x, y = make(self.x[:n], self.y[:n])
        if views is not None or _storage_use_count is None or x.untyped_storage().data_ptr() != self.x.ctypes.data:
            # Not the cached shape (the last chunk of an epoch), no use counter,
            # or a cast made a copy: fresh views, released with the batches.
            return x.split(batch_size), y.split(batch_size)
        self.views = _BatchViews(n, batch_size, x, y)
        del x, y
        self.measure_idle()
        return self.views.xs, self.views.ys


def _shapes(n: int, x_tail: tuple[int, int], y_tail: tuple[int, int]):
    return (n, *x_tail), (n, *y_tail)


class HostPool:
    """CPU buffers reused once no batch handed out still refers to them."""

    def __init__(self, x_tail, y_tail, dtype: np.dtype, capacity: int) -> None:
        self.x_tail, self.y_tail, self.dtype = tuple(x_tail), tuple(y_tail), dtype
        self.capacity = capacity
        self.buffers: list[ChunkBuffers] = []
        self.allocations = 0

    def take(self, n: int) -> ChunkBuffers:
        for k in range(len(self.buffers)):
            buf = self.buffers[k]
            if buf.capacity >= n and buf.is_free():
                return buf
        xs, ys = _shapes(n, self.x_tail, self.y_tail)
        buf = ChunkBuffers(np.empty(xs, self.dtype), np.empty(ys, self.dtype))
        buf.measure_idle()
        if len(self.buffers) >= self.capacity:
            # All pooled buffers are still held by the user: forget the oldest.
            self.buffers.pop(0)
        self.buffers.append(buf)
        self.allocations += 1
        return buf


def _refs(buf: ChunkBuffers, name: str) -> int:
    """Reference count of one of ``buf``'s arrays, measured the same way every time."""
    return sys.getrefcount(getattr(buf, name))


class PinnedRing:
    """``slots`` pinned host buffers used in turn, each rewritten only after its copy finished."""

    def __init__(self, x_tail, y_tail, dtype: np.dtype, capacity: int, slots: int) -> None:
        tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
        xs, ys = _shapes(capacity, tuple(x_tail), tuple(y_tail))
        self.slots: list[ChunkBuffers] = []
        for _ in range(slots):
            px = torch.empty(xs, dtype=tdtype, pin_memory=True)
            py = torch.empty(ys, dtype=tdtype, pin_memory=True)
            self.slots.append(ChunkBuffers(px.numpy(), py.numpy(), px, py))
        self._next = 0

    def take(self, n: int) -> ChunkBuffers:
        slot = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        if slot.event is not None:
            # Blocks only this (producer) thread, and only if the copy that last
            # read this slot is still running: never the training loop.
            slot.event.synchronize()
            slot.event = None
        return slot
