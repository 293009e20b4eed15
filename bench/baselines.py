"""The usual ways of making shuffled window batches, to measure fastbatch against.

Each baseline delivers what :class:`fastbatch.WindowLoader` delivers: per
batch, contiguous float tensors ``x`` of shape ``(B, T[, F])`` and ``y`` of
shape ``(B, H[, F])``, a fresh shuffled order every epoch.

- :class:`WindowDataset`: the textbook map-style ``Dataset``, one window per
  ``__getitem__``, batched by ``torch.utils.data.DataLoader`` and
  ``default_collate``.
- :class:`BatchedWindowDataset`: the same ``Dataset`` plus ``__getitems__``,
  which the ``DataLoader`` (torch >= 2.1) calls with a whole batch of ids; the
  batch is gathered by numpy fancy indexing, and :func:`passthrough_collate`
  leaves it alone.
- :func:`numpy_batches`: no ``DataLoader``: ``sliding_window_view`` and fancy
  indexing per batch, then ``torch.from_numpy``.
- :func:`unfold_batches`: torch only: ``Tensor.unfold`` and ``index_select``.

:func:`time_batches` is the timing loop every figure of ``bench.speed`` goes
through, fastbatch's included.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader, Dataset

Batch = tuple[torch.Tensor, torch.Tensor]


def _float_array(data: Any) -> np.ndarray:
    array = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if array.ndim not in (1, 2):
        raise ValueError(f"data must have shape (N,) or (N, F), got shape {array.shape}")
    return array if array.dtype.kind == "f" else array.astype(np.float32)


def _n_windows(array: np.ndarray, window: int, horizon: int) -> int:
    n = array.shape[0] - window - horizon + 1
    if window < 1 or horizon < 1 or n < 1:
        raise ValueError(
            f"need window >= 1, horizon >= 1 and at least window + horizon steps, got window={window}, "
            f"horizon={horizon} for {array.shape[0]} steps"
        )
    return n


def window_views(array: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy views ``(xv, yv)`` with ``xv[i]`` the input and ``yv[i]`` the target of window ``i``.

    ``xv`` is ``(n, T)`` or ``(n, T, F)``; fancy indexing ``xv[ids]`` copies
    into a contiguous batch.
    """
    n = _n_windows(array, window, horizon)
    if array.ndim == 1:
        xv = sliding_window_view(array, window)
        yv = sliding_window_view(array[window:], horizon)
    else:
        # A window shape over both axes keeps the time axis before the
        # features, so a gathered batch is (B, T, F) and contiguous.
        xv = sliding_window_view(array, (window, array.shape[1]))[:, 0]
        yv = sliding_window_view(array[window:], (horizon, array.shape[1]))[:, 0]
    return xv[:n], yv[:n]


class WindowDataset(Dataset):
    """Map-style dataset of sliding windows, one window per ``__getitem__``.

    ``__getitem__(i)`` returns ``(x, y)``: float tensors of shape ``(T[, F])``
    and ``(H[, F])``, views of the data (``default_collate`` copies them into
    the batch).  Windows have stride 1: window ``i`` is ``data[i : i+T]`` and
    its target ``data[i+T : i+T+H]``.
    """

    def __init__(self, data: np.ndarray, window: int, horizon: int) -> None:
        self.data = _float_array(data)
        self.window = int(window)
        self.horizon = int(horizon)
        self.n = _n_windows(self.data, self.window, self.horizon)
        self._tensor: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.n

    def _as_tensor(self) -> torch.Tensor:
        # Made on first use, so pickling the dataset for workers sends no tensor.
        if self._tensor is None:
            self._tensor = torch.from_numpy(self.data)
        return self._tensor

    def __getitem__(self, i: int) -> Batch:
        if not -self.n <= i < self.n:
            raise IndexError(f"window index {i} is out of range for {self.n} windows")
        i %= self.n
        t = self._as_tensor()
        e = i + self.window
        return t[i:e], t[e : e + self.horizon]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tensor"] = None
        return state


class BatchedWindowDataset(WindowDataset):
    """:class:`WindowDataset` plus ``__getitems__(ids) -> (x, y)``, a whole batch per call.

    The batch is gathered by numpy fancy indexing over ``sliding_window_view``
    views.  Use it with ``collate_fn=passthrough_collate``.
    """

    def __init__(self, data: np.ndarray, window: int, horizon: int) -> None:
        super().__init__(data, window, horizon)
        self._views: tuple[np.ndarray, np.ndarray] | None = None

    def __getitems__(self, ids: Sequence[int]) -> Batch:
        if self._views is None:
            self._views = window_views(self.data, self.window, self.horizon)
        xv, yv = self._views
        # Fancy indexing, not np.take: np.take first makes the strided view
        # contiguous, i.e. copies every window of the series.
        idx = np.asarray(ids, dtype=np.int64)
        return torch.from_numpy(xv[idx]), torch.from_numpy(yv[idx])

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_views"] = None
        return state


