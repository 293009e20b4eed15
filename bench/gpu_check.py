"""The GPU check: one script, a short table, under 5 minutes on one H100.

``python -m bench.gpu_check`` prints:

1. device batches equal to the CPU reference, bit for bit, on both the host
   (pinned ring + side stream) and the device-resident path, with and
   without prefetch, float32 + standardisation and bfloat16;
2. loader host-to-device bandwidth against a plain pinned
   ``tensor.to(device, non_blocking=True)`` of the same bytes (goal >= 0.9);
3. the data-stall fraction of a training loop: (loop time with the loader -
   loop time on one pre-staged batch) / loop time with the loader (goal < 5 %);
4. device-resident gather bandwidth against a device-to-device copy of the
   same bytes.

Every loader rate is taken in the producer's steady state: the batches a
loader may have ready when a timer starts are drawn and discarded first, and
at least ten times as many are timed (:func:`timed_batches`).

Exits 2 without a CUDA device.  Record its output, with the card's name, in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from typing import Callable, Iterator

import numpy as np
import torch

import fastbatch as fb


# docs/loader.md: a chunk holds at least four batches and at most 32 MiB (or
# one batch, if a batch is larger).  Bounds from the documentation, not the
# loader's private attributes, so this check keeps meaning what it says.
CHUNK_MIN_BATCHES = 4
CHUNK_MAX_BYTES = 32 << 20
# Timed batches per batch that can be ready when the drain starts: a drain
# that left some ready could not flatter a rate by more than a tenth.
TIMED_PER_PREFETCHABLE = 10


def _sync() -> None:
    torch.cuda.synchronize()


def prefetchable_batches(prefetch: int, batch_bytes: int) -> int:
    """The most batches a loader can have ready ahead of its consumer.

    Its queue holds ``ceil(prefetch / chunk)`` chunks (at most ``prefetch``
    batches and one chunk more), plus the chunk being handed out and the one
    the producer finished and waits to queue.
    """
    chunk = max(CHUNK_MIN_BATCHES, CHUNK_MAX_BYTES // max(1, batch_bytes))
    return prefetch + 3 * chunk


def timed_batches(batches: Iterator, n_batches: int, *, prefetchable: int, step: Callable | None = None,
                  sync: Callable[[], None] = _sync, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per batch over ``n_batches`` batches (each through ``step``), in the producer's steady state.

    A loader starts a span with up to ``prefetchable`` batches already made
    while it idled: timed, they make bandwidth read high and hide a stall.
    Twice that many are drawn (and stepped) first and discarded, and at least
    ``TIMED_PER_PREFETCHABLE`` times that many are timed.
    """
    if n_batches < TIMED_PER_PREFETCHABLE * prefetchable:
        raise ValueError(f"n_batches={n_batches}: time at least {TIMED_PER_PREFETCHABLE} x the "
                         f"{prefetchable} batches that can be prefetched")
    def take(n: int) -> None:
        for _ in range(n):
            batch = next(batches, None)
            if batch is None:
                raise ValueError(f"the epoch ended before {2 * prefetchable} + {n_batches} batches: use more data")
            if step is not None:
                step(*batch)

    take(2 * prefetchable)
    sync()
    t0 = clock()
    take(n_batches)
    sync()
    return (clock() - t0) / n_batches


def steady_counts(loader: fb.WindowLoader, n_batches: int) -> tuple[int, int]:
    """``(prefetchable, timed)``: ``loader``'s prefetchable batches, and ``n_batches`` raised to 10x those."""
    batch_bytes = loader.batch_size * loader.windows.window_nbytes
    prefetchable = prefetchable_batches(loader.prefetch, batch_bytes) if loader.prefetch else 0
    return prefetchable, max(n_batches, TIMED_PER_PREFETCHABLE * prefetchable)


def check_equality(rows: list) -> bool:
    rng = np.random.default_rng(0)
    series = rng.normal(size=(200_000, 6))  # float64: exercises the fused cast
    w = fb.SlidingWindows(series, window=48, horizon=6, target_columns=[0, 3])
    ok_all = True
    for dtype, normalize in (("float32", True), (torch.bfloat16, None)):
        kwargs = dict(batch_size=1000, shuffle=True, seed=7, dtype=dtype, normalize=normalize)
        reference = [(x.clone(), y.clone()) for x, y in fb.WindowLoader(w, device="cpu", prefetch=0, **kwargs)]
        for placement in ("host", "device"):
            for prefetch in (0, 2):
                loader = fb.WindowLoader(w, device="cuda", placement=placement, prefetch=prefetch, **kwargs)
                got = [(x, y) for x, y in loader]
                ok = len(got) == len(reference) and all(
                    torch.equal(x.cpu(), rx) and torch.equal(y.cpu(), ry) for (x, y), (rx, ry) in zip(got, reference)
                )
                ok_all &= ok
                rows.append((f"equal bits: {placement}, prefetch={prefetch}, {dtype}, normalize={normalize}",
                             "yes" if ok else "NO", "yes"))
    return ok_all


