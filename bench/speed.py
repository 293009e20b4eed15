"""How fast fastbatch makes shuffled window batches, against the usual ways and the memory's limit.

Run ``python -m bench.speed`` (``--quick`` for a smaller run, ``--json PATH``
for the numbers).  Every figure comes from the same run: per setting,
fastbatch's ``WindowLoader`` and four baselines (:mod:`bench.baselines`),
``np.copyto`` of a 256 MB array as the bandwidth limit, and the bare gather
kernel (the loader's own ids, chunk by chunk, into one preallocated output)
as the limit for random window reads.  A last measurement compares whole
epochs, epoch starts included, with the steady rate inside an epoch.  Bytes are counted as a
copy counts them: each gathered window, input and target, is read once and
written once, so GB/s = 2 x window bytes x samples/s, and memcpy's GB/s counts
bytes read + written.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

import fastbatch as fb
from bench import baselines as bl


@dataclass(frozen=True)
class Setting:
    """One shape of problem: ``n`` steps of ``features`` float32, windows ``window`` + ``horizon``, batches of ``batch``."""

    name: str
    n: int
    features: int
    window: int
    horizon: int
    batch: int

    @property
    def window_nbytes(self) -> int:
        return (self.window + self.horizon) * self.features * 4

    @property
    def data_nbytes(self) -> int:
        return self.n * self.features * 4


SETTINGS = {
    "textbook": Setting("textbook", 1_000_000, 1, 10, 1, 32),
    "wide": Setting("wide", 4_000_000, 8, 64, 1, 512),
    "bandwidth": Setting("bandwidth", 32_000_000, 8, 64, 1, 1024),
}
# --quick keeps every shape but the data of the bandwidth setting: 256 MiB
# instead of 1 GiB, so its figure is then closer to a cache-assisted one.
QUICK_N = {"bandwidth": 8_000_000}


@dataclass(frozen=True)
class Goal:
    setting: str
    metric: str  # a key of the setting's "ratios"
    threshold: float
    text: str


GOALS = [
    Goal("textbook", "vs_per_window_dataloader", 40.0, "fastbatch >= 40x per-window DataLoader"),
    Goal("textbook", "vs_best_other", 3.0, "fastbatch >= 3x the best other way"),
    Goal("wide", "vs_per_window_dataloader", 12.0, "fastbatch >= 12x per-window DataLoader"),
    Goal("wide", "vs_best_other", 1.5, "fastbatch >= 1.5x the best other way"),
    Goal("bandwidth", "of_kernel", 0.9, "fastbatch >= 0.9 of the bare gather kernel"),
    Goal("wide", "whole_over_steady", 0.9, "whole epochs >= 0.9 of the steady rate"),
]
COLD_START_GOAL_S = 1.0

METHODS = {
    "fastbatch": "fastbatch WindowLoader",
    "dataloader": "(a) DataLoader, per-window",
    "dataloader_batched": "(b) DataLoader, __getitems__",
    "numpy": "(c) numpy swv + fancy index",
    "unfold": "(d) torch unfold + index_select",
}
OTHERS = ("dataloader_batched", "numpy", "unfold")


def make_data(s: Setting, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (s.n,) if s.features == 1 else (s.n, s.features)
    return rng.random(shape, dtype=np.float32)


def _summary(m: bl.Measurement, s: Setting, **extra: Any) -> dict:
    rate = m.samples_per_s
    return {
        "samples_per_s": rate,
        "gb_per_s": 2 * s.window_nbytes * rate / 1e9,
        "first_batch_s": m.first_batch_s,
        "n_batches": m.n_batches,
        "rates": m.rates,
        "span_s": m.seconds,
        **extra,
    }


def _epochs(gen: Callable, data: np.ndarray, s: Setting) -> Callable:
    """A factory of epochs with a new seed each, for the baselines without a loader object."""
    seeds = itertools.count()
    return lambda: gen(data, s.window, s.horizon, s.batch, seed=next(seeds))


def measure_setting(s: Setting, data: np.ndarray, *, repeats: int, target_s: float) -> dict:
    """Every method on one setting, their timed spans interleaved (see :func:`bench.baselines.measure_many`)."""
    windows = fb.SlidingWindows(data, window=s.window, horizon=s.horizon)
    streams = {}
    # Like the DataLoader's best of num_workers 0 and 2: the best of prefetch
    # 0 (gather in the caller's thread) and 2 (a producer thread).  With no
    # training step to hide behind, the thread only adds hand-offs on 2 cores.
    for prefetch in (0, 2):
        loader = fb.WindowLoader(windows, batch_size=s.batch, shuffle=True, seed=0, prefetch=prefetch)
        streams[("fastbatch", prefetch)] = bl.BatchStream(lambda loader=loader: loader, skip=_prefetched(loader))
    dataloaders = []
    for name, dataset, collate in (
        ("dataloader", bl.WindowDataset(data, s.window, s.horizon), None),
        ("dataloader_batched", bl.BatchedWindowDataset(data, s.window, s.horizon), bl.passthrough_collate),
    ):
        for workers in (0, 2):
            dl = bl.make_dataloader(dataset, s.batch, workers, collate_fn=collate)
            dataloaders.append(dl)
            streams[(name, workers)] = bl.dataloader_stream(dl)
    streams[("numpy", None)] = bl.BatchStream(_epochs(bl.numpy_batches, data, s))
    streams[("unfold", None)] = bl.BatchStream(_epochs(bl.unfold_batches, data, s))
    streams[("memcpy", None)] = CopyStream()
    streams[("kernel", None)] = KernelStream(windows, fb.WindowLoader(windows, batch_size=s.batch, shuffle=True, seed=0))
    try:
        found = bl.measure_many(streams, target_s=target_s, repeats=repeats)
    finally:
        for dl in dataloaders:
            bl.stop_workers(dl)
    copy = found.pop(("memcpy", None))
    out: dict[str, dict] = {"memcpy": {"gb_per_s": copy.samples_per_s / 1e9, "rates": [r / 1e9 for r in copy.rates],
                                       "nbytes": 256 * 2**20, "copies_per_span": copy.n_batches}}
    _log_copy(s, out["memcpy"])
    out["kernel"] = _summary(found.pop(("kernel", None)), s)
    _log(s, "kernel", out["kernel"])
    for method in METHODS:
        mine = {w: m for (name, w), m in found.items() if name == method}
        if None in mine:
            out[method] = _summary(mine[None], s)
        else:
            best = max(mine, key=lambda w: mine[w].samples_per_s)
            knob = "prefetch" if method == "fastbatch" else "workers"
            out[method] = _summary(mine[best], s, **{knob: best, f"by_{knob}": {w: m.samples_per_s for w, m in mine.items()}})
        _log(s, method, out[method])
    return out


def _prefetched(loader: Any) -> int:
    """Batches a loader may hold ready after idling: drawn untimed before each span.

    The prefetch thread works while the other methods are timed; its queued
    chunks (and the one being handed out) must not count as the next span's.
    """
    if not isinstance(loader, fb.WindowLoader):
        return 0
    depth = loader.queue_chunks if loader.prefetch else 0
    return (depth + 2) * loader.chunk_batches


class CpuShare:
    """The CPU time other processes used while we measured, as a fraction of all cores.

    The benchmark's machine may be shared; a large share means noisier figures.
    """

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.monotonic(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return float("nan")
        # user, nice, system, irq, softirq, steal (guest time is inside user)
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others(self) -> float:
        wall = time.monotonic() - self.t0
        other = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, other) / (wall * (os.cpu_count() or 1))


class CopyStream:
    """``np.copyto`` of an ``nbytes`` array, timed like a :class:`bench.baselines.BatchStream`.

    A span is ``n_batches`` copies; its "samples" are bytes read + written, so
    its rate is memcpy's GB/s x 1e9.  Timed in the same rounds as the loaders,
    the bandwidth limit sees the same machine they do.
    """

    def __init__(self, nbytes: int = 256 * 2**20) -> None:
        self.nbytes = nbytes
        self.src = self.dst = None
        self.first_batch_s = 0.0
        self.n_batches = 1

    def start(self) -> float:
        self.src = np.random.default_rng(1).random(self.nbytes // 4, dtype=np.float32)
        self.dst = np.empty_like(self.src)
        np.copyto(self.dst, self.src)  # fault the destination's pages in, untimed
        return 0.0

    def calibrate(self, target_s: float, **_: Any) -> int:
        t0 = time.perf_counter()
        np.copyto(self.dst, self.src)
        self.n_batches = max(1, int(target_s / (time.perf_counter() - t0)))
        return self.n_batches

    def span(self, n_batches: int | None = None) -> tuple[int, float]:
        n = n_batches or self.n_batches
        t0 = time.perf_counter()
        for _ in range(n):
            np.copyto(self.dst, self.src)
        return 2 * self.nbytes * n, time.perf_counter() - t0

    def close(self) -> None:
        self.src = self.dst = None


class KernelStream:
    """The bare gather kernel: a loader's shuffled ids, one chunk per call, into one preallocated output.

    What the loader does minus everything around the kernel (staging, tensors,
    batches, threads), so ``fastbatch / kernel`` is the share of this
    machine's random-read limit the loader delivers.  All Numba threads.
    """

    def __init__(self, windows: fb.SlidingWindows, loader: fb.WindowLoader) -> None:
        self.windows = windows
        self.chunk = loader.chunk_batches * loader.batch_size
        self.batch = loader.batch_size
        self.order = loader.order
        self.first_batch_s = 0.0
        self.n_batches = 1
        self._epoch = 0
        self._ids = None
        self._at = 0

    def start(self) -> float:
        w = self.windows
        self.x = np.empty((self.chunk, w.window, w.n_features), w.dtype)
        self.y = np.empty((self.chunk, w.horizon, w.n_targets), w.dtype)
        self._next_epoch()
        self.span(1)  # fault the output's pages in, untimed
        return 0.0

    def _next_epoch(self) -> None:
        from fastbatch.order import EpochOrder

        n = len(self.windows)
        self._ids = EpochOrder(n, kind=self.order.kind, seed=0, epoch=self._epoch,
                               block=(self.order.block_windows, self.order.pool_blocks)).ids(0, n)
        self._epoch += 1
        self._at = 0

    def calibrate(self, target_s: float, *, probe_s: float = 0.2, **_: Any) -> int:
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < probe_s:
            self.span(1)
            k += 1
        self.n_batches = max(1, int(k * target_s / (time.perf_counter() - t0)))
        return self.n_batches

    def span(self, n_batches: int | None = None) -> tuple[int, float]:
        """``n_batches`` kernel calls of one chunk each; returns (windows, seconds)."""
        n = n_batches or self.n_batches
        done, t0 = 0, time.perf_counter()
        for _ in range(n):
            if self._at + self.chunk > self._ids.shape[0]:
                self._next_epoch()
            ids = self._ids[self._at : self._at + self.chunk]
            self.windows.gather(ids, self.x[: ids.shape[0]], self.y[: ids.shape[0]], check=False)
            self._at += ids.shape[0]
            done += ids.shape[0]
        return done, time.perf_counter() - t0

    def close(self) -> None:
        self.x = self.y = self._ids = None


def whole_epochs(s: Setting, data: np.ndarray, *, epochs: int, steady_batches: int) -> dict:
    """Samples/s over whole epochs (epoch starts included) against the steady rate inside one, default options.

    Steady: ``steady_batches`` batches timed from the middle of an epoch.
    Whole: each of ``epochs`` complete ``for batch in loader`` loops, timed from
    ``iter()`` to the end; median of the epochs after the first.
    """
    loader = fb.WindowLoader(fb.SlidingWindows(data, window=s.window, horizon=s.horizon), batch_size=s.batch,
                             shuffle=True, seed=0)
    for _ in loader:  # warm: staging allocated, kernels loaded
        pass
    it = iter(loader)
    skip = min(len(loader) // 4, 200)
    for _ in range(skip):
        next(it)
    steady_batches = min(steady_batches, len(loader) - skip - 1)
    t0 = time.perf_counter()
    for _ in range(steady_batches):
        next(it)
    steady = steady_batches * s.batch / (time.perf_counter() - t0)
    del it
    whole = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for _batch in loader:
            pass
        whole.append(loader.n_samples / (time.perf_counter() - t0))
    rate = statistics.median(whole)
    print(f"  {s.name:9s} {'whole epochs':18s} {_fmt_rate(rate):>9s} samples/s against steady "
          f"{_fmt_rate(steady)}: {rate / steady:.2f}", file=sys.stderr, flush=True)
    return {"steady_samples_per_s": steady, "whole_samples_per_s": rate, "epochs": whole,
            "whole_over_steady": rate / steady}


_COLD_START = """
import sys, time
import numpy as np
data = np.random.default_rng(0).random({n}, dtype=np.float32)
t0 = time.perf_counter()
import fastbatch as fb
t1 = time.perf_counter()
loader = fb.WindowLoader(fb.SlidingWindows(data, window={window}, horizon={horizon}), batch_size={batch},
                         shuffle=True, seed=0)
