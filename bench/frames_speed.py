"""Windows from a table: fastbatch against pytorch-forecasting's ``TimeSeriesDataSet`` + ``to_dataloader``.

    pip install -e '.[frames,bench-peers]'     # pytorch-forecasting: an optional extra, not a dependency
    python -m bench.frames_speed               # issue 11's frame: 1,000 series x 5,000 steps (about a minute)
    python -m bench.frames_speed --series 50 --steps 1000 --ptf-batches 5    # a small run to try it
    python -m bench.frames_speed --only fastbatch    # fastbatch's side alone (no pytorch-forecasting needed)

The frame: long format, one row per (series, step), an integer time index,
float32 columns: the target ``y``, 2 observed covariates (``obs1``, ``obs2``:
fastbatch ``past``, ptf ``time_varying_unknown_reals``), 3 known ones
(``known1..3``: ``future`` / ``time_varying_known_reals``) and 1 static
(``static1``: ``static`` / ``static_reals``); ``T=64`` (``max_encoder_length``),
``H=16`` (``max_prediction_length``), batches of 512, shuffled.

Each side runs in its own child process (so neither's memory or compiled code
counts for the other), which makes the frame first and then measures:

- build: ``SlidingWindows.from_frame`` + ``WindowLoader`` / ``TimeSeriesDataSet`` + ``to_dataloader``;
- windows/s: batches after the first (fastbatch: one full epoch; ptf: ``--ptf-batches``
  batches, as its rate is steady and an epoch would take hours);
- peak memory: the growth of the peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` once the frame is made) over the resident set then,
  i.e. what the dataset and the loader add to a process holding the frame;
- fastbatch's gather kernel alone, after the rest: ``KERNEL_WINDOWS`` random
  windows into preallocated outputs (``fastbatch.panel.gather``), the median of
  ``KERNEL_ROUNDS`` calls.

Both sides deliver the same values: no normalisation on either side (ptf:
``target_normalizer=None`` is its identity normaliser, ``scalers`` set to
``None`` for every real, no relative time index, encoder length or target
scales added; fastbatch: ``scale=None``), ``min_encoder_length`` and
``min_prediction_length`` equal to the maximum so every ptf sample is a full
window.  The ptf child then checks ``--check`` of its windows against
fastbatch's, field by field (:func:`compare`); the run fails if one differs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings

import numpy as np

from bench.hardware import cpu_model
from bench.outofcore import status_kib

UNKNOWN = ["y", "obs1", "obs2"]  # target first, then the observed covariates
KNOWN = ["known1", "known2", "known3"]
STATIC = ["static1"]
GOALS = {"windows/s": 300.0, "build": 1 / 10, "peak memory": 1 / 5}
KERNEL_WINDOWS = 8192
KERNEL_ROUNDS = 31


def make_frame(n_series: int, n_steps: int, seed: int = 0):
    """The benchmark's long-format pandas frame (float32 values; sorted by series and time)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_series * n_steps
    columns = {"series": np.repeat(np.arange(n_series, dtype=np.int64), n_steps),
               "time_idx": np.tile(np.arange(n_steps, dtype=np.int64), n_series)}
    for name in UNKNOWN + KNOWN:
        columns[name] = rng.standard_normal(n, dtype=np.float32)
    columns["static1"] = np.repeat(rng.integers(0, 10, n_series).astype(np.float32), n_steps)
    return pd.DataFrame(columns)


def fastbatch_windows(frame, window: int, horizon: int):
    import fastbatch as fb

    return fb.SlidingWindows.from_frame(frame, id="series", time="time_idx", target="y", past=UNKNOWN[1:],
                                        future=KNOWN, static=STATIC, window=window, horizon=horizon)


def ptf_dataset(frame, window: int, horizon: int):
    """pytorch-forecasting's dataset over ``frame``, with every transformation of the values switched off."""
    from pytorch_forecasting import TimeSeriesDataSet

    return TimeSeriesDataSet(
        frame, time_idx="time_idx", target="y", group_ids=["series"],
        max_encoder_length=window, min_encoder_length=window,
        max_prediction_length=horizon, min_prediction_length=horizon,
        static_reals=STATIC, time_varying_known_reals=KNOWN, time_varying_unknown_reals=UNKNOWN,
        target_normalizer=None,  # TorchNormalizer(method="identity")
        scalers={name: None for name in STATIC + KNOWN + UNKNOWN[1:]},  # else a StandardScaler per real
        add_relative_time_idx=False, add_target_scales=False, add_encoder_length=False,
    )