def loader_rate(loader: fb.WindowLoader, n_batches: int, sync: Callable[[], None] = _sync) -> float:
    """Batches per second of a fresh epoch of ``loader``, in steady state (see :func:`timed_batches`)."""
    prefetchable, n_batches = steady_counts(loader, n_batches)
    it = iter(loader)
    try:
        return 1 / timed_batches(it, n_batches, prefetchable=prefetchable, sync=sync)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def check_bandwidth(rows: list, n_steps: int, batch_size: int, n_batches: int) -> None:
    data = np.random.default_rng(1).random((n_steps, 8), dtype=np.float32)
    w = fb.SlidingWindows(data, window=64)
    batch_bytes = batch_size * w.window_nbytes
    loader = fb.WindowLoader(w, batch_size=batch_size, shuffle=True, seed=0, device="cuda", placement="host", prefetch=4)
    rates = [loader_rate(loader, n_batches) * batch_bytes for _ in range(3)]
    loader_bw = statistics.median(rates)
    pinned = torch.empty(batch_bytes // 4, dtype=torch.float32, pin_memory=True)
    for _ in range(3):
        pinned.to("cuda", non_blocking=True)
    _sync()
    plain = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n_batches):
            pinned.to("cuda", non_blocking=True)
        _sync()
        plain.append(n_batches * batch_bytes / (time.perf_counter() - t0))
    plain_bw = statistics.median(plain)
    src = np.empty(batch_bytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t0 = time.perf_counter()
    for _ in range(10):
        np.copyto(dst, src)
    memcpy = 10 * batch_bytes / (time.perf_counter() - t0)
    rows.append(("host memcpy of one batch (GB/s, bytes copied)", f"{memcpy / 1e9:.1f}", ""))
    rows.append(("plain pinned .to(cuda, non_blocking) (GB/s)", f"{plain_bw / 1e9:.1f}", ""))
    rows.append(("loader, host placement, gather + copy (GB/s)", f"{loader_bw / 1e9:.1f}", ""))
    rows.append(("loader / plain pinned copy", f"{loader_bw / plain_bw:.2f}", ">= 0.9"))


def check_stall(rows: list, batch_size: int, n_steps_train: int) -> None:
    data = np.random.default_rng(2).random((2_000_000, 8), dtype=np.float32)
    w = fb.SlidingWindows(data, window=64, horizon=8)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64 * 8, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 2048),
        torch.nn.GELU(), torch.nn.Linear(2048, 8 * 8),
    ).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y.reshape(y.shape[0], -1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for placement in ("host", "device"):
        loader = fb.WindowLoader(w, batch_size=batch_size, shuffle=True, seed=0, device="cuda",
                                 placement=placement, prefetch=4)
        prefetchable, n_steps = steady_counts(loader, n_steps_train)
        it = iter(loader)
        x0, y0 = next(it)
        for _ in range(5):
            step(x0, y0)
        ideal = timed_batches(itertools.repeat((x0, y0)), n_steps, prefetchable=0, step=step)
        # The loader filled its queue while the ideal loop ran: drained first.
        real = timed_batches(it, n_steps, prefetchable=prefetchable, step=step)
        stall = max(0.0, (real - ideal) / real)
        rows.append((f"step time, pre-staged batch / loader ({placement}) (ms)",
                     f"{ideal * 1e3:.2f} / {real * 1e3:.2f}", ""))
        rows.append((f"data-stall fraction ({placement} placement)", f"{stall * 100:.1f} %", "< 5 %"))


def check_device_gather(rows: list, batch_size: int, n_batches: int) -> None:
    data = np.random.default_rng(3).random((8_000_000, 8), dtype=np.float32)
    w = fb.SlidingWindows(data, window=64)
    loader = fb.WindowLoader(w, batch_size=batch_size, shuffle=True, seed=0, device="cuda", placement="device")
    batch_bytes = batch_size * w.window_nbytes
    gather_bw = statistics.median(loader_rate(loader, n_batches) * 2 * batch_bytes for _ in range(3))
    src = torch.empty(batch_bytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        dst.copy_(src)
    _sync()
    d2d = 2 * n_batches * batch_bytes / (time.perf_counter() - t0)
    rows.append(("device-to-device copy (GB/s, read + write)", f"{d2d / 1e9:.0f}", ""))
    rows.append(("device-resident loader (GB/s, read + write)", f"{gather_bw / 1e9:.0f}", ""))
    rows.append(("device-resident loader / device copy", f"{gather_bw / d2d:.2f}", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a minute)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.gpu_check: no CUDA device visible to torch; nothing to check", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; fastbatch {fb.__version__}")
    scale = 4 if args.quick else 1
    rows: list = []
    started = time.perf_counter()
    equal = check_equality(rows)
    check_bandwidth(rows, 16_000_000 // scale, 4096, 200 // scale)
    check_stall(rows, 4096, 200 // scale)
    check_device_gather(rows, 4096, 400 // scale)
    width = max(len(r[0]) for r in rows)
    print(f"{'check'.ljust(width)}  {'value':>14}  goal")
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value:>14}  {goal}")
    print(f"elapsed: {time.perf_counter() - started:.0f} s")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