x, y = next(iter(loader))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def cold_start(s: Setting, repeats: int) -> dict:
    """Seconds from after ``import fastbatch`` to the first batch, in fresh processes (warm Numba cache).

    One unmeasured process first fills the cache if it is empty.
    """
    code = _COLD_START.format(n=s.n, window=s.window, horizon=s.horizon, batch=s.batch)
    runs = []
    for _ in range(repeats + 1):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        runs.append(tuple(float(v) for v in done.stdout.split()))
    runs = runs[1:]
    return {
        "setting": s.name,
        "first_batch_s": statistics.median(r[1] for r in runs),
        "import_s": statistics.median(r[0] for r in runs),
        "runs": runs,
    }


def ratios(res: dict) -> dict:
    fbr = res["fastbatch"]["samples_per_s"]
    best = max(OTHERS, key=lambda k: res[k]["samples_per_s"])
    return {
        "vs_per_window_dataloader": fbr / res["dataloader"]["samples_per_s"],
        "vs_best_other": fbr / res[best]["samples_per_s"],
        "best_other": best,
        "of_memcpy": res["fastbatch"]["gb_per_s"] / res["memcpy"]["gb_per_s"],
        "of_kernel": fbr / res["kernel"]["samples_per_s"],
    }


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import psutil

        ram = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - psutil is a dependency
        ram = None
    import numba

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": None if ram is None else round(ram / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "numba": numba.__version__,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
    }


