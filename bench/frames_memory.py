"""A Parquet dataset larger than comfortable: from_parquet's cache and one epoch, in anonymous memory.

    python -m bench.frames_memory --size-gib 2          # issue 11's check (a few minutes; needs ~2x the size on disk)
    python -m bench.frames_memory --size-gib 0.05       # a small run to try it

Issue 11's goal: "A 2 GiB Parquet dataset loads and iterates within 300 MB
of anonymous memory growth."  The parent writes a Parquet dataset of
``--size-gib`` on disk (a folder of files, whole series per file, sorted by
series and time: the layout ``from_parquet``'s conversion reads series by
series), in long format with an int64 series id and time index, a float32
target, 2 observed, 3 known and 1 static float32 covariate.  A child process
then

1. compiles the kernels on a tiny dataset (the compiler's memory is not the data's);
2. runs ``SlidingWindows.from_parquet(folder, cache=True, ...)``: the conversion
   into memory-mapped ``.npy`` files, block of series by block;
3. iterates one shuffled epoch of a ``WindowLoader`` over the mapped cache.

A second child then does the same with the cache in place (``from_parquet``
maps it instead of converting), as every later training run would.

Memory is the process's anonymous resident set (``RssAnon`` of
``/proc/self/status``: heap and numpy/Arrow buffers, not the page cache of the
mapped files), sampled every 2 ms by a thread; the peak growth over the value
after step 1 is compared with the 300 MB goal (300 MB = 286 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.frames_speed import KNOWN, STATIC, UNKNOWN, machine
from bench.outofcore import status_kib

GOAL_BYTES = 300e6
OPTIONS = dict(id="series", time="time_idx", target="y", past=UNKNOWN[1:], future=KNOWN, static=STATIC)


def write_dataset(folder: Path, size_gib: float, steps: int = 10_000, series_per_file: int = 400,
                  seed: int = 0) -> dict:
    """Parquet files in ``folder`` until they hold ``size_gib`` GiB on disk; returns rows, series and bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    target, written, rows, series, k = size_gib * 2**30, 0, 0, 0, 0
    while written < target:
        # The last file is cut to the series still needed, estimated from the bytes per row so far.
        per_row = written / rows if rows else 32.0
        n_series = min(series_per_file, max(1, int(np.ceil((target - written) / per_row / steps))))
        n = n_series * steps
        columns = {"series": np.repeat(np.arange(series, series + n_series, dtype=np.int64), steps),
                   "time_idx": np.tile(np.arange(steps, dtype=np.int64), n_series)}
        for name in UNKNOWN + KNOWN:
            columns[name] = rng.standard_normal(n, dtype=np.float32)
        columns["static1"] = np.repeat(rng.integers(0, 10, n_series).astype(np.float32), steps)
        path = folder / f"part-{k:04d}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=1 << 20)
        written += path.stat().st_size
        rows, series, k = rows + n, series + n_series, k + 1
    return {"rows": rows, "series": series, "files": k, "bytes": written}


