"""The torch DataLoader adapter against the per-window DataLoader and against WindowLoader.

    python -m bench.adapter [--batch-size 256] [--window 64] [--features 8] [--seconds 3]

Three ways to draw shuffled batches of the same windows on the CPU:

- ``per-window``: a map-style Dataset returning one window (``windows[i]``)
  and torch's ``default_collate``: the usual DataLoader path;
- ``adapter``: ``DataLoader(windows, batch_size=B, shuffle=True,
  collate_fn=fastbatch.collate)``: one ``__getitems__`` call, one Numba
  gather, per batch;
- ``WindowLoader``: fastbatch's own loader (chunked gathers, a prefetch thread).

Each path runs in a fresh child process (so that one path's thread pools,
torch's OpenMP threads spinning after ``default_collate``'s stacking among
them, do not slow the next), for about ``--seconds`` after one warm-up
batch; the paths take turns ``--repeats`` times.  The report gives windows
per second, the median of the repeats, and each path's ratio to the
per-window path measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import fastbatch as fb


class PerWindow(Dataset):
    """The classic Dataset: one window a call (numpy views), collated by torch."""

    def __init__(self, windows: fb.SlidingWindows) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        return self.windows[i]


def rate(make_iterable, seconds: float) -> float:
    """Windows per second over about ``seconds`` of a fresh iterator (after one warm-up batch)."""
    it = iter(make_iterable())
    next(it)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            x = next(it)[0]
        except StopIteration:
            it = iter(make_iterable())
            continue
        count += x.shape[0]
    return count / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba and torch threads in each child (default: their own defaults)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    b = args.batch_size
    if args.child is not None:
        data = np.random.default_rng(0).standard_normal((args.steps, args.features), dtype=np.float32)
        w = fb.SlidingWindows(data, window=args.window, horizon=args.horizon)
        paths = {
            "per-window": lambda: DataLoader(PerWindow(w), batch_size=b, shuffle=True),
            "adapter": lambda: DataLoader(w, batch_size=b, shuffle=True, collate_fn=fb.collate),
            "WindowLoader": lambda: fb.WindowLoader(w, batch_size=b, shuffle=True, seed=0),
        }
        print(rate(paths[args.child], args.seconds))
        return {}
    names = ("per-window", "adapter", "WindowLoader")
    common = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
              ("steps", "features", "window", "horizon", "batch_size", "seconds")]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    if args.threads is not None:
        env.update(NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            done = subprocess.run([sys.executable, "-m", "bench.adapter", *common, f"--child={name}"],
                                  capture_output=True, text=True, env=env, check=True)
            samples[name].append(float(done.stdout.strip().splitlines()[-1]))
    rates = {name: statistics.median(v) for name, v in samples.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": args.threads or "default",
        "command": "python -m bench.adapter " + " ".join(argv if argv is not None else sys.argv[1:]),
        "geometry": {"steps": args.steps, "features": args.features, "window": args.window,
                     "horizon": args.horizon, "batch_size": b},
        "windows_per_s": rates,
        "samples": samples,
        "ratio_to_per_window": {k: v / rates["per-window"] for k, v in rates.items()},
    }
    for name, r in rates.items():
        print(f"{name:>13}: {r:12,.0f} windows/s  ({r / rates['per-window']:.1f}x per-window)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
