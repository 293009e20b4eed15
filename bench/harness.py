"""One harness run: check the inputs, profile the machine, sweep, find the boundary, report.

:func:`prepare` does everything that can fail because of the user's options
(before a single trial starts, so a bad option costs a second, not a sweep);
:func:`run` does the rest and returns the report dict that ``results.json``
holds.
"""

from __future__ import annotations

import math
import os
import sys
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.config import BenchConfig, format_bytes, powers_of_two
from bench import goodput
from bench.search import SAFE_FRACTION, recommend, search, smoothed_rates


class BenchError(ValueError):
    """A problem with the options or the inputs: reported as one line, never a traceback."""


@dataclass
class Prepared:
    config: BenchConfig
    data_path: str
    dataset: dict[str, Any]
    workdir: str
    sizes: list[int]
    stopped_by: str


def _check_device(config: BenchConfig) -> None:
    import torch

    if not config.on_gpu:
        if config.gpu_memory_fraction is not None:
            raise BenchError("--gpu-memory-fraction applies to --device cuda only")
        return
    if not torch.cuda.is_available():
        raise BenchError(f"--device {config.device}: torch {torch.__version__} sees no CUDA device here")
    index = torch.device(config.device).index or 0
    if index >= torch.cuda.device_count():
        raise BenchError(f"--device {config.device}: torch sees {torch.cuda.device_count()} CUDA device(s)")


def _check_model(config: BenchConfig, n_features: int, workdir: str) -> int:
    """Build the model once on the CPU, in a child process bounded by --trial-timeout; its parameter count."""
    import json
    import sys

    from bench.model_check import model_label
    from bench.trial import _last_line, _read_json, _tail, run_child

    stem = os.path.join(workdir, "model-check")
    with open(stem + ".spec.json", "w") as f:
        json.dump({"config": config.to_dict(), "n_features": n_features, "harness_pid": os.getpid()}, f)
    command = [sys.executable, "-m", "bench.model_check", stem + ".spec.json", stem + ".result.json"]
    returncode, killed = run_child(command, stem + ".log", config.trial_timeout)
    result = _read_json(stem + ".result.json")
    if killed:
        raise BenchError(f"{model_label(config)}: importing it, building the model and running two windows "
                         f"through it took more than --trial-timeout {config.trial_timeout:g} s; killed")
    if result is None:
        raise BenchError(f"{model_label(config)}: the process checking the model ended with code {returncode} "
                         f"before reporting: {_last_line(_tail(stem + '.log')) or 'no message'}")
    if "error" in result:
        raise BenchError(result["error"])
    return result["parameters"]