def compare(ds, w, ids) -> int:
    """Check ptf samples ``ids`` against fastbatch's same windows, field by field; returns how many were compared.

    ptf's sample ``i`` is series ``ds.index.sequence_id[i]`` from step
    ``ds.index.time[i]``; its ``encoder_cont``/``decoder_cont`` columns are
    ``ds.reals`` (static, known, unknown reals, in that order).
    """
    import torch

    x, (y, _) = ds._collate_fn([ds[int(i)] for i in ids])
    reals = list(ds.reals)
    col = {name: reals.index(name) for name in STATIC + KNOWN + UNKNOWN}
    assert x["encoder_cont"].shape[1] == w.window and x["decoder_cont"].shape[1] == w.horizon, "lengths differ"
    series = ds.index["sequence_id"].to_numpy()[ids]
    start = ds.index["time"].to_numpy()[ids] - w.panel.time.start[series]
    fb_ids = w.series_offsets[series] + start
    b = w.gather(fb_ids)
    both = torch.cat([x["encoder_cont"], x["decoder_cont"]], dim=1)
    want = {
        "past": x["encoder_cont"][..., [col[c] for c in UNKNOWN]],
        "future": both[..., [col[c] for c in KNOWN]],
        "static": x["encoder_cont"][:, 0, [col[c] for c in STATIC]],
        "target": y.unsqueeze(-1),
    }
    for name, expected in want.items():
        got = getattr(b, name)
        if got.shape != tuple(expected.shape) or not np.array_equal(got, expected.numpy()):
            raise AssertionError(f"{name} differs between fastbatch and pytorch-forecasting "
                                 f"(shapes {got.shape} and {tuple(expected.shape)})")
    if not np.array_equal(b.target[..., 0], x["decoder_target"].numpy()):
        raise AssertionError("target differs from ptf's decoder_target")
    if not np.array_equal(b.series, series):
        raise AssertionError("series differ from ptf's sequence_id")
    return len(ids)


# -- one side, in a child process ------------------------------------------------


