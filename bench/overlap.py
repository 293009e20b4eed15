"""Does prefetching hide the gather behind the training step?

``python -m bench.overlap`` times, in one run: the gather of one batch
(``g``), a stand-in training step that releases the CPU for ``s = g`` seconds
(``time.sleep``, as a GPU step does while the kernels run), and the loop
``for x, y in loader: step()`` with ``prefetch=0`` and ``prefetch=2``.
Without prefetch a batch costs ``g + s``; with it, the goal is within 1.15x of
``max(g, s)``.  Medians of several repeats; the ratio is what to quote.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastbatch as fb

GOAL = 1.15


def _gather_seconds(w: fb.SlidingWindows, batch_size: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    out_x = np.empty((batch_size, w.window, w.n_features), w.dtype)
    out_y = np.empty((batch_size, w.horizon, w.n_targets), w.dtype)
    times = []
    for _ in range(repeats):
        ids = rng.integers(0, len(w), batch_size)
        t0 = time.perf_counter()
        w.gather(ids, out_x, out_y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _per_batch_seconds(loader: fb.WindowLoader, step_s: float, n_batches: int) -> float:
    it = iter(loader)
    next(it)  # the epoch's order and the first gather are not steady state
    t0 = time.perf_counter()
    done = 0
    for _x, _y in it:
        time.sleep(step_s)
        done += 1
        if done == n_batches:
            break
    return (time.perf_counter() - t0) / done


def measure(n_steps: int, features: int, window: int, batch_size: int, n_batches: int, repeats: int) -> dict:
    data = np.random.default_rng(0).random((n_steps, features), dtype=np.float32)
    w = fb.SlidingWindows(data, window=window)
    _gather_seconds(w, batch_size, 3)  # compile / warm
    g = _gather_seconds(w, batch_size, 20)
    step = g
    rows = {}
    for prefetch in (0, 2):
        loader = fb.WindowLoader(w, batch_size=batch_size, shuffle=True, seed=0, prefetch=prefetch)
        rows[prefetch] = statistics.median(_per_batch_seconds(loader, step, n_batches) for _ in range(repeats))
    slower = max(g, step)
    return {
        "batch_bytes": batch_size * w.window_nbytes,
        "gather_s": g,
        "step_s": step,
        "per_batch_prefetch0_s": rows[0],
        "per_batch_prefetch2_s": rows[2],
        "ratio_prefetch0": rows[0] / slower,
        "ratio_prefetch2": rows[2] / slower,
        "goal": GOAL,
        "met": rows[2] / slower <= GOAL,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__.splitlines()[0])
    parser.add_argument("--series-length", type=int, default=4_000_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    r = measure(args.series_length, args.features, args.window, args.batch_size, args.batches, args.repeats)
    print(f"batch: {args.batch_size} windows x {args.window} steps x {args.features} features "
          f"({r['batch_bytes'] / 2**20:.1f} MiB), float32, shuffled")
    print(f"gather one batch (g):            {r['gather_s'] * 1e3:8.2f} ms")
    print(f"training step stand-in (s = g):  {r['step_s'] * 1e3:8.2f} ms (sleep: releases the CPU)")
    print(f"per batch, prefetch=0:           {r['per_batch_prefetch0_s'] * 1e3:8.2f} ms  "
          f"= {r['ratio_prefetch0']:.2f} x max(g, s)")
    print(f"per batch, prefetch=2:           {r['per_batch_prefetch2_s'] * 1e3:8.2f} ms  "
          f"= {r['ratio_prefetch2']:.2f} x max(g, s)   goal <= {GOAL}: {'met' if r['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