# -- output -----------------------------------------------------------------------


def _fmt_rate(v: float) -> str:
    return f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.1f} k"


def _rows(results: dict) -> list[list[str]]:
    rows = []
    for name, res in results["settings"].items():
        for method, label in METHODS.items():
            r = res["methods"][method]
            extra = "".join(f" [{knob}={r[knob]}]" for knob in ("workers", "prefetch") if knob in r)
            ratio = res["methods"]["fastbatch"]["samples_per_s"] / r["samples_per_s"]
            rows.append([name, label + extra, _fmt_rate(r["samples_per_s"]), f"{r['gb_per_s']:.2f}",
                         f"{r['first_batch_s'] * 1e3:.1f}", f"{ratio:.1f}x"])
    return rows


def _summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, res in results["settings"].items():
        r, m = res["ratios"], res["methods"]
        whole = r.get("whole_over_steady")
        rows.append([name, f"{r['vs_per_window_dataloader']:.1f}x", f"{r['vs_best_other']:.2f}x ({r['best_other']})",
                     f"{m['fastbatch']['gb_per_s']:.2f} / {m['memcpy']['gb_per_s']:.2f} = {r['of_memcpy']:.2f}",
                     f"{r['of_kernel']:.2f}", "-" if whole is None else f"{whole:.2f}",
                     f"{res['other_processes_cpu']:.0%}"])
    return rows