def passthrough_collate(batch: Any) -> Any:
    """Collate for datasets whose ``__getitems__`` already returns the batch: return it unchanged."""
    return batch


def numpy_batches(
    data: np.ndarray, window: int, horizon: int, batch_size: int, *, seed: int = 0
) -> Iterator[Batch]:
    """One shuffled epoch: ``sliding_window_view`` + fancy indexing per batch + ``torch.from_numpy``."""
    xv, yv = window_views(_float_array(data), window, horizon)
    perm = np.random.default_rng(seed).permutation(xv.shape[0])
    for k in range(0, len(perm), batch_size):
        ids = perm[k : k + batch_size]
        yield torch.from_numpy(xv[ids]), torch.from_numpy(yv[ids])


def unfold_batches(
    data: np.ndarray, window: int, horizon: int, batch_size: int, *, seed: int = 0
) -> Iterator[Batch]:
    """One shuffled epoch: ``Tensor.unfold`` views + ``index_select`` per batch (torch only)."""
    t = torch.from_numpy(_float_array(data))
    n = _n_windows(t.numpy(), window, horizon)
    xv = t.unfold(0, window, 1)[:n]
    yv = t[window:].unfold(0, horizon, 1)[:n]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for k in range(0, n, batch_size):
        ids = perm[k : k + batch_size]
        x, y = xv.index_select(0, ids), yv.index_select(0, ids)
        if t.ndim == 2:
            # unfold puts the window axis last, (B, F, T).  Selecting from the
            # (n, T, F) permuted view instead is 3x slower than this transpose
            # copy (41k vs 141k samples/s, wide setting, 2-core Xeon).
            x, y = x.transpose(1, 2).contiguous(), y.transpose(1, 2).contiguous()
        yield x, y


# -- timing ---------------------------------------------------------------------


@dataclass
class Measurement:
    """Steady-state timings of one way of making batches.

    ``first_batch_s`` is the latency of the first batch of a fresh iterator
    (building the epoch's order, starting workers); ``rates`` are samples/s
    over ``repeats`` consecutive spans of ``n_batches`` batches each.
    """

    first_batch_s: float
    n_batches: int
    rates: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        """The median rate over the spans."""
        return statistics.median(self.rates)


class BatchStream:
    """Batches from ``make_iter()`` for timing, starting a new epoch when one ends.

    ``skip`` batches are drawn untimed before each span: whatever a background
    producer (``DataLoader`` workers, a prefetch thread) finished while the
    stream was idle is consumed first, so a span times only steady state.
    With a ``device`` other than the CPU, each batch's tensors are copied there
    as a training loop would (``.to(device, non_blocking=True)``) and every
    timing waits for the copies to finish.
    """

    def __init__(self, make_iter: Callable[[], Iterable], *, skip: int = 0, device: Any = None) -> None:
        self.make_iter = make_iter
        self.skip = skip
        self.device = None if device is None or torch.device(device).type == "cpu" else torch.device(device)
        self.it: Iterator = iter(())
        self.first_batch_s = float("nan")
        self.n_batches = 0

    def start(self) -> float:
        """Make a fresh iterator and take its first batch; return (and keep) that latency."""
        t0 = time.perf_counter()
        self.it = iter(self.make_iter())
        self._to_device(next(self.it))
        self._sync()
        self.first_batch_s = time.perf_counter() - t0
        return self.first_batch_s

    def next(self) -> Any:
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.make_iter())
            batch = next(self.it)
        return self._to_device(batch)

    def _to_device(self, batch: Any) -> Any:
        if self.device is None:
            return batch
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def calibrate(self, target_s: float, *, probe_s: float = 0.2, max_batches: int = 10**7) -> int:
        """Draw batches for ``probe_s`` and set ``n_batches`` to last about ``target_s`` (at least 3)."""
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < probe_s:
            self.next()
            n += 1
        self._sync()
        rate = n / (time.perf_counter() - t0)
        self.n_batches = int(min(max(3, rate * target_s), max_batches))
        return self.n_batches

    def span(self, n_batches: int | None = None) -> tuple[int, float]:
        """``(samples, seconds)`` of the next ``n_batches`` batches (default: the calibrated number)."""
        for _ in range(self.skip):
            self.next()
        self._sync()
        samples = 0
        t0 = time.perf_counter()
        for _ in range(n_batches or self.n_batches):
            samples += int(self.next()[0].shape[0])
        self._sync()
        return samples, time.perf_counter() - t0

    def close(self) -> None:
        self.it = iter(())