class AnonPeak:
    """The largest ``RssAnon`` (KiB) seen by a thread polling every ``interval`` seconds, since ``reset``."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kib("RssAnon"))
            self._stop.wait(self.interval)

    def reset(self) -> int:
        """Starts a new peak at the current value, which it returns."""
        self.peak = now = status_kib("RssAnon")
        return now

    def read(self) -> int:
        self.peak = max(self.peak, status_kib("RssAnon"))
        return self.peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def child(folder: str, cache_dir: str, args: argparse.Namespace) -> dict:
    """``from_parquet`` (converting, or mapping a cache that exists) and one epoch; anonymous memory of each phase."""
    import gc

    import pyarrow as pa

    import fastbatch as fb

    options = dict(OPTIONS, window=args.window, horizon=args.horizon, stride=args.stride)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tiny:
        write_dataset(Path(tiny) / "data", 0.0001, steps=200, series_per_file=3)
        small = fb.SlidingWindows.from_parquet(Path(tiny) / "data", cache=True, cache_dir=Path(tiny) / "cache",
                                               **options)
        for _ in fb.WindowLoader(small, batch_size=64, shuffle=True, seed=0):
            pass
        del small
    gc.collect()
    converts = not any(Path(cache_dir).iterdir())
    sampler = AnonPeak()
    base = sampler.reset()
    t0 = time.perf_counter()
    w = fb.SlidingWindows.from_parquet(folder, cache=True, cache_dir=cache_dir, batch_rows=args.batch_rows, **options)
    load_s = time.perf_counter() - t0
    load_peak = sampler.read() - base
    after_load = sampler.reset() - base
    loader = fb.WindowLoader(w, batch_size=args.batch_size, shuffle=True, seed=0)
    count, t0 = 0, time.perf_counter()
    for b in loader:
        count += b.past.shape[0]
    epoch_s = time.perf_counter() - t0
    epoch_peak = sampler.read() - base
    sampler.stop()
    return {"converts": converts, "windows": len(w), "delivered": count, "order": loader.order.kind,
            "anon_base_mib": base / 1024, "load_s": load_s, "load_peak_mib": load_peak / 1024,
            "after_load_mib": after_load / 1024, "arrow_pool_peak_mib": pa.default_memory_pool().max_memory() / 2**20,
            "epoch_s": epoch_s, "epoch_peak_mib": epoch_peak / 1024, "windows_per_s": count / epoch_s,
            "peak_growth_bytes": max(load_peak, epoch_peak) * 1024, "cache_bytes": _folder_bytes(Path(cache_dir))}


def run_child(root: Path, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.frames_memory", *argv, "--child", str(root / "data"),
                          str(root / "cache")], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report(r: dict, args: argparse.Namespace) -> bool:
    """Prints one run's figures; True when its growth meets the goal."""
    what = (f"converted in {r['load_s']:.1f} s into {r['cache_bytes'] / 2**30:.2f} GiB of .npy" if r["converts"]
            else f"mapped the existing cache in {r['load_s']:.2f} s")
    print(f"{'first run' if r['converts'] else 'later run'}: from_parquet(cache=True, batch_rows={args.batch_rows:,}) "
          f"{what}; epoch: {r['delivered']:,} of {r['windows']:,} windows (T={args.window}, H={args.horizon}, "
          f"stride={args.stride}, B={args.batch_size}, order={r['order']}) in {r['epoch_s']:.1f} s, "
          f"{r['windows_per_s']:,.0f} windows/s")
    growth = r["peak_growth_bytes"]
    met = growth <= GOAL_BYTES
    print(f"  RssAnon {r['anon_base_mib']:,.0f} MiB before; peak growth while loading {r['load_peak_mib']:,.0f} MiB "
          f"({r['after_load_mib']:,.0f} MiB still held after; Arrow's pool peaked at {r['arrow_pool_peak_mib']:,.0f} "
          f"MiB), during the epoch {r['epoch_peak_mib']:,.0f} MiB; goal <= 300 MB: {growth / 1e6:,.0f} MB, "
          f"{'met' if met else 'NOT met'}")
    return met and r["delivered"] == r["windows"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0, help="Parquet bytes on disk")
    parser.add_argument("--dir", default=None, help="where the data and the cache go (default: a temporary folder)")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--stride", type=int, default=16,
                        help="steps between windows (16: every row is read in the epoch; 1 takes 16x as long)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--batch-rows", type=int, default=250_000,
                        help="from_parquet's rows read at a time (default: from_parquet's own, 250,000)")
    parser.add_argument("--keep", action="store_true", help="keep the data and the cache")
    parser.add_argument("--child", nargs=2, metavar=("DATA", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return 0
    root = Path(tempfile.mkdtemp(prefix="fastbatch-frames-memory-", dir=args.dir))
    free = shutil.disk_usage(root).free
    need = args.size_gib * 2**30 * 2.2  # the data and its cache (about the same size), with some room
    if free < need:
        shutil.rmtree(root, ignore_errors=True)
        raise SystemExit(f"{root} has {free / 2**30:.1f} GiB free; --size-gib {args.size_gib} needs about "
                         f"{need / 2**30:.1f} GiB (the data and its cache): pass a smaller --size-gib or another --dir")
    try:
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start (other work shares it)")
        t0 = time.perf_counter()
        data = write_dataset(root / "data", args.size_gib)
        print(f"wrote {data['bytes'] / 2**30:.2f} GiB of Parquet in {time.perf_counter() - t0:.0f} s: "
              f"{data['files']} files, {data['series']:,} series, {data['rows']:,} rows, in {root}")
        (root / "cache").mkdir()
        argv = sys.argv[1:] if argv is None else list(argv)
        # Each run in a fresh child: the first converts, the second finds the cache, as a later training run would.
        ok = [_report(run_child(root, argv), args) for _ in range(2)]
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return 0 if all(ok) else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
