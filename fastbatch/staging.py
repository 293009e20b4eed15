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


class ChunkBuffers:
    """``x`` ``(n, T, F)`` and ``y`` ``(n, H, n_targets)`` arrays a chunk is gathered into."""

    __slots__ = ("x", "y", "pinned_x", "pinned_y", "event", "idle_refs")

    def __init__(self, x: np.ndarray, y: np.ndarray, pinned_x=None, pinned_y=None) -> None:
        self.x, self.y = x, y
        self.pinned_x, self.pinned_y = pinned_x, pinned_y
        self.event = None
        self.idle_refs = (0, 0)

    @property
    def capacity(self) -> int:
        return int(self.x.shape[0])


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
            # Free means: no reference beyond those the buffer had when it was
            # made.  Every torch view handed out holds one more (torch.from_numpy
            # keeps the array alive through the tensor's storage).  The count at
            # creation is measured, not assumed, so this holds on any CPython.
            if buf.capacity >= n and _refs(buf, "x") == buf.idle_refs[0] and _refs(buf, "y") == buf.idle_refs[1]:
                return buf
        xs, ys = _shapes(n, self.x_tail, self.y_tail)
        buf = ChunkBuffers(np.empty(xs, self.dtype), np.empty(ys, self.dtype))
        buf.idle_refs = (_refs(buf, "x"), _refs(buf, "y"))
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