def _reset_peak() -> int:
    """Resets the peak resident set to the current one (Linux 4.0+); returns the resident set in KiB."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return status_kib("VmRSS")


def run_side(side: str, args: argparse.Namespace) -> dict:
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if side == "fastbatch":
        import fastbatch as fb

        # Compile the kernels first (Numba caches them on disk): build time is the table's, not the compiler's.
        for _ in fb.WindowLoader(fastbatch_windows(make_frame(2, 200), args.window, args.horizon), batch_size=8):
            pass
    else:
        import pytorch_forecasting  # noqa: F401 - its import time is not the build's
    frame = make_frame(args.series, args.steps)
    base = _reset_peak()
    t0 = time.perf_counter()
    if side == "fastbatch":
        w = fastbatch_windows(frame, args.window, args.horizon)
        loader = fb.WindowLoader(w, batch_size=args.batch_size, shuffle=True, seed=0)
        n_windows = len(w)
    else:
        ds = ptf_dataset(frame, args.window, args.horizon)
        loader = ds.to_dataloader(train=True, batch_size=args.batch_size, num_workers=0)
        n_windows = len(ds)
    build = time.perf_counter() - t0
    it = iter(loader)
    next(it)  # the first batch starts the producer / the sampler
    limit = None if side == "fastbatch" else args.ptf_batches
    count, t0 = 0, time.perf_counter()
    for k, batch in enumerate(it):
        count += (batch.past if side == "fastbatch" else batch[1][0]).shape[0]
        if limit is not None and k + 1 >= limit:
            break
    seconds = time.perf_counter() - t0
    del it
    peak = status_kib("VmHWM") - base
    result = {"side": side, "windows": n_windows, "build_s": build, "windows_per_s": count / seconds,
              "timed_windows": count, "timed_s": seconds, "peak_growth_mib": peak / 1024,
              "frame_rss_mib": base / 1024}
    if side == "fastbatch":
        result["kernel_windows_per_s"] = kernel_rate(w)
    if side == "ptf" and args.check:
        w = fastbatch_windows(frame, args.window, args.horizon)
        ids = np.sort(np.random.default_rng(1).choice(len(ds), size=min(args.check, len(ds)), replace=False))
        result["checked_windows"] = compare(ds, w, ids)
    return result


def kernel_rate(w) -> float:
    """Windows/s of the panel gather alone (Numba's threads: every core): random windows into preallocated outputs."""
    from fastbatch import panel

    ids = np.random.default_rng(2).integers(0, len(w), KERNEL_WINDOWS).astype(np.int32)
    out = panel.empty_arrays(w.panel, KERNEL_WINDOWS)
    seconds = []
    for _ in range(KERNEL_ROUNDS + 1):
        t0 = time.perf_counter()
        panel.gather(w.panel, w.index, ids, out=out, check=False)
        seconds.append(time.perf_counter() - t0)
    return KERNEL_WINDOWS / float(np.median(seconds[1:]))


# -- the parent ----------------------------------------------------------------------


def machine() -> str:
    import psutil

    return (f"{cpu_model()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def _child(side: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.frames_speed", "--side", side, *argv],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the {side} child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(fast: dict, ptf: dict) -> list[str]:
    """Lines of the table: each side's figures, the ratios and the goals."""
    ratios = {"windows/s": fast["windows_per_s"] / ptf["windows_per_s"],
              "build": fast["build_s"] / ptf["build_s"],
              "peak memory": fast["peak_growth_mib"] / ptf["peak_growth_mib"]}
    ok = {"windows/s": ratios["windows/s"] >= GOALS["windows/s"], "build": ratios["build"] <= GOALS["build"],
          "peak memory": ratios["peak memory"] <= GOALS["peak memory"]}
    rows = [
        ("windows/s", f"{fast['windows_per_s']:,.0f}", f"{ptf['windows_per_s']:,.0f}",
         f"{ratios['windows/s']:,.0f}x", ">= 300x"),
        ("build", f"{fast['build_s']:.2f} s", f"{ptf['build_s']:.2f} s", f"{ratios['build']:.4f}", "<= 0.1"),
        ("peak memory growth", f"{fast['peak_growth_mib']:,.0f} MiB", f"{ptf['peak_growth_mib']:,.0f} MiB",
         f"{ratios['peak memory']:.3f}", "<= 0.2"),
    ]
    lines = ["| | fastbatch | pytorch-forecasting | ratio | goal |", "|---|---:|---:|---:|---|"]
    for (name, a, b, r, goal), met in zip(rows, ok.values()):
        lines.append(f"| {name} | {a} | {b} | {r} | {goal} {'met' if met else 'NOT met'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--ptf-batches", type=int, default=20, help="ptf batches timed after the first")
    parser.add_argument("--check", type=int, default=2048, help="windows compared field by field (0: none)")
    parser.add_argument("--only", choices=["fastbatch"],
                        help="run fastbatch's side alone and print its figures (no ratios, no pytorch-forecasting)")
    parser.add_argument("--side", choices=["fastbatch", "ptf"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(run_side(args.side, args)))
        return 0
    # The children get the frame's and the timing's options, nothing else.
    argv = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in
            ("series", "steps", "window", "horizon", "batch_size", "ptf_batches", "check")]
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start (other work shares it)")
    print(f"frame: {args.series:,} series x {args.steps:,} steps ({args.series * args.steps:,} rows), "
          f"2 observed, 3 known, 1 static covariate; T={args.window}, H={args.horizon}, B={args.batch_size}, "
          "shuffled; each side in its own child process, one after the other")
    fast = _child("fastbatch", argv)
    print(f"fastbatch: {fast['windows']:,} windows; {fast['timed_windows']:,} timed in {fast['timed_s']:.1f} s "
          f"(one epoch): {fast['windows_per_s']:,.0f} windows/s; build {fast['build_s']:.2f} s; peak memory growth "
          f"{fast['peak_growth_mib']:,.0f} MiB; the gather kernel alone {fast['kernel_windows_per_s']:,.0f} windows/s "
          f"({KERNEL_WINDOWS:,} random windows)")
    if args.only:
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return 0
    ptf = _child("ptf", argv)
    print(f"pytorch-forecasting: {ptf['windows']:,} windows; {ptf['timed_windows']:,} timed in "
          f"{ptf['timed_s']:.1f} s ({args.ptf_batches} batches, num_workers=0)")
    print(f"resident set with the frame made, before the build: fastbatch {fast['frame_rss_mib']:,.0f} MiB, "
          f"ptf {ptf['frame_rss_mib']:,.0f} MiB")
    if args.check:
        print(f"values: {ptf['checked_windows']:,} windows identical field by field (past, future, static, "
              "target, series)")
    print("\n".join(report(fast, ptf)))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
