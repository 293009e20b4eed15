"""Out-of-core data: memory of a shuffled epoch over a memory-mapped file, and block order's read speed.

    python -m bench.outofcore                      # 2 GiB file, 64 M windows (the docs' figures)
    python -m bench.outofcore --gib 0.25 --quick   # a small run to try the script

Two measurements, each in a fresh child process (so that neither Numba's
compiler nor the previous run's mappings are counted):

1. ``memory``: one full shuffled epoch over a ``.npy`` opened with
   ``SlidingWindows.from_npy`` (``np.load(mmap_mode="r")``).  Reported: the
   peak growth of the process's anonymous memory (``RssAnon``, which excludes
   the page cache holding the file) next to what a stored permutation of the
   epoch would have taken.
2. ``throughput``: windows per second from a file that is not in the page
   cache (dropped with ``posix_fadvise(DONTNEED)`` before each run), for the
   first ``--budget`` windows of an epoch in sequential, block-shuffled and
   fully shuffled order, with the bytes the process read from the disk
   (``/proc/self/io``).  A full shuffle touches the whole file almost at once;
   the block order reads it pool by pool.

The file is written once to ``--dir`` and removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FEATURES = 8  # float32: 32 bytes a row, so 2 GiB hold 64 M one-step-apart windows
WINDOW, HORIZON = 8, 1


def status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def disk_read_bytes() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return -1


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (they are clean: nothing is lost)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_file(path: Path, gib: float) -> int:
    """A ``(rows, FEATURES)`` float32 .npy of ``gib`` GiB with distinct values, written in blocks."""
    rows = int(gib * 2**30) // (4 * FEATURES)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, FEATURES))
    block = 1 << 22
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        out[start:stop] = np.arange(start * FEATURES, stop * FEATURES, dtype=np.float32).reshape(-1, FEATURES)
    out.flush()
    del out
    return rows


# -- child measurements ---------------------------------------------------------------


def child_memory(path: str, batch_size: int) -> dict:
    import fastbatch as fb

    # Compile on a tiny memmap first: the compiler's memory is not the loader's.
    tiny = Path(path).with_suffix(".tiny.npy")
    np.save(tiny, np.zeros((1000, FEATURES), np.float32))
    for _ in fb.WindowLoader(fb.SlidingWindows.from_npy(tiny, window=WINDOW, horizon=HORIZON), batch_size=64,
                             order="feistel"):
        pass
    tiny.unlink()
    w = fb.SlidingWindows.from_npy(path, window=WINDOW, horizon=HORIZON)
    loader = fb.WindowLoader(w, batch_size=batch_size, shuffle=True, seed=0)
    anon0 = status_kib("RssAnon")
    peak = anon0
    count = 0
    t0 = time.perf_counter()
    for k, (x, _) in enumerate(loader):
        count += x.shape[0]
        if k % 64 == 0:
            peak = max(peak, status_kib("RssAnon"))
    seconds = time.perf_counter() - t0
    peak = max(peak, status_kib("RssAnon"))
    return {"windows": len(w), "delivered": count, "order": loader.order.kind, "batch_size": batch_size,
            "anon_before_mib": anon0 / 1024, "anon_peak_growth_mib": (peak - anon0) / 1024,
            "stored_permutation_mib": len(w) * np.dtype(fb.order.index_dtype(len(w))).itemsize / 2**20,
            "epoch_s": seconds, "windows_per_s": count / seconds}


def child_throughput(path: str, order: str, budget: int, batch_size: int, seconds: float) -> dict:
    import fastbatch as fb

    w = fb.SlidingWindows.from_npy(path, window=WINDOW, horizon=HORIZON)
    kind = {"full shuffle": "feistel", "block": "block", "sequential": "sequential"}[order]
    loader = fb.WindowLoader(w, batch_size=batch_size, order=kind, seed=0, prefetch=2)
    read0 = disk_read_bytes()
    count = 0
    first = None
    t0 = time.perf_counter()
    for x, _ in loader:
        count += x.shape[0]
        first = time.perf_counter() - t0 if first is None else first
        if count >= budget or time.perf_counter() - t0 > seconds:
            break
    elapsed = time.perf_counter() - t0
    return {"order": order, "windows": count, "seconds": elapsed, "windows_per_s": count / elapsed,
            "first_batch_s": first, "disk_read_mib": (disk_read_bytes() - read0) / 2**20,
            "block_windows": loader.order.block_windows, "pool_blocks": loader.order.pool_blocks}


def run_child(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-m", "bench.outofcore", "--child", *args], capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the report ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write the file (default: the system temp folder)")
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--budget", type=int, default=2_000_000, help="windows per throughput run")
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="cold-cache runs per order (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="skip the full-epoch memory run")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        kind, *rest = args.child
        if kind == "memory":
            result = child_memory(rest[0], int(rest[1]))
        else:
            result = child_throughput(rest[0], rest[1], int(rest[2]), int(rest[3]), float(rest[4]))
        print(json.dumps(result))
        return result

    import tempfile

    folder = Path(args.dir or tempfile.gettempdir())
    path = folder / f"fastbatch-outofcore-{os.getpid()}.npy"
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
                     "command": "python -m bench.outofcore " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        t0 = time.perf_counter()
        rows = write_file(path, args.gib)
        results["file"] = {"path": str(path), "gib": path.stat().st_size / 2**30, "rows": rows,
                           "features": FEATURES, "write_s": time.perf_counter() - t0}
        print(f"file: {results['file']['gib']:.2f} GiB, {rows:,} rows x {FEATURES} float32", flush=True)
        if not args.quick:
            m = run_child("memory", str(path), str(args.batch_size))
            results["memory"] = m
            print(f"memory: shuffled epoch of {m['windows']:,} windows ({m['order']}) in {m['epoch_s']:.1f} s: "
                  f"anonymous memory +{m['anon_peak_growth_mib']:.1f} MiB "
                  f"(a stored permutation alone: {m['stored_permutation_mib']:.0f} MiB)", flush=True)
        results["throughput"] = []
        for order in ("sequential", "block", "full shuffle"):
            runs = []
            for _ in range(args.repeats):
                drop_from_page_cache(path)
                runs.append(run_child("throughput", str(path), order, str(args.budget), str(args.batch_size),
                                      str(args.seconds)))
            r = dict(sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2], runs=runs)  # the median run
            results["throughput"].append(r)
            print(f"cold cache, {order:>12}: {r['windows']:,} windows in {r['seconds']:.2f} s = "
                  f"{r['windows_per_s'] / 1e6:.2f} M windows/s, first batch after {r['first_batch_s']:.2f} s, "
                  f"{r['disk_read_mib']:.0f} MiB read from disk (median of {len(runs)})", flush=True)
    finally:
        if not args.keep and path.exists():
            path.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