def _goal_rows(results: dict) -> list[list[str]]:
    rows = []
    for g in results["goals"]:
        value = "-" if g["value"] is None else f"{g['value']:.2f}"
        met = "-" if g["met"] is None else ("yes" if g["met"] else "NO")
        rows.append([g["setting"], g["text"], value, met])
    return rows


def render(results: dict) -> None:
    head = ["setting", "method", "samples/s", "GB/s", "1st batch ms", "fastbatch is"]
    goal_head = ["setting", "goal", "measured", "met"]
    sum_head = ["setting", "vs (a)", "vs best of (b)(c)(d)", "GB/s fastbatch / memcpy", "of bare kernel",
                "whole epochs / steady", "others"]
    m = results["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB; torch {m['torch']}, "
        f"numba {m['numba']}, numpy {m['numpy']}",
        f"command: {results['command']}   date: {results['date']}",
        "spans of all methods (and of memcpy) interleaved per setting; medians of "
        f"{results['repeats']} spans of ~{results['target_s']} s; 'others' = CPU share other processes used meanwhile",
    ]
    if results["quick"]:
        lines.append("QUICK run: shorter spans; bandwidth setting uses N=8e6 (256 MiB), not 32e6")
    cs = results.get("cold_start")
    if cs:
        lines.append(f"cold start (fresh process, warm Numba cache, {cs['setting']}): first batch "
                     f"{cs['first_batch_s']:.3f} s after import (import itself {cs['import_s']:.2f} s); "
                     f"goal < {COLD_START_GOAL_S:.0f} s: {'met' if cs['first_batch_s'] < COLD_START_GOAL_S else 'NOT met'}")
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        print("\n".join(lines))
        for h, rows in ((head, _rows(results)), (sum_head, _summary_rows(results)), (goal_head, _goal_rows(results))):
            widths = [max(len(str(r[i])) for r in [h, *rows]) for i in range(len(h))]
            for r in [h, *rows]:
                print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
            print()
        return
    # Piped output gets rich's 80 columns otherwise, which wraps every row.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    for line in lines:
        console.print(line, highlight=False)
    for title, h, rows in (("Shuffled float32 window batches (median of spans)", head, _rows(results)),
                           ("fastbatch against the others", sum_head, _summary_rows(results)),
                           ("Goals", goal_head, _goal_rows(results))):
        table = Table(title=title)
        for i, c in enumerate(h):
            table.add_column(c, justify="right" if i >= 2 else "left")
        for r in rows:
            table.add_row(*(Text(c) for c in r))  # Text: "[workers=2]" is not markup
        console.print(table)


