"""The producer side of a loader: a frozen plan, and the chunks each placement makes from it.

A :class:`Plan` is a snapshot of everything that fixes an epoch's batches
(windows, batching, order, normalisation, dtypes, placement, rank), taken
when ``iter(loader)`` is called: the producer thread reads nothing from the
loader itself, so a loader changed while an epoch runs cannot change that
epoch half-way.

Every placement produces the same thing, a :class:`Chunk`: the fields of
consecutive windows of the epoch (``x``, ``y`` and, with series ids, ``series``)
as torch tensors with a first dimension of windows, plus the CUDA event after
which they may be read.  The consumer cuts them into batches.

- ``cpu``: gather into host memory owned by the chunk (``staging.HostPool``).
- ``pinned``: gather into a pinned slot, copy to the device on the producer's
  side stream (``staging.PinnedRing``); series ids travel in the same slot.
- ``resident``: the series lives on the device (``device.DeviceWindows``); only
  the chunk's window ids (and series ids) are copied, through a pinned slot.

NOTE [ Staging, streams and shutdown ] in docs/design.md has the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from fastbatch.order import EpochOrder, OrderSpec
from fastbatch.staging import FieldSpec, HostPool, PinnedRing
from fastbatch.threads import GatherThreads
from fastbatch.windows import SlidingWindows


@dataclass(frozen=True)
class Plan:
    """Everything that fixes one epoch's batches; made by the loader, read by its producer only."""

    windows: SlidingWindows
    batch_size: int
    n_samples: int
    chunk_windows: int
    order: OrderSpec
    seed: int
    rank: int
    world_size: int
    drop_last: bool
    mean: np.ndarray | None
    std: np.ndarray | None
    dtype: torch.dtype
    gather_dtype: np.dtype
    device: torch.device
    path: str  # "cpu", "pinned" or "resident"

    @property
    def series_ids(self) -> bool:
        return self.windows.return_series_id

    def fields(self) -> tuple[FieldSpec, ...]:
        """What a chunk holds per window, as gathered (before any cast on the device)."""
        return self.windows._chunk_fields(self.gather_dtype)

    def epoch_order(self, epoch: int) -> EpochOrder:
        """This rank's order of ``epoch`` (a stored shuffle is computed here: the costly part of an epoch start)."""
        return EpochOrder(len(self.windows), kind=self.order.kind, seed=self.seed, epoch=epoch,
                          block=(self.order.block_windows, self.order.pool_blocks), rank=self.rank,
                          world_size=self.world_size, drop_last=self.drop_last)

    def spans(self, start: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)``: window positions of each chunk from position ``start`` of the epoch."""
        for position in range(start, self.n_samples, self.chunk_windows):
            yield position, min(position + self.chunk_windows, self.n_samples)

    def key(self) -> tuple:
        """What makes two plans give the same batches (for the next epoch prepared ahead)."""
        return (id(self.windows), self.batch_size, self.n_samples, self.chunk_windows, self.order, self.seed,
                self.rank, self.world_size, self.drop_last, id(self.mean), self.dtype, self.gather_dtype,
                self.device, self.path)


@dataclass
class Chunk:
    """Consecutive windows of an epoch: ``fields`` (tensors, first dimension windows) and when to read them.

    ``ready`` is the CUDA event recorded after the fields were written on the
    producer's stream (``None`` on the CPU); ``start`` is the window position
    of the first window in the epoch.
    """

    fields: tuple
    start: int
    ready: Any = None

    @property
    def n(self) -> int:
        return int(self.fields[0].shape[0])


# Batch views are made this many batches at a time, as the consumer reaches
# them: views made for a whole chunk at once live long enough to be promoted
# by Python's garbage collector, whose full collections then cost more than
# the views themselves (measured: 4.9 against 2.3 us a batch, 1,489-batch
# chunks against groups of 64, textbook setting).
VIEW_GROUP = 64


def batches(chunk: Chunk, batch_size: int, batch_type=None) -> Iterator[tuple]:
    """The chunk's batches: a new tuple (or ``batch_type``) of new tensor views for each."""
    step = batch_size * VIEW_GROUP
    fields = chunk.fields
    for start in range(0, chunk.n, step):
        group = zip(*(f[start : start + step].split(batch_size) for f in fields))
        yield from group if batch_type is None else (batch_type(*b) for b in group)


