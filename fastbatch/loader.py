"""WindowLoader: batches of windows as torch tensors, on the CPU or a CUDA device.

One batch travels: epoch order -> gather kernel into a staging buffer ->
(CUDA) asynchronous copy on a side stream -> the user's training step.
Windows are gathered one *chunk* of batches per kernel call (about
:data:`CHUNK_BYTES`), so small batches pay no kernel call and almost no Python
each; a background thread keeps ``prefetch`` batches ready.  The protocol is
NOTE [ Staging, streams and shutdown ] in docs/design.md.
"""

from __future__ import annotations

import secrets
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from fastbatch._checks import _show, check_bool, check_int, check_seed
from fastbatch.device import PLACEMENTS, DeviceWindows, choose_placement, resolve_device
from fastbatch.distributed import resolve_ranks
from fastbatch.normalize import check_normalize, resolve_normalize
from fastbatch.order import EpochOrder, resolve_order, shard_size
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


@dataclass
class _Chunk:
    """Batches gathered together; ``ready`` is the CUDA event their copy recorded."""

    xs: tuple
    ys: tuple
    ready: Any = None
    bases: tuple = ()
    series: tuple = ()


@dataclass
class _Progress:
    """Where the latest epoch iterator is; kept by the loader so state_dict outlives the iterator."""

    epoch: int
    position: int


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
        ``None`` (default), ``True`` (per-feature mean and std of the windows'
        data, computed once here: build the windows over the training range) or
        ``(mean, std)``.  Applied to inputs and targets in the gather pass.
    placement:
        With a CUDA device: ``"host"`` keeps the series in host memory and
        copies each batch; ``"device"`` copies the series to the GPU once and
        gathers there; ``"auto"`` (default) picks ``"device"`` when the series
        takes at most ``fastbatch.device.DEVICE_RESIDENT_FRACTION`` of the free
        GPU memory.  Many series (a list, or ``lengths=``) are gathered on the
        host: ``"auto"`` picks ``"host"`` and ``"device"`` raises.
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
        Threads of the gather kernel.  ``None`` (default): the loader times
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
    A new ``iter()`` stops the previous iterator of the same loader.
    :meth:`state_dict` / :meth:`load_state_dict` save and resume the position
    within an epoch.  With ``windows.return_series_id`` batches are
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
        if windows.many_series:
            if placement == "device":
                raise ValueError("placement='device' does not support many series yet; use placement='host' "
                                 "(placement='auto' picks it)")
            placement = "host"
        self.placement = choose_placement(placement, self.device, windows)
        # Every argument is checked above; the passes over the data come last.
        if check_nan:
            _raise_on_nan(windows)
        self._mean, self._std = resolve_normalize(normalize, windows.data, self._gather_dtype)
        self.epoch = 0
        self._resume_position = 0
        self._progress: _Progress | None = None
        # This rank's windows per epoch: all of them for one process.
        n = self._shard = shard_size(len(windows), self.world_size, self.drop_last)
        self.n_batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        self._chunk_batches = _chunk_batches(
            self.batch_size * windows.window_nbytes, self.n_batches, self.placement == "device"
        )
        self._chunk_windows = min(self._chunk_batches * self.batch_size, max(1, n))
        self._depth = max(1, -(-self.prefetch // self._chunk_batches))
        self._staging: HostPool | PinnedRing | None = None
        self._device_windows: DeviceWindows | None = None
        self._copy_stream = None
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
        """Batches per epoch (iterations per epoch)."""
        return self.n_batches

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (it selects the shuffled order).

        The next iteration starts at the epoch's first batch, unless a state
        loaded with :meth:`load_state_dict` put it inside this same epoch: a
        training loop that calls ``set_epoch(epoch)`` before each epoch still
        resumes where the checkpoint left off.
        """
        epoch = check_int("epoch", epoch, minimum=0)
        if epoch != self.epoch or self._progress is not None:
            self._resume_position = 0
        self.epoch = epoch
        self._progress = None

    @property
    def n_samples(self) -> int:
        """Windows this rank delivers per epoch (all of them for one process unless ``drop_last`` drops a tail)."""
        return min(self._shard, self.n_batches * self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from: ``{"seed", "epoch", "position", "fingerprint", "format"}``.

        ``position`` counts the batches of ``epoch`` already handed out (by an
        iteration in progress, or one stopped early).  The dict is small and
        JSON-serialisable; the same for every rank.
        """
        p = self._progress
        if p is not None and p.position < self.n_batches:
            return make_state(self, p.epoch, p.position)
        return make_state(self, self.epoch, self._resume_position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next ``iter()`` yields exactly the remaining batches of its epoch.

        The loader must be built with the same windows and batching arguments
        (``seed`` is taken from the state); a state from a different geometry
        raises ``ValueError`` naming what differs.  Nothing is replayed: the
        remaining window ids are computed from the position.
        """
        self.seed, self.epoch, self._resume_position = check_state(self, state)
        self._progress = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        previous = self._active() if self._active is not None else None
        if previous is not None:
            previous.close(superseded=True)
        epoch, start = self.epoch, self._resume_position
        self.epoch, self._resume_position = epoch + 1, 0
        self._progress = _Progress(epoch, start)
        it = _EpochIterator(self, epoch, self._progress)
        self._active = weakref.ref(it)
        return it

    def __repr__(self) -> str:
        return (
            f"WindowLoader(n_batches={self.n_batches}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, device='{self.device}', prefetch={self.prefetch}, "
            f"placement='{self.placement}', order='{self.order.kind}', rank={self.rank}, "
            f"world_size={self.world_size}, epoch={self.epoch})"
        )

    # -- producer side ----------------------------------------------------------
    def _spans(self, epoch: int, position: int = 0) -> Iterator[np.ndarray]:
        """Window ids of each chunk of the epoch (this rank's share), from batch ``position`` on."""
        spec = self.order
        order = EpochOrder(len(self.windows), shuffle=self.shuffle, seed=self.seed, epoch=epoch, kind=spec.kind,
                           block=(spec.block_windows, spec.pool_blocks), rank=self.rank,
                           world_size=self.world_size, drop_last=self.drop_last)
        total = self.n_samples
        for start in range(position * self.batch_size, total, self._chunk_windows):
            yield order.ids(start, min(start + self._chunk_windows, total))

    def _host_chunks(self, epoch: int, position: int = 0) -> Iterator[_Chunk]:
        w = self.windows
        cuda = self.device.type == "cuda"
        staging = self._host_staging()
        for ids in self._spans(epoch, position):
            n = ids.shape[0]
            buf = staging.take(n)
            # A small array per chunk, handed out as views: 8 bytes a window.
            series = np.empty(n, dtype=np.int64) if w.return_series_id else None
            w.check_source()
            with self._threads.run(n * w.window_nbytes):
                w.gather(ids, buf.x[:n], buf.y[:n], mean=self._mean, std=self._std, series_out=series, check=False)
            if cuda:
                yield self._copy_to_device(buf, n, series)
            else:
                xs, ys = buf.batch_views(n, self.batch_size, self._as_batches)
                s = () if series is None else torch.from_numpy(series).split(self.batch_size)
                chunk = _Chunk(xs, ys, series=s)
                # The buffer stays leased while this chunk lives: queued, or
                # being handed out.  Cached views that wait in the queue hold
                # no extra reference a count could see.
                buf.lease = weakref.ref(chunk)
                del buf, xs, ys
                yield chunk
                del chunk

    def _as_batches(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathered arrays as the chunk's batch tensors (views unless a bfloat16 cast copies)."""
        univariate = self.windows.univariate
        return _as_batch(torch.from_numpy(x), univariate, self.dtype), _as_batch(torch.from_numpy(y), univariate, self.dtype)

    def _copy_to_device(self, buf, n: int, series: np.ndarray | None = None) -> _Chunk:
        # The copy runs on the loader's side stream; the consumer's stream waits
        # on `ready` before the batch is handed out, and the slot is rewritten
        # only after `ready` (NOTE [ Staging, streams and shutdown ]).
        w = self.windows
        with torch.cuda.stream(self._copy_stream):
            x = buf.pinned_x[:n].to(self.device, non_blocking=True)
            y = buf.pinned_y[:n].to(self.device, non_blocking=True)
            x = _as_batch(x, w.univariate, self.dtype)
            y = _as_batch(y, w.univariate, self.dtype)
            # Pageable and used once, so a plain (host-synchronous) copy is safe.
            s = None if series is None else torch.from_numpy(series).to(self.device)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        buf.event = ready
        bases = (x, y) if s is None else (x, y, s)
        return _Chunk(x.split(self.batch_size), y.split(self.batch_size), ready, bases,
                      () if s is None else s.split(self.batch_size))

    def _device_chunks(self, epoch: int, position: int = 0) -> Iterator[_Chunk]:
        dw = self._device_resident()
        # The epoch's ids travel to the GPU once; each chunk is a slice of them.
        spans = list(self._spans(epoch, position))
        epoch_ids = dw.ids_tensor(np.concatenate(spans) if spans else np.empty(0, np.int64))
        for start in range(0, epoch_ids.shape[0], self._chunk_windows):
            x, y = dw.gather(epoch_ids[start : start + self._chunk_windows])
            x, y = x.to(self.dtype), y.to(self.dtype)
            yield _Chunk(x.split(self.batch_size), y.split(self.batch_size))

    def _host_staging(self):
        if self._staging is None:
            w = self.windows
            x_tail, y_tail = (w.window, w.n_features), (w.horizon, w.n_targets)
            if self.device.type == "cuda":
                self._copy_stream = torch.cuda.Stream(self.device)
                self._staging = PinnedRing(x_tail, y_tail, self._gather_dtype, self._chunk_windows, self._depth + 2)
            else:
                self._staging = HostPool(x_tail, y_tail, self._gather_dtype, self._depth + 3)
        return self._staging

    def _device_resident(self) -> DeviceWindows:
        if self._device_windows is None:
            gather_dtype = torch.from_numpy(np.empty(0, self._gather_dtype)).dtype
            self._device_windows = DeviceWindows(self.windows, self.device, gather_dtype, self._mean, self._std)
        return self._device_windows

    def _on_producer_start(self) -> None:
        # The producer thread issues CUDA work for this loader's device only.
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)


class _EpochIterator:
    """The consumer side of one epoch: hands out the batches of each chunk in turn."""

    def __init__(self, loader: WindowLoader, epoch: int, progress: _Progress | None = None) -> None:
        self.epoch = epoch
        self._progress = _Progress(epoch, 0) if progress is None else progress
        start = self._progress.position
        self._batches: Iterator = iter(())
        self._chunk: _Chunk | None = None
        self._closed = False
        self._superseded = False
        self._cuda = loader.device if loader.device.type == "cuda" else None
        if loader.placement == "device":
            self._chunks: Any = loader._device_chunks(epoch, start)
        elif loader.prefetch == 0:
            if self._cuda is not None:
                loader._on_producer_start()
            self._chunks = loader._host_chunks(epoch, start)
        else:
            self._chunks = Prefetcher(loader._host_chunks(epoch, start), loader._depth,
                                      on_start=loader._on_producer_start)

    @property
    def position(self) -> int:
        """Batches of this epoch handed out so far (counting those before a resume)."""
        return self._progress.position

    def __iter__(self) -> "_EpochIterator":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            batch = next(self._batches)
        except StopIteration:
            batch = self._next_chunk()
        self._progress.position += 1
        return batch

    def _next_chunk(self):
        if self._closed:
            if self._superseded:
                raise RuntimeError(
                    "this iterator was stopped by a newer iter() of the same WindowLoader: "
                    "a loader runs one epoch at a time"
                )
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.close()
            raise
        if chunk.ready is not None:
            stream = torch.cuda.current_stream(self._cuda)
            stream.wait_event(chunk.ready)
            for base in chunk.bases:
                # Allocated on the copy stream, used on the consumer's: keep the
                # allocator from reusing the memory before that use is done.
                base.record_stream(stream)
        self._batches = zip(chunk.xs, chunk.ys, chunk.series) if chunk.series else zip(chunk.xs, chunk.ys)
        # Holding the chunk keeps its staging buffer leased until every batch
        # of it has been handed out (NOTE [ Staging, streams and shutdown ]).
        self._chunk = chunk
        return next(self._batches)

    def close(self, superseded: bool = False) -> None:
        """Stop producing; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._superseded = superseded
        self._batches = iter(())
        self._chunk = None
        chunks, self._chunks = self._chunks, iter(())
        close = getattr(chunks, "close", None)
        if close is not None:
            close()

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


def _as_batch(t: torch.Tensor, univariate: bool, dtype: torch.dtype) -> torch.Tensor:
    """``(n, T, 1)`` -> ``(n, T)`` for 1-D series, then the final dtype (a no-op unless bfloat16)."""
    if univariate:
        t = t.reshape(t.shape[0], t.shape[1])
    return t if t.dtype == dtype else t.to(dtype)


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