def _check_out(out: str | None) -> None:
    """Make the ``--out`` folder now, so a path that cannot be written fails before the sweep, not after."""
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise BenchError(f"--out {out!r} is a file; give a folder (it is created if need be)")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise BenchError(f"--out {out!r}: cannot create the folder ({error.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise BenchError(f"--out {out!r}: the folder is not writable")


def _check_synthetic_size(config: BenchConfig, workdir: str) -> None:
    """Refuse a synthetic series that would not fit in memory (it is made there) or on the temporary disk."""
    import psutil

    nbytes = config.series_length * config.features * 4
    memory = psutil.virtual_memory().available // 2
    disk = shutil.disk_usage(workdir).free
    room, where = min((memory, "half the available memory"), (disk, f"the free space in {os.path.dirname(workdir)}"))
    if nbytes > room:
        raise BenchError(f"--series-length {config.series_length} with --features {config.features}: the synthetic "
                         f"series would take {format_bytes(nbytes)}, more than {where} ({format_bytes(room)})")


def _windows(array, config: BenchConfig, source: str) -> int:
    """The number of windows, from the same ``SlidingWindows`` every trial makes: its refusals come now."""
    import fastbatch as fb
    from bench.data import gather_dtype

    n_steps = array.shape[0]
    if n_steps < config.window + config.horizon:
        raise BenchError(f"{source} has {n_steps} steps; window {config.window} + horizon "
                         f"{config.horizon} need at least {config.window + config.horizon}")
    try:
        return len(fb.SlidingWindows(array, window=config.window, horizon=config.horizon, dtype=gather_dtype(array)))
    except (TypeError, ValueError) as error:
        raise BenchError(f"{source}: {error}".splitlines()[0]) from None


def plan_sizes(config: BenchConfig, n_windows: int) -> tuple[list[int], str]:
    """The sweep's batch sizes in order, and what ends the list if every size runs."""
    if config.batch_sizes:
        sizes = [s for s in config.batch_sizes if s <= n_windows]
        return sizes, "batch_sizes" if len(sizes) == len(config.batch_sizes) else "dataset"
    base = 4 if config.quick else 2  # --quick: every other power of two, half the trials
    if config.max_batch_size is not None and config.max_batch_size <= n_windows:
        return powers_of_two(config.max_batch_size, base), "max_batch_size"
    return powers_of_two(n_windows, base), "dataset"


def _table(path: str, config: BenchConfig):
    """Convert the table once (the trials open the cache); its ``(values, n_windows)``."""
    from bench.data import open_windows

    print(f"converting the table {path} (once; cached in bench.data.TABLE_CACHE) ...", file=sys.stderr, flush=True)
    try:
        windows = open_windows(path, config)
    except (ValueError, TypeError) as error:
        raise BenchError(f"--data {path!r}: {error}") from None
    if len(windows) == 0:
        raise BenchError(f"--data {path!r}: no window of window={config.window} + horizon={config.horizon} steps")
    return windows.data, len(windows)


def prepare(config: BenchConfig) -> Prepared:
    """Check the device, data and model; write the synthetic series; plan the sweep."""
    from bench.data import gather_dtype, load_series, write_synthetic

    _check_device(config)
    _check_out(config.out)
    workdir = tempfile.mkdtemp(prefix="fastbatch-bench-")
    try:
        if config.table is not None:
            data_path = os.path.abspath(config.data)
            array, n_windows = _table(data_path, config)
            source = data_path
        elif config.data is not None:
            data_path = os.path.abspath(config.data)
            array = load_series(data_path)
            source = data_path
            n_windows = _windows(array, config, f"--data {config.data!r}")
        else:
            _check_synthetic_size(config, workdir)
            data_path = write_synthetic(os.path.join(workdir, "series.npy"), config.series_length,
                                        config.features, config.seed)
            array = load_series(data_path)
            source = "synthetic"
            n_windows = _windows(array, config, "the synthetic series")
        n_steps, n_features = array.shape
        if config.reference_lr_from == "user" and config.reference_lr[1] > n_windows:
            lr, size = config.reference_lr
            raise BenchError(f"--reference-lr {lr:g}@{size}: batch size {size} exceeds the {n_windows} windows "
                             "of the series")
        parameters = _check_model(config, n_features, workdir)
        sizes, stopped_by = plan_sizes(config, n_windows)
        if not sizes:
            raise BenchError(f"every --batch-sizes value ({','.join(map(str, config.batch_sizes))}) exceeds the "
                             f"{n_windows} windows of the series")
    except ValueError as error:
        shutil.rmtree(workdir, ignore_errors=True)
        raise BenchError(str(error)) from None
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    dataset = {"source": source, "series_length": n_steps, "features": n_features, "dtype": str(array.dtype),
               "n_windows": n_windows,
               "bytes_per_window": (config.window + config.horizon) * n_features * gather_dtype(array).itemsize,
               "model_parameters": parameters}
    return Prepared(config, data_path, dataset, workdir, sizes, stopped_by)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _line(result: dict[str, Any]) -> str:
    from bench.report import rate

    head = f"batch {result['batch_size']:>7} {result['status']:<7}"
    if result["status"] != "ok":
        return f"{head} {result.get('error') or ''}"[:160]
    return (f"{head} loader {rate(result.get('loader_samples_per_sec'))}/s, "
            f"train {rate(result.get('train_samples_per_sec'))}/s, "
            f"peak host {format_bytes(result.get('peak_host_bytes'))}"
            + (f", device {format_bytes(result['peak_device_reserved_bytes'])}"
               if result.get("peak_device_reserved_bytes") else "")
            + f"  ({result.get('wall_s', 0):.1f} s)")


def run(prepared: Prepared, console) -> dict[str, Any]:
    """Profile, sweep and recommend; return the report dict.  Ctrl-C ends the sweep early, with a partial report."""
    from rich.markup import escape

    from bench import hardware
    from bench.trial import run_trial

    config = prepared.config
    started = time.perf_counter()
    # User text (a --data path, a --model spec) may hold [...], which rich would take for markup.
    console.print(f"[bold]fastbatch bench[/]: {escape(config.model)} on {config.device}, window {config.window}, "
                  f"horizon {config.horizon}, {prepared.dataset['features']} features, "
                  f"{prepared.dataset['n_windows']} windows ({escape(prepared.dataset['source'])})")
    with console.status("profiling the hardware"):
        hw = hardware.profile_in_child(config.device, quick=config.quick, timeout=config.trial_timeout,
                                       workdir=prepared.workdir)
    finished: list[dict[str, Any]] = []
    interrupted = False
    with _progress(console) as progress:
        task = progress.add_task("sweep", total=len(prepared.sizes))

        def trial(size: int, role: str) -> dict[str, Any]:
            if role == "boundary":
                progress.update(task, total=progress.tasks[task].total + 1)
            progress.update(task, description=f"batch {size} ({role})")
            return run_trial(config, size, prepared.data_path, role=role,
                             baseline=config.baseline and role == "sweep", workdir=prepared.workdir)

        def done(result: dict[str, Any]) -> None:
            finished.append(result)
            progress.advance(task)
            progress.console.print(escape(_line(result)), highlight=False)

        try:
            outcome = search(trial, prepared.sizes, tolerance=config.tolerance, stopped_by=prepared.stopped_by,
                             on_result=done)
            results, boundary = outcome.results, outcome.boundary
        except KeyboardInterrupt:
            interrupted = True
            results = sorted(finished, key=lambda r: r["batch_size"])
            boundary = {"largest_ok": None, "smallest_oom": None, "reached": False, "stopped_by": "interrupted",
                        "tolerance": config.tolerance, "predicted_oom_batch_size": None,
                        "memory_capacity_bytes": None}
    noise, reason = None, None
    if not interrupted:
        try:
            noise, reason = _noise_scale(prepared, results, console)
        except KeyboardInterrupt:
            interrupted = True
    report = build_report(config, hw, prepared.dataset, results, boundary, interrupted=interrupted,
                          noise=noise, noise_reason=reason)
    report["elapsed_s"] = time.perf_counter() - started
    return report


def _noise_scale(prepared: Prepared, results: list[dict[str, Any]], console) -> tuple[dict | None, str | None]:
    """The ``noise_scale`` entry measured in a child (:mod:`bench.noise_run`), or ``None`` and the reason why not."""
    from bench import noise_run

    config = prepared.config
    if not config.goodput:
        return None, "--no-goodput"
    if prepared.dataset.get("model_parameters") == 0:
        return None, "the model has no parameters, so no gradient noise to measure"
    if not any(r["status"] == "ok" for r in results):
        return None, "no batch size completed its training steps"
    lr, size = config.reference_lr
    with console.status(f"measuring the gradient noise scale over {config.goodput_steps} training steps "
                        f"of {size} (lr {lr:g})"):
        measured = noise_run.measure_in_child(config, prepared.data_path, prepared.workdir)
    if "error" in measured:
        return None, f"the noise-scale measurement failed: {measured['error']}"
    noise = noise_run.summarise(measured)
    if noise is None:
        errors = [p.get("error") for p in measured.get("points", []) if p.get("error")]
        return None, f"the noise-scale measurement failed: {errors[-1] if errors else 'no point was measured'}"
    return noise, None


def build_report(config: BenchConfig, hw: dict[str, Any], dataset: dict[str, Any],
                 results: list[dict[str, Any]], boundary: dict[str, Any], *,
                 interrupted: bool = False, noise: dict[str, Any] | None = None,
                 noise_reason: str | None = None) -> dict[str, Any]:
    """The dict ``results.json`` holds, from the trials' raw results and the measured noise scale.

    With ``noise``, the recommendation is the goodput-optimal size; without
    it, the throughput rule's, and ``noise_reason`` says why.  An interrupted
    sweep recommends nothing: its best size is only the best so far.
    """
    rows = []
    for r in results:
        row = {key: r.get(key) for key in (
            "batch_size", "status", "role", "loader_samples_per_sec", "loader_bytes_per_sec",
            "train_samples_per_sec", "data_wait_s", "compute_s", "peak_host_bytes", "peak_host_data_bytes",
            "peak_device_bytes",
            "peak_device_reserved_bytes", "baseline_samples_per_sec", "baseline_workers", "error",
            "final_loss", "wall_s")}
        row["iterations_per_epoch"] = math.ceil(dataset["n_windows"] / r["batch_size"])
        if r.get("loader_samples_per_sec") and r.get("baseline_samples_per_sec"):
            row["speedup_vs_baseline"] = r["loader_samples_per_sec"] / r["baseline_samples_per_sec"]
        else:
            row["speedup_vs_baseline"] = None
        row.update(statistical_efficiency=None, goodput=None, predicted_time_vs_best=None)  # see goodput.py
        rows.append(row)
    recommendation = recommend([] if interrupted else rows, boundary)
    by_throughput = recommendation["recommended_batch_size"]
    recommended, by, reason = by_throughput, "throughput" if by_throughput else None, noise_reason
    chosen = goodput.apply_goodput(rows, boundary, noise["b_simple"]) if noise and by_throughput else None
    if interrupted:
        reason = "interrupted"
    elif chosen and chosen["goodput_batch_size"]:
        recommended, by, reason = chosen["goodput_batch_size"], "goodput", None
        rates = smoothed_rates([r for r in rows if r["status"] == "ok" and r.get("train_samples_per_sec")])
        recommendation.update(recommended_batch_size=recommended,
                              recommended_fraction_of_best=rates[recommended] / recommendation["best_train_samples_per_sec"],
                              throughput_rule=recommendation["rule"],
                              rule="highest goodput (end-to-end samples/s, lone outliers filtered, x statistical "
                                   f"efficiency), at most {SAFE_FRACTION:.0%} of the largest size that fits")
    recommendation["throughput_batch_size"] = by_throughput
    rates_for = goodput.learning_rates(noise, tuple(config.reference_lr), recommended) if recommended else None
    return {
        "hardware": hw,
        "config": config.to_dict(),
        "dataset": dataset,
        "results": rows,
        "baseline": [{"batch_size": r["batch_size"], "samples_per_sec": r["baseline_samples_per_sec"],
                      "workers": r["baseline_workers"]} for r in rows if r.get("baseline_samples_per_sec")],
        "oom_boundary": boundary,
        "recommended_batch_size": recommended,
        "recommended_by": by,
        "recommended_by_reason": reason,
        "throughput_batch_size": by_throughput,
        "recommendation": recommendation,
        "noise_scale": noise,
        "goodput": _goodput_summary(chosen, by_throughput) if by == "goodput" else None,
        "learning_rate": rates_for,
        "lr_scaling": goodput.lr_note(rates_for) if rates_for else "",
        "interrupted": interrupted,
    }


def _goodput_summary(chosen: dict[str, Any], by_throughput: int) -> dict[str, Any]:
    """What ``results.json`` says about the goodput choice against the throughput-only one."""
    rates = chosen["goodput"]
    return {"b_noise": chosen["b_noise"], "batch_size": chosen["goodput_batch_size"],
            "goodput_samples_per_sec": chosen["goodput_samples_per_sec"],
            "efficiency_relative_to": chosen["smallest_batch_size"],
            "throughput_batch_size": by_throughput,
            # Time to a given loss goes as 1/goodput: this much longer with the throughput-only choice.
            "throughput_choice_slower_by": chosen["goodput_samples_per_sec"] / rates[by_throughput] - 1}


def keep_logs(prepared: Prepared, report: dict[str, Any], out_dir: str) -> None:
    """Copy the logs of trials that did not end ``ok``, and of a noise-scale measurement that failed, to
    ``out_dir/trial-logs``."""
    logs = [os.path.join(prepared.workdir, f"trial-{r['batch_size']}-{r['role']}.log")
            for r in report["results"] if r["status"] != "ok"]
    if report.get("noise_scale") is None:  # its log exists only if the measurement ran
        logs.append(os.path.join(prepared.workdir, "noise-scale.log"))
    logs = [log for log in logs if os.path.exists(log)]
    if not logs:
        return
    target = os.path.join(out_dir, "trial-logs")
    os.makedirs(target, exist_ok=True)
    for log in logs:
        shutil.copy(log, target)


def cleanup(prepared: Prepared) -> None:
    shutil.rmtree(prepared.workdir, ignore_errors=True)