def _gather(plan: Plan, order: EpochOrder, start: int, stop: int, arrays, threads: GatherThreads) -> np.ndarray:
    """The window ids of positions ``start:stop``, gathered into ``arrays``; returns the ids."""
    w = plan.windows
    w.check_source()
    n = stop - start
    # The order's kernel and the gather run under the same measured thread count.
    with threads.run(n * w.window_nbytes):
        ids = order.ids(start, stop)
        w._gather_chunk(ids, arrays, plan.mean, plan.std)
    return ids


def cpu_chunks(plan: Plan, order: EpochOrder, start: int, pool: HostPool, threads: GatherThreads) -> Iterator[Chunk]:
    """Chunks gathered into host memory that the chunk's tensors own (``staging.HostPool``)."""
    fields = plan.fields()
    for lo, hi in plan.spans(start):
        arrays = pool.take(fields, hi - lo)
        _gather(plan, order, lo, hi, arrays, threads)
        tensors = tuple(torch.from_numpy(a) for a in arrays)
        del arrays
        yield Chunk(plan.windows._finish_chunk(tensors, plan.dtype), lo)


def pinned_chunks(plan: Plan, order: EpochOrder, start: int, ring: PinnedRing, stream, threads: GatherThreads
                  ) -> Iterator[Chunk]:
    """Chunks gathered into a pinned slot and copied to the device on ``stream``."""
    fields = plan.fields()
    for lo, hi in plan.spans(start):
        slot = ring.take(fields, hi - lo)
        arrays, pinned = slot.fields(fields, hi - lo)
        _gather(plan, order, lo, hi, arrays, threads)
        with _on(stream, plan.device):
            out = tuple(_copy(t, plan.device) for t in pinned)
            # A bfloat16 cast runs here, on the copy stream, before the event.
            out = plan.windows._finish_chunk(out, plan.dtype)
            ready = _record(stream)
        slot.event = ready
        yield Chunk(out, lo, ready)


def resident_chunks(plan: Plan, order: EpochOrder, start: int, resident, ring: PinnedRing, stream
                    ) -> Iterator[Chunk]:
    """Chunks gathered on the device from the series uploaded once; window ids travel per chunk."""
    w = plan.windows
    # Slot fields: the window ids and, where the arithmetic or the user needs
    # them, the series ids.
    series = w.many_series or plan.series_ids
    fields = (FieldSpec((), np.int64),) + ((FieldSpec((), np.int64),) if series else ())
    for lo, hi in plan.spans(start):
        slot = ring.take(fields, hi - lo)
        arrays, pinned = slot.fields(fields, hi - lo)
        arrays[0][:] = order.ids(lo, hi)
        if series:
            arrays[1][:] = w.series_of(arrays[0]) if w.many_series else 0
        with _on(stream, plan.device):
            ids = tuple(_copy(t, plan.device) for t in pinned)
            out = w._finish_chunk(resident.chunk(ids[0], ids[1] if series else None, plan.series_ids), plan.dtype)
            ready = _record(stream)
        slot.event = ready
        yield Chunk(out, lo, ready)


class _on:
    """Run on ``stream`` and its device for the block, restoring the caller's device and stream after.

    Nothing is set outside the block, so ``prefetch=0`` (the producer runs in
    the caller's thread) leaves the user's current device as it was.
    """

    def __init__(self, stream, device: torch.device) -> None:
        self._contexts = [] if stream is None else [torch.cuda.device(device), torch.cuda.stream(stream)]

    def __enter__(self) -> None:
        for c in self._contexts:
            c.__enter__()

    def __exit__(self, *exc) -> None:
        for c in reversed(self._contexts):
            c.__exit__(*exc)


def _copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of ``t`` on ``device``, always a new tensor (a CPU "device" still gets its own memory)."""
    out = torch.empty(t.shape, dtype=t.dtype, device=device)
    out.copy_(t, non_blocking=device.type == "cuda")
    return out


def _record(stream):
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event