def measure_many(
    streams: dict[str, BatchStream], *, target_s: float = 1.0, repeats: int = 3, n_batches: int | None = None
) -> dict[str, Measurement]:
    """Time several streams with their spans interleaved.

    Each stream is started (first-batch latency) and calibrated, then every
    round times one span of each stream in turn, so a slow spell of a shared
    machine hits all of them alike and the ratios of the medians stay fair.
    """
    for stream in streams.values():
        stream.start()
        if n_batches is None:
            stream.calibrate(target_s)
        else:
            stream.n_batches = n_batches
    out = {k: Measurement(first_batch_s=st.first_batch_s, n_batches=st.n_batches) for k, st in streams.items()}
    for _ in range(repeats):
        for key, stream in streams.items():
            samples, seconds = stream.span()
            out[key].rates.append(samples / seconds)
            out[key].seconds.append(seconds)
    for stream in streams.values():
        stream.close()
    return out


def measure(
    make_iter: Callable[[], Iterable],
    *,
    n_batches: int | None = None,
    target_s: float = 1.0,
    repeats: int = 3,
    skip: int = 0,
) -> Measurement:
    """Time batches from ``make_iter()`` in steady state.

    A fresh iterator is made and one batch taken (warm-up; its latency is
    ``first_batch_s``).  Without ``n_batches``, batches are drawn for a short
    probe to find how many last about ``target_s``.  Then ``repeats``
    consecutive spans of ``n_batches`` are timed.  When an epoch ends inside a
    span the next one starts and its set-up (the new order) is timed too: over
    many epochs a training run pays it.
    """
    return measure_many({"": BatchStream(make_iter, skip=skip)}, target_s=target_s, repeats=repeats,
                        n_batches=n_batches)[""]


def time_batches(make_iter: Callable[[], Iterable], n_batches: int) -> Measurement:
    """One steady-state span of ``n_batches`` batches after one warm-up batch."""
    return measure(make_iter, n_batches=n_batches, repeats=1)


def make_dataloader(
    dataset: Dataset, batch_size: int, workers: int, *, pin_memory: bool = False, collate_fn: Callable | None = None
) -> DataLoader:
    """A shuffled ``DataLoader`` as a training loop over many epochs would make it (persistent workers)."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
        pin_memory=pin_memory, collate_fn=collate_fn, persistent_workers=workers > 0,
    )


def dataloader_stream(loader: DataLoader, device: Any = None) -> BatchStream:
    """A :class:`BatchStream` over ``loader`` that skips what its workers prefetched while idle.

    With a ``device``, each batch is copied there, as a training loop does.
    """
    return BatchStream(lambda: loader, skip=loader.num_workers * (loader.prefetch_factor or 0), device=device)


def dataloader_measurements(
    dataset: Dataset,
    batch_size: int,
    n_batches: int | None,
    workers: Sequence[int] = (0, 2),
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
    *,
    repeats: int = 1,
    target_s: float = 1.0,
    device: Any = None,
) -> dict[int, Measurement]:
    """Measure a shuffled ``DataLoader`` over ``dataset`` for each worker count.

    Workers are persistent, as a training loop over many epochs would keep
    them; ``n_batches=None`` sizes the spans to last about ``target_s``.
    With a ``device``, every batch is copied there and the copy is timed.
    """
    out: dict[int, Measurement] = {}
    for n_workers in workers:
        loader = make_dataloader(dataset, batch_size, n_workers, pin_memory=pin_memory, collate_fn=collate_fn)
        try:
            out[n_workers] = measure_many({"": dataloader_stream(loader, device)}, n_batches=n_batches,
                                          repeats=repeats, target_s=target_s)[""]
        finally:
            stop_workers(loader)
    return out


def stop_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now rather than when the loader is collected."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader._iterator = None


def best_dataloader_rate(
    dataset: Dataset,
    batch_size: int,
    n_batches: int,
    workers: Sequence[int] = (0, 2),
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
    *,
    repeats: int = 1,
    device: Any = None,
) -> tuple[float, int]:
    """``(samples_per_sec, best_workers)``: a shuffled ``DataLoader``'s steady rate at its best worker count.

    Each worker count is timed over ``repeats`` spans of ``n_batches``
    batches; its rate is the median, and the fastest worker count wins.
    With a ``device``, each batch is copied there as part of the rate.
    """
    found = dataloader_measurements(dataset, batch_size, n_batches, workers, pin_memory, collate_fn, repeats=repeats,
                                    device=device)
    best = max(found, key=lambda w: found[w].samples_per_s)
    return found[best].samples_per_s, best