def _log_copy(s: Setting, r: dict) -> None:
    print(f"  {s.name:9s} {'memcpy':18s} {r['gb_per_s']:6.2f} GB/s (np.copyto, 256 MB, read + write)",
          file=sys.stderr, flush=True)


def _log(s: Setting, method: str, r: dict) -> None:
    extra = "".join(f" {knob}={r[knob]}" for knob in ("workers", "prefetch") if knob in r)
    print(f"  {s.name:9s} {method:18s} {_fmt_rate(r['samples_per_s']):>9s} samples/s  "
          f"{r['gb_per_s']:6.2f} GB/s  first {r['first_batch_s'] * 1e3:7.1f} ms{extra}", file=sys.stderr, flush=True)


def run(names: list[str], *, quick: bool, repeats: int, target_s: float, cold: bool) -> dict:
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), "-m", "bench.speed", *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": quick,
        "repeats": repeats,
        "target_s": target_s,
        "settings": {},
    }
    # Compile / load the kernels before anything is timed.
    list(fb.WindowLoader(fb.SlidingWindows(np.zeros(64, np.float32), window=4), batch_size=8, shuffle=True))
    for name in names:
        s = SETTINGS[name]
        if quick and name in QUICK_N:
            s = dataclasses.replace(s, n=QUICK_N[name])
        data = make_data(s)
        share = CpuShare()
        res = measure_setting(s, data, repeats=repeats, target_s=target_s)
        found = ratios(res)
        epochs = None
        if name == "wide":
            epochs = whole_epochs(s, data, epochs=3 if quick else 5, steady_batches=1000 if quick else 3000)
            found["whole_over_steady"] = epochs["whole_over_steady"]
        del data
        results["settings"][name] = {"setting": dataclasses.asdict(s), "methods": res, "ratios": found,
                                     "whole_epochs": epochs, "other_processes_cpu": share.others()}
        print(f"  {name}: other processes used {share.others():.0%} of the CPUs meanwhile", file=sys.stderr)
    results["goals"] = []
    for g in GOALS:
        value = results["settings"].get(g.setting, {}).get("ratios", {}).get(g.metric)
        results["goals"].append({**dataclasses.asdict(g), "value": value,
                                 "met": None if value is None else value >= g.threshold})
    if cold:
        results["cold_start"] = cold_start(SETTINGS["textbook"], repeats)
        results["cold_start"]["goal_s"] = COLD_START_GOAL_S
        results["cold_start"]["met"] = results["cold_start"]["first_batch_s"] < COLD_START_GOAL_S
    results["wall_s"] = time.perf_counter() - t_start
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                   help="settings to run (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed spans per method; medians are reported (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="shorter spans (0.3 s) and a 256 MiB bandwidth setting: under a minute")
    p.add_argument("--target-seconds", type=float, default=None,
                   help="length of each timed span (default 0.75, --quick 0.3)")
    p.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process first-batch measurement")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    target = args.target_seconds or (0.3 if args.quick else 0.75)
    results = run(args.settings, quick=args.quick, repeats=args.repeats, target_s=target,
                  cold=not args.no_cold_start)
    render(results)
    print(f"wall time {results['wall_s']:.0f} s", file=sys.stderr)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
