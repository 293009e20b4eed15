"""WindowLoader: batches of windows as torch tensors, on the CPU or a CUDA device.

The loader keeps configuration, epoch and resume state.  ``iter(loader)``
freezes the configuration into a :class:`fastbatch.pipeline.Plan`, lends the
producer the loader's staging memory, and starts the producer (a background
thread with ``prefetch > 0``); the returned iterator cuts the producer's
chunks into batches.  Windows are gathered one *chunk* of batches per kernel
call (about :data:`CHUNK_BYTES`), so small batches pay no kernel call and
almost no Python each.  The protocol is NOTE [ Staging, streams and shutdown ]
in docs/design.md.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import weakref
from typing import Any, Iterator

import numpy as np
import torch

from fastbatch._checks import _show, check_bool, check_int, check_seed
from fastbatch.device import PLACEMENTS, choose_placement, resolve_device
from fastbatch.distributed import resolve_ranks
from fastbatch.normalize import check_normalize, resolve_normalize
from fastbatch.order import resolve_order, shard_size
from fastbatch.pipeline import Chunk, Plan, batches, cpu_chunks, pinned_chunks, resident_chunks
from fastbatch.prefetch import Prefetcher
from fastbatch.resume import check_state, make_state
from fastbatch.staging import HostPool, PinnedRing
from fastbatch.threads import GatherThreads
from fastbatch.windows import SlidingWindows, _resolve_dtype

# Bytes of windows gathered per kernel call on the host path: large enough
# that the Python cost of a call vanishes behind the copy for tiny batches,
# small enough to stay in cache for the consumer.  Chosen with
# ``python -m bench.speed`` (docs/performance.md).
CHUNK_BYTES = 1 << 21
# Handing a chunk from the producer thread to the consumer costs tens of
# microseconds (a condition-variable wake-up and two GIL transfers), so a chunk
# holds at least this many batches, within MAX_CHUNK_BYTES.
MIN_CHUNK_BATCHES = 4
MAX_CHUNK_BYTES = 1 << 25
# The device-resident gather launches a few kernels per chunk; bigger chunks
# amortise the launches.
DEVICE_CHUNK_BYTES = 1 << 25


def _chunk_batches(batch_bytes: int, n_batches: int, device_resident: bool) -> int:
    """Batches gathered per kernel call (see CHUNK_BYTES and MIN_CHUNK_BATCHES)."""
    batch_bytes = max(1, batch_bytes)
    if device_resident:
        wanted = DEVICE_CHUNK_BYTES // batch_bytes
    else:
        wanted = min(max(MIN_CHUNK_BATCHES, CHUNK_BYTES // batch_bytes), MAX_CHUNK_BYTES // batch_bytes)
    return max(1, min(n_batches, wanted))


class _Progress:
    """Where the latest epoch iterator is; kept by the loader so state_dict outlives the iterator.

    ``position`` counts batches handed out; ``windows`` the windows in them,
    which differ from ``position * batch_size`` once the batch size changed
    mid-epoch.  It is derived from the chunk being handed out (its first
    window, the position it started at, its size), so ``next()`` only counts.
    """

    __slots__ = ("epoch", "position", "_base_windows", "_base_position", "_batch_size", "_limit")

    def __init__(self, epoch: int, position: int, windows: int) -> None:
        self.epoch, self.position = epoch, position
        self.at_chunk(windows, windows, 1)

    def at_chunk(self, start: int, stop: int, batch_size: int) -> None:
        """The next batches come from the chunk of windows ``start:stop``, ``batch_size`` each."""
        self._base_windows, self._base_position = start, self.position
        self._batch_size, self._limit = batch_size, stop

    @property
    def windows(self) -> int:
        return min(self._base_windows + (self.position - self._base_position) * self._batch_size, self._limit)


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
    device:
        Where batches are delivered: ``None``/``"cpu"`` (default), ``"cuda"``,
        ``"cuda:N"`` or a ``torch.device``.
    prefetch:
        Batches prepared ahead by a background thread; ``0`` gathers in the
        caller's thread when a batch is asked for.
    dtype:
        Batch dtype (numpy or torch dtype); default: ``windows.dtype``.  The
        cast happens inside the gather; ``torch.bfloat16`` is gathered as
        float32 and cast on the device after the copy.
    normalize:
        ``None`` (default), ``True`` (per-feature mean and std over every row
        of ``windows.data``, computed once here: build the windows over the
        training range) or ``(mean, std)``.  Applied to inputs and targets in
        the gather pass.
    placement:
        With a CUDA device: ``"host"`` keeps the series in host memory and
        copies each batch; ``"device"`` copies the series to the GPU once and
        gathers there; ``"auto"`` (default) picks ``"device"`` when the series
        takes at most ``fastbatch.device.DEVICE_RESIDENT_FRACTION`` of the GPU
        memory this process may still use (free memory, memory the caching
        allocator holds unused, within ``set_per_process_memory_fraction``).
        Every option works the same on both placements.
    order:
        ``None`` (default): ``"sequential"`` or, with ``shuffle=True``,
        ``"shuffle"``.  ``"shuffle"``: a uniform permutation, stored up to
        ``fastbatch.order.STORED_SHUFFLE_MAX`` windows and computed (O(1)
        memory) beyond; ``"feistel"``: always computed; ``"block"`` or a
        :class:`fastbatch.BlockShuffle`: blocks of consecutive windows
        shuffled, then windows within a pool of blocks, for data read from
        disk.  Any order but ``"sequential"`` shuffles.
    rank, world_size:
        This process's share of each epoch; default: torch.distributed's when
        it is initialised, else the whole epoch.  Ranks get disjoint shards
        and the same number of batches: ``drop_last=True`` drops the tail,
        otherwise the shortfall is padded with the epoch's first windows
        (``DistributedSampler``'s rules).
    num_threads:
        Threads of the gather kernel (and of the order's kernel).  ``None`` (default): the loader times
        its gathers and uses all of Numba's threads or one, whichever is
        faster at the moment (one wins when the training step or another
        process keeps cores busy); an integer fixes the count.
    check_nan:
        ``True``: look for NaNs in the windows when the loader is made (one
        pass over the data, see :meth:`SlidingWindows.find_nan`) and raise
        ``ValueError`` naming the first window with a NaN and where it starts.
        ``False`` (default): NaNs pass through to the batches unchanged.

    Each ``iter(loader)`` runs epoch :attr:`epoch` and then advances it by one,
    so consecutive epochs are shuffled differently; :meth:`set_epoch` sets the
    epoch of the next iteration explicitly (as with ``DistributedSampler``).
    A new ``iter()`` stops the previous iterator of the same loader (its next
    ``next()`` raises ``RuntimeError``).  An iterator may be shared by threads:
    each batch goes to exactly one of them.  Every batch is a new tensor
    object, and its memory is not reused while anything refers to it.
    :meth:`state_dict` / :meth:`load_state_dict` save and resume the position
    within an epoch.

    Attributes
    ----------
    chunk_batches:
        Batches gathered per kernel call (about :data:`CHUNK_BYTES` of
        windows, at least :data:`MIN_CHUNK_BATCHES`).
    queue_chunks:
        Chunks the prefetch queue holds: ``ceil(prefetch / chunk_batches)``;
        up to ``queue_chunks * chunk_batches`` batches may be ready ahead.  With ``windows.return_series_id`` batches are
    ``(x, y, series_ids)``.
    """

    def __init__(
        self,
        windows: SlidingWindows,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        device: Any = None,
        prefetch: int = 2,
        dtype: Any = None,
        normalize: Any = None,
        placement: str = "auto",
        order: Any = None,
        rank: int | None = None,
        world_size: int | None = None,
        num_threads: int | None = None,
        check_nan: bool = False,
    ) -> None:
        if not isinstance(windows, SlidingWindows):
            raise TypeError(f"windows must be a fastbatch.SlidingWindows, got {_show(windows)} of type "
                            f"{type(windows).__name__}")
        self.windows = windows
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.drop_last = check_bool("drop_last", drop_last)
        step_bytes = windows.stride * windows.n_features * windows.data.dtype.itemsize
        self.order = resolve_order(order, check_bool("shuffle", shuffle), len(windows), step_bytes)
        self.shuffle = self.order.kind != "sequential"
        self.rank, self.world_size = resolve_ranks(rank, world_size)
        self.seed = secrets.randbits(63) if seed is None else check_seed(seed)
        self.prefetch = check_int("prefetch", prefetch, minimum=0)
        self._threads = GatherThreads(num_threads)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {_show(placement)}")
        self.device = resolve_device(device)
        self.dtype, self._gather_dtype = _batch_dtypes(dtype, windows)
        check_nan = check_bool("check_nan", check_nan)
        normalize = check_normalize(normalize, windows.n_features, self._gather_dtype)
        placement = windows._check_loader(normalize=normalize, placement=placement, gather_dtype=self._gather_dtype)
        self.placement = choose_placement(placement, self.device, windows)
        # Every argument is checked above; the passes over the data come last.
        if check_nan:
            _raise_on_nan(windows)
        self._mean, self._std = resolve_normalize(normalize, windows.data)
        self.epoch = 0
        # (batches, windows) of the next epoch already delivered: a loaded state.
        self._resume = (0, 0)
        self._progress: _Progress | None = None
        # This rank's windows per epoch: all of them for one process.
        self._shard = shard_size(len(windows), self.world_size, self.drop_last)
        # How the batches are made: "cpu", "pinned" (host gather, copy to the
        # device) or "resident" (gathered on the device).
        self._path = "resident" if self.placement == "device" else ("pinned" if self.device.type == "cuda" else "cpu")
        self._size_batches(self.batch_size)
        self._store = _StagingStore()
        self._device_windows = None  # the windows on the device, made at the first resident epoch
        self._active: weakref.ref | None = None

    # -- public ---------------------------------------------------------------
    @property
    def normalize_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` per feature used to standardise batches, or ``None``.

        Pass them to the validation loader (``normalize=loader.normalize_stats``)
        so both splits are scaled by the training statistics.
        """
        return None if self._mean is None else (self._mean.copy(), self._std.copy())

    def __len__(self) -> int:
        """Batches per epoch (iterations per epoch) at the current batch size."""
        return self.n_batches

    def set_batch_size(self, batch_size: int) -> None:
        """Change the batch size from the next batch on, mid-epoch included.

        The epoch's order is unchanged and every window still comes exactly
        once: the next batch starts at the first window not yet handed out.
        Batches already prepared ahead are dropped and gathered again at the
        new size.  :meth:`state_dict` records the batch size, so a resumed run
        continues with it; ranks of a distributed run that change it at the
        same step stay in step (their shards have the same size).
        """
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if batch_size == self.batch_size:
            return
        self._size_batches(batch_size)
        it = self._active() if self._active is not None else None
        if it is not None:
            it.restart(lambda start: self._start_producer(it.epoch, start))

    def _size_batches(self, batch_size: int) -> None:
        """Batch size and what follows from it: batches per epoch, chunking, queue depth."""
        self.batch_size = batch_size
        n = self._shard
        self.n_batches = n // batch_size if self.drop_last else -(-n // batch_size)
        self.chunk_batches = _chunk_batches(batch_size * self.windows.window_nbytes, self.n_batches,
                                            self.placement == "device")
        self.queue_chunks = max(1, -(-self.prefetch // self.chunk_batches))

    def _epoch_windows(self, start: int) -> int:
        """Windows of the epoch delivered in all, when batches of the current size start at window ``start``."""
        if not self.drop_last:
            return self._shard
        return start + (self._shard - start) // self.batch_size * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (it selects the shuffled order).

        The next iteration starts at the epoch's first batch, unless a state
        loaded with :meth:`load_state_dict` put it inside this same epoch: a
        training loop that calls ``set_epoch(epoch)`` before each epoch still
        resumes where the checkpoint left off.
        """
        epoch = check_int("epoch", epoch, minimum=0)
        if epoch != self.epoch or self._progress is not None:
            self._resume = (0, 0)
        self.epoch = epoch
        self._progress = None

    @property
    def n_samples(self) -> int:
        """Windows this rank delivers per epoch (all of them for one process unless ``drop_last`` drops a tail)."""
        return min(self._shard, self.n_batches * self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from: ``{"seed", "epoch", "position", "windows", "batch_size", ...}``.

        ``position`` counts the batches of ``epoch`` already handed out (by an
        iteration in progress, or one stopped early) and ``windows`` the
        windows in them; ``batch_size`` is the current one.  The dict is small
        and JSON-serialisable; the same for every rank.
        """
        p = self._progress
        if p is not None and p.windows < self._epoch_windows(p.windows):
            return make_state(self, p.epoch, p.position, p.windows)
        return make_state(self, self.epoch, *self._resume)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next ``iter()`` yields exactly the remaining batches of its epoch.

        The loader must be built with the same windows and batching arguments
        (``seed`` and the batch size are taken from the state); a state from a
        different geometry raises ``ValueError`` naming what differs.  Nothing
        is replayed: the remaining window ids are computed from the position.
        """
        self.seed, self.epoch, position, windows, batch_size = check_state(self, state)
        if batch_size != self.batch_size:
            self._size_batches(batch_size)
        self._resume = (position, windows)
        self._progress = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        previous = self._active() if self._active is not None else None
        if previous is not None:
            previous.close(superseded=True)
        epoch, (position, start) = self.epoch, self._resume
        self.epoch, self._resume = epoch + 1, (0, 0)
        self._progress = _Progress(epoch, position, start)
        it = _EpochIterator(epoch, self._progress, self._start_producer(epoch, start))
        self._active = weakref.ref(it)
        return it

    def _start_producer(self, epoch: int, start: int) -> tuple:
        """A frozen plan, and its producer (in a thread with prefetch) from window ``start`` of ``epoch``."""
        plan = self._plan(start)
        chunks = self._producer(plan, epoch, start)
        if self.prefetch == 0:
            return plan, chunks, True
        device = plan.device
        # set_device in the thread the loader owns, never in the caller's.
        on_start = (lambda: torch.cuda.set_device(device)) if device.type == "cuda" else None
        return plan, Prefetcher(chunks, self.queue_chunks, on_start=on_start), False

    def __repr__(self) -> str:
        return (
            f"WindowLoader(n_batches={self.n_batches}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, device='{self.device}', prefetch={self.prefetch}, "
            f"placement='{self.placement}', order='{self.order.kind}', rank={self.rank}, "
            f"world_size={self.world_size}, epoch={self.epoch})"
        )

    # -- producer side ----------------------------------------------------------
    def _plan(self, start: int = 0) -> Plan:
        """The frozen configuration the producer reads (and nothing else), for batches from window ``start``."""
        return Plan(windows=self.windows, batch_size=self.batch_size, n_samples=self._epoch_windows(start),
                    chunk_windows=min(self.chunk_batches * self.batch_size, max(1, self._shard)),
                    order=self.order, seed=self.seed, rank=self.rank, world_size=self.world_size,
                    drop_last=self.drop_last, mean=self._mean, std=self._std, dtype=self.dtype,
                    gather_dtype=self._gather_dtype, device=self.device, path=self._path)

    def _producer(self, plan: Plan, epoch: int, start: int) -> Iterator[Chunk]:
        """The chunks of ``epoch`` from window position ``start``, made with staging lent for the epoch."""
        resident = self._resident(plan) if plan.path == "resident" else None
        return _produce(plan, epoch, start, self._store, self._threads, resident, self.queue_chunks,
                        lookahead=self.prefetch > 0)

    def _resident(self, plan: Plan):
        # Made once, in the caller's thread, on the loader's device.
        if self._device_windows is None:
            gather_dtype = torch.from_numpy(np.empty(0, plan.gather_dtype)).dtype
            with _device_context(plan.device):
                self._device_windows = self.windows._device_windows(plan.device, gather_dtype, self._mean,
                                                                    self._std)
        return self._device_windows


class _StagingStore:
    """The loader's staging memory, lent to one producer at a time.

    A producer that is still running when the next one starts (a superseded
    iterator whose thread has not stopped yet) keeps what it was lent; the
    new producer gets staging of its own, so no two producers ever write to
    the same memory.  What comes back is kept for the next epoch.
    """

    def __init__(self) -> None:
        self._idle: list = []
        self._lock = threading.Lock()
        # The next epoch's order and first chunk, made by the producer of
        # this one while its last chunk was being consumed: (plan key,
        # epoch, order, chunk).
        self._ahead: tuple | None = None

    def put_ahead(self, key: tuple, epoch: int, order, chunk: Chunk) -> None:
        with self._lock:
            self._ahead = (key, epoch, order, chunk)

    def take_ahead(self, key: tuple, epoch: int, start: int):
        """``(order, first chunk)`` made ahead for this plan's ``epoch`` from its start, else ``None``."""
        with self._lock:
            ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[:2] != (key, epoch) or start != 0:
            return None  # another epoch, a resume or another configuration: dropped
        return ahead[2], ahead[3]

    def lend(self, path: str, device: torch.device, depth: int):
        with self._lock:
            for k, staging in enumerate(self._idle):
                if staging.path == path:
                    return self._idle.pop(k)
        return _Staging(path, device, depth)

    def give_back(self, staging) -> None:
        with self._lock:
            if not any(s.path == staging.path for s in self._idle):
                self._idle.append(staging)


class _Staging:
    """One producer's staging: a host pool, or a pinned ring and its copy stream."""

    def __init__(self, path: str, device: torch.device, depth: int) -> None:
        self.path = path
        cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if cuda else None
        # Chunks in the queue, one being handed out, one being gathered, and
        # slack for a user who holds a batch a little longer.
        self.pool = HostPool(depth + 3) if path == "cpu" else None
        self.ring = None if path == "cpu" else PinnedRing(depth + 2, pin=cuda)


def _produce(plan: Plan, epoch: int, start: int, store: _StagingStore, threads: GatherThreads,
             resident, depth: int, *, lookahead: bool) -> Iterator[Chunk]:
    """The epoch's chunks; with ``lookahead``, the next epoch's first chunk is made before the last is handed over.

    An epoch start costs its order (a stored shuffle is a pass over every
    window id) and a first chunk the consumer must wait for.  The producer
    of the previous epoch has time for both while its last chunk is being
    consumed, so it leaves them in the store for the next iter() to start
    with — when that iter() asks for exactly that epoch of this plan.
    """
    staging = store.lend(plan.path, plan.device, depth)
    try:
        def make(order, first: int) -> Iterator[Chunk]:
            if plan.path == "cpu":
                return cpu_chunks(plan, order, first, staging.pool, threads)
            if plan.path == "pinned":
                return pinned_chunks(plan, order, first, staging.ring, staging.stream, threads)
            return resident_chunks(plan, order, first, resident, staging.ring, staging.stream)

        ahead = store.take_ahead(plan.key(), epoch, start)
        if ahead is None:
            rest = make(plan.epoch_order(epoch), start)
            chunks: Iterator[Chunk] = rest
        else:
            # Only the generator refers to the order, and only the chain to
            # the first chunk: each goes as soon as it is used up.
            rest = make(ahead[0], ahead[1].start + ahead[1].n)
            chunks = itertools.chain([ahead[1]], rest)
            del ahead
        for chunk in chunks:
            if lookahead and chunk.start + chunk.n >= plan.n_samples:
                # The last chunk is made, so this epoch's order (4 bytes a
                # window when stored) goes before the next one is made.
                rest.close()
                _prepare_next(plan, epoch + 1, make, store)
            yield chunk
    finally:
        store.give_back(staging)


def _prepare_next(plan: Plan, epoch: int, make, store: _StagingStore) -> None:
    try:
        order = plan.epoch_order(epoch)
        chunks = make(order, 0)
        first = next(chunks, None)
        chunks.close()
    except Exception:  # noqa: BLE001 - the next epoch makes it again, and raises there
        return
    if first is not None:
        store.put_ahead(plan.key(), epoch, order, first)


def _close_chunks(chunks) -> None:
    """Stop a producer (a generator, or the Prefetcher running one)."""
    close = getattr(chunks, "close", None)
    if close is not None:
        try:
            close()
        except ValueError:
            # A generator running in another thread (prefetch=0, iterated
            # from two threads): it ends itself when it sees _closed.
            pass


def _device_context(device: torch.device):
    """``torch.cuda.device(device)`` for a CUDA device (restores the caller's device on exit), else nothing."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return _NoContext()


class _NoContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


class _EpochIterator:
    """The consumer side of one epoch: cuts the producer's chunks into batches.

    Every batch is a new tuple of new tensor objects (views of the chunk, which
    owns its memory).  A lock makes each ``next()`` hand out a distinct batch
    when several threads share the iterator.  An exception out of ``next()``
    (from the producer, or a ``KeyboardInterrupt``) ends the iterator: later
    calls raise ``RuntimeError``, and the loader's ``state_dict()`` counts only
    the batches delivered.
    """

    def __init__(self, epoch: int, progress: _Progress, producer: tuple) -> None:
        self.epoch = epoch
        self._progress = progress
        self._batches: Iterator = iter(())
        self._closed = False
        self._superseded = False
        self._failed: BaseException | None = None
        self._lock = threading.Lock()
        self._use(producer)

    def _use(self, producer: tuple) -> None:
        plan, self._chunks, self._in_caller = producer
        self._batch_size = plan.batch_size
        self._batch_type = plan.windows._batch_type
        self._cuda = plan.device if plan.device.type == "cuda" else None

    def restart(self, make_producer) -> None:
        """Drop what was prepared and go on from the next window not handed out (``set_batch_size``)."""
        with self._lock:
            if self._closed:
                return
            self._batches = iter(())
            _close_chunks(self._chunks)
            windows = self._progress.windows
            self._progress.at_chunk(windows, windows, 1)
            self._use(make_producer(windows))

    @property
    def position(self) -> int:
        """Batches of this epoch handed out so far (counting those before a resume)."""
        return self._progress.position

    def __iter__(self) -> "_EpochIterator":
        return self

    def __next__(self):
        with self._lock:
            if self._failed is not None:
                raise RuntimeError(
                    f"this iterator stopped at batch {self._progress.position} of epoch {self.epoch} when "
                    f"{type(self._failed).__name__} was raised in it; loader.state_dict() holds that position: "
                    "load it (loader.load_state_dict) and call iter(loader) to continue exactly there"
                ) from self._failed
            try:
                batch = next(self._batches)
            except StopIteration:
                try:
                    batch = self._next_chunk()
                except StopIteration:
                    raise
                except BaseException as error:
                    if not self._superseded:
                        self._failed = error
                    self.close(superseded=self._superseded)
                    raise
            self._progress.position += 1
            return batch

    def _next_chunk(self):
        if self._closed:
            self._raise_closed()
        try:
            if self._in_caller:
                with _device_context(self._cuda or torch.device("cpu")):
                    chunk = next(self._chunks)
            else:
                chunk = next(self._chunks)
        except StopIteration:
            if self._superseded:
                self._raise_closed()
            self.close()
            raise
        if self._closed:
            self._raise_closed()
        fields = chunk.fields
        if chunk.ready is not None:
            stream = torch.cuda.current_stream(self._cuda)
            stream.wait_event(chunk.ready)
            for field in fields:
                # Allocated on the copy stream, used on the consumer's: keep the
                # allocator from reusing the memory before that use is done.
                field.record_stream(stream)
        self._batches = batches(chunk, self._batch_size, self._batch_type)
        self._progress.at_chunk(chunk.start, chunk.start + chunk.n, self._batch_size)
        return next(self._batches)

    def _raise_closed(self):
        if self._superseded:
            raise RuntimeError(
                "this iterator was stopped by a newer iter() of the same WindowLoader: "
                "a loader runs one epoch at a time"
            )
        raise StopIteration

    def close(self, superseded: bool = False) -> None:
        """Stop producing; idempotent."""
        if self._closed:
            return
        self._superseded = superseded
        self._closed = True
        self._batches = iter(())
        chunks, self._chunks = self._chunks, iter(())
        _close_chunks(chunks)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


def _batch_dtypes(dtype: Any, windows: SlidingWindows) -> tuple[torch.dtype, np.dtype]:
    """(dtype handed to the user, dtype the gather kernel writes)."""
    if dtype is torch.bfloat16:
        # numpy has no bfloat16: gather float32, cast after the copy.
        if windows.data.dtype == np.float16:
            # The kernel copies float16 as its bits; a cast to float32 would give garbage.
            raise TypeError("dtype=torch.bfloat16 with data of dtype float16: float16 is gathered only as float16")
        return torch.bfloat16, np.dtype(np.float32)
    gather = windows.dtype if dtype is None else _resolve_dtype("dtype", dtype, windows.data.dtype)
    return torch.from_numpy(np.empty(0, gather)).dtype, gather


def _raise_on_nan(windows: SlidingWindows) -> None:
    """``check_nan=True``: a ValueError naming the first window with a NaN and where it starts."""
    i = windows.find_nan()
    if i is None:
        return
    series, step = windows.locate(i)
    where = f"step {step} of series {series}" if windows.many_series else f"step {step} of the data"
    raise ValueError(
        f"check_nan=True: window {i} of {len(windows)} (its input starts at {where}) holds a NaN in its input or "
        "target; fill or cut the NaNs, or pass check_nan=False to hand them out unchanged"
    )
