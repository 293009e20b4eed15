"""Does prefetching hide the gather behind the training step?

``python -m bench.overlap`` times, in one run:

- ``g``: the producer stage alone — iterating the loader with ``prefetch=0``
  and nothing else to do, per batch (gather, views, order);
- ``s = g``: a stand-in training step that releases the CPU for as long
  (``time.sleep``, as a GPU step does while its kernels run);
- the loop ``for x, y in loader: step()`` with ``prefetch=0`` (expected
  ``g + s``) and with ``prefetch=2`` (goal: within 1.15x of ``max(g, s)``).

It does so for a gather on one thread (on a 2-core machine that leaves a core
to the thread that runs the training loop) and with the default thread
choice.  Medians of several repeats; the ratio is what to quote.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastbatch as fb

GOAL = 1.15


def _per_batch_seconds(loader: fb.WindowLoader, step_s: float, n_batches: int) -> float:
    it = iter(loader)
    # Not steady state: the epoch's order, and the first chunks, which may
    # still grow the staging pool (fresh pages of a new buffer cost up to a
    # few hundred ms once per loader).
    for _ in range(loader.prefetch + 4):
        next(it)
    t0 = time.perf_counter()
    done = 0
    for _x, _y in it:
        if step_s:
            time.sleep(step_s)
        done += 1
        if done == n_batches:
            break
    return (time.perf_counter() - t0) / done


def measure(w: fb.SlidingWindows, batch_size: int, n_batches: int, repeats: int, num_threads: int | None) -> dict:
    def loader(prefetch: int) -> fb.WindowLoader:
        return fb.WindowLoader(w, batch_size=batch_size, shuffle=True, seed=0, prefetch=prefetch,
                               num_threads=num_threads)

    sync = loader(0)
    _per_batch_seconds(sync, 0.0, 5)  # compile / warm
    g = statistics.median(_per_batch_seconds(sync, 0.0, n_batches) for _ in range(repeats))
    step = g
    loaders = {p: loader(p) for p in (0, 2)}
    rows = {p: statistics.median(_per_batch_seconds(loaders[p], step, n_batches) for _ in range(repeats))
            for p in (0, 2)}
    slower = max(g, step)
    return {
        "num_threads": num_threads,
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
    parser.add_argument("--batch-sizes", default="8192,32768",
                        help="comma-separated; a larger batch means longer stages, so fixed per-batch costs weigh less")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    data = np.random.default_rng(0).random((args.series_length, args.features), dtype=np.float32)
    w = fb.SlidingWindows(data, window=args.window)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        _report(w, batch_size, args)
    return 0


def _report(w: fb.SlidingWindows, batch_size: int, args: argparse.Namespace) -> None:
    print(f"batch: {batch_size} windows x {w.window} steps x {w.n_features} features "
          f"({batch_size * w.window_nbytes / 2**20:.1f} MiB), float32, shuffled")
    for num_threads in (1, None):
        r = measure(w, batch_size, args.batches, args.repeats, num_threads)
        label = "one gather thread" if num_threads == 1 else "default thread choice"
        print(f"{label}:")
        print(f"  producer stage alone (g):        {r['gather_s'] * 1e3:8.2f} ms per batch")
        print(f"  training step stand-in (s = g):  {r['step_s'] * 1e3:8.2f} ms (sleep: releases the CPU)")
        print(f"  per batch, prefetch=0:           {r['per_batch_prefetch0_s'] * 1e3:8.2f} ms  "
              f"= {r['ratio_prefetch0']:.2f} x max(g, s)")
        print(f"  per batch, prefetch=2:           {r['per_batch_prefetch2_s'] * 1e3:8.2f} ms  "
              f"= {r['ratio_prefetch2']:.2f} x max(g, s)   goal <= {GOAL}: {'met' if r['met'] else 'NOT met'}")


if __name__ == "__main__":
    raise SystemExit(main())
