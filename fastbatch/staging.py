"""Staging memory: where the gather kernel writes a chunk of batches.

Two kinds, both kept by the loader across epochs and lent to one producer
at a time (see :class:`StagingLease` in ``loader.py``):

- :class:`HostPool` for batches that stay on the CPU.  The batches handed out
  are views of the staging memory, so each chunk's memory is *owned* by a
  :class:`_Owner` object: every numpy array and torch tensor made from the
  chunk keeps it alive through its ``base`` chain (``torch.from_numpy`` keeps
  the array alive through the tensor's storage), and when the last of them is
  collected the owner's finalizer hands the memory back to the pool.  Nothing
  reads reference counts: memory that anything still refers to is, by
  construction, not in the pool.
- :class:`PinnedRing` for batches bound to a CUDA device: ``slots`` pinned
  buffers, each guarded by the CUDA event recorded after its host-to-device
  copy.  A slot is rewritten only once that event has completed.  The user
  gets device tensors, never views of a slot.

See NOTE [ Staging, streams and shutdown ] in docs/design.md.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Sequence

import numpy as np
import torch

# Fields are laid out in a slab at this alignment, so every field starts
# where any dtype (and a cache line) may.
_ALIGN = 64


def _round_up(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class FieldSpec:
    """One array of a chunk: its per-window shape and dtype (``x``: ``(T, F)``, ``series``: ``()``)."""

    __slots__ = ("tail", "dtype", "window_bytes")

    def __init__(self, tail: Sequence[int], dtype) -> None:
        self.tail = tuple(int(t) for t in tail)
        self.dtype = np.dtype(dtype)
        self.window_bytes = int(np.prod(self.tail, dtype=np.int64)) * self.dtype.itemsize

    def __eq__(self, other) -> bool:
        return isinstance(other, FieldSpec) and (self.tail, self.dtype) == (other.tail, other.dtype)

    def __repr__(self) -> str:
        return f"FieldSpec({self.tail}, {self.dtype})"


def slab_bytes(fields: Sequence[FieldSpec], n: int) -> int:
    """Bytes of one slab holding ``n`` windows of every field."""
    return sum(_round_up(f.window_bytes * n) for f in fields) or _ALIGN


def carve(slab: np.ndarray, fields: Sequence[FieldSpec], n: int) -> tuple[np.ndarray, ...]:
    """The fields of ``n`` windows as C-contiguous views of the ``uint8`` ``slab``."""
    out, at = [], 0
    for f in fields:
        size = f.window_bytes * n
        out.append(slab[at : at + size].view(f.dtype).reshape((n, *f.tail)))
        at += _round_up(size)
    return tuple(out)


class _Owner:
    """Owns a pooled slab for as long as any array or tensor refers to the chunk made from it.

    numpy makes the chunk's array from this object's ``__array_interface__``
    and keeps the object as the array's ``base``; every view of that array,
    and every tensor ``torch.from_numpy`` makes of one, keeps the base chain
    alive.  When the last of them goes, so does the owner, and its finalizer
    returns the slab to the pool — in whichever thread dropped the last
    reference, so the pool's free list is a thread-safe deque.
    """

    __slots__ = ("__array_interface__", "_slab", "_free")

    def __init__(self, slab: np.ndarray, free: deque) -> None:
        self.__array_interface__ = slab.__array_interface__
        self._slab, self._free = slab, free

    def __del__(self) -> None:
        self._free.append(self._slab)


class HostPool:
    """CPU slabs for chunks; a slab is back in the pool only when nothing refers to its chunk.

    ``keep`` slabs at most wait in the pool; the rest are freed, so a user who
    keeps every batch (``list(loader)``) costs memory only for what they keep.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: deque = deque()
        self.allocations = 0
        # Every slab has the size of the largest chunk so far, so the short
        # last chunk of an epoch never leaves a slab too small for the next.
        self._slab_bytes = 0

    def take(self, fields: Sequence[FieldSpec], n: int) -> tuple[np.ndarray, ...]:
        """Arrays for ``n`` windows of each field, owned by a fresh :class:`_Owner`."""
        need = slab_bytes(fields, n)
        self._slab_bytes = max(self._slab_bytes, need)
        slab = None
        while self._free:
            candidate = self._free.popleft()
            if candidate.shape[0] >= need:
                slab = candidate
                break
            # Smaller than this loader's chunks now are: dropped.
        if slab is None:
            slab = np.empty(self._slab_bytes, dtype=np.uint8)
            self.allocations += 1
        while len(self._free) >= self.keep:
            self._free.popleft()
        owned = np.asarray(_Owner(slab, self._free))
        return carve(owned, fields, n)


class PinnedSlot:
    """One pinned slab and the event after which its last copy is done."""

    __slots__ = ("pinned", "array", "event")

    def __init__(self, nbytes: int, pin: bool) -> None:
        # Unpinned only where there is no CUDA: the same path then runs, and
        # is tested, on any machine.
        self.pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
        self.array = self.pinned.numpy()
        self.event = None

    def fields(self, fields: Sequence[FieldSpec], n: int) -> tuple[tuple[np.ndarray, ...], tuple[torch.Tensor, ...]]:
        """The fields of ``n`` windows, as numpy views (for the kernel) and pinned tensors (for the copy)."""
        arrays = carve(self.array, fields, n)
        return arrays, tuple(torch.from_numpy(a) for a in arrays)


class PinnedRing:
    """``slots`` pinned slabs used in turn, each rewritten only after its copy finished."""

    def __init__(self, slots: int, *, pin: bool = True) -> None:
        self.n_slots, self.pin = slots, pin
        self.slots: list[PinnedSlot] = []
        self._next = 0
        self.allocations = 0
        self._lock = threading.Lock()

    def take(self, fields: Sequence[FieldSpec], n: int) -> PinnedSlot:
        need = slab_bytes(fields, n)
        with self._lock:
            if self.slots and self.slots[0].array.shape[0] < need:
                self._wait_all()
                self.slots = []
            if not self.slots:
                self.slots = [PinnedSlot(need, self.pin) for _ in range(self.n_slots)]
                self.allocations += self.n_slots
            slot = self.slots[self._next]
            self._next = (self._next + 1) % len(self.slots)
        if slot.event is not None:
            # Blocks only the producer, and only while the copy that last read
            # this slot still runs: never the training loop.
            slot.event.synchronize()
            slot.event = None
        return slot

    def _wait_all(self) -> None:
        for slot in self.slots:
            if slot.event is not None:
                slot.event.synchronize()
