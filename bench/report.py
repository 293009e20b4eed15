"""The harness's output: the terminal table, results.json, results.csv and three plots.

Every function takes the report dict that :func:`bench.harness.run` builds;
``results.json`` is that dict, and its keys ``hardware``, ``config``,
``results``, ``baseline``, ``oom_boundary`` and ``recommended_batch_size`` are
a contract for outside tools (see docs/bench.md).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from bench.config import format_bytes
from bench.search import SAFE_FRACTION

CSV_COLUMNS = [
    "batch_size", "status", "role", "loader_samples_per_sec", "loader_bytes_per_sec", "train_samples_per_sec",
    "data_wait_s", "compute_s", "peak_host_bytes", "peak_host_data_bytes", "peak_device_bytes", "peak_device_reserved_bytes",
    "baseline_samples_per_sec", "baseline_workers", "speedup_vs_baseline", "iterations_per_epoch",
    "statistical_efficiency", "goodput", "predicted_time_vs_best", "error",
]
STATUS_STYLE = {"ok": "green", "oom": "bold red", "crash": "red", "timeout": "yellow", "error": "red"}


def rate(value: float | None) -> str:
    """``123456.7`` -> ``"123k"``: samples per second, three significant digits."""
    if value is None:
        return "-"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def write_csv(report: dict[str, Any], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in report["results"]:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})


def _notes(report: dict[str, Any]) -> dict[int, list[str]]:
    notes: dict[int, list[str]] = {}
    rec = report.get("recommendation", {})
    boundary = report["oom_boundary"]
    for key, label in (("recommended_batch_size", "recommended"), ("largest_safe_batch_size", "largest safe")):
        if rec.get(key):
            notes.setdefault(rec[key], []).append(label)
    throughput = report.get("throughput_batch_size")
    if report.get("recommended_by") == "goodput" and throughput and throughput != rec.get("recommended_batch_size"):
        notes.setdefault(throughput, []).append("throughput choice")
    if boundary.get("largest_ok"):
        notes.setdefault(boundary["largest_ok"], []).append("largest ok")
    if boundary.get("smallest_oom"):
        notes.setdefault(boundary["smallest_oom"], []).append("smallest oom")
    return notes


def table(report: dict[str, Any]):
    """A ``rich.table.Table`` with one row per trial."""
    from rich.markup import escape
    from rich.table import Table

    gpu = report["config"]["device"].startswith("cuda")
    by_goodput = report.get("recommended_by") == "goodput"
    caption = "samples per second (/s); waiting: share of training time blocked on the next batch"
    if by_goodput:
        caption += ("; efficiency: what a sample is worth against one at the smallest size; goodput: the "
                    "end-to-end rate (smoothed) x efficiency")
    t = Table(caption=caption,
              title=f"batch sizes on {report['config']['device']}: {escape(report['config']['model'])} model, "
                    f"window {report['config']['window']}, horizon {report['config']['horizon']}, "
                    f"{report['dataset']['features']} features", title_justify="left")
    for name in ("batch", "status", "loader/s", "loader GB/s", "train/s", "waiting", "DataLoader/s",
                 "× DataLoader", "peak host", *(("peak device",) if gpu else ()), "iters/epoch",
                 *(("efficiency", "goodput/s") if by_goodput else ()), "note"):
        t.add_column(name, justify="left" if name in ("status", "note") else "right", no_wrap=name == "note")
    notes = _notes(report)
    for r in report["results"]:
        total = (r.get("data_wait_s") or 0) + (r.get("compute_s") or 0)
        waiting = f"{r['data_wait_s'] / total:.0%}" if r.get("data_wait_s") is not None and total > 0 else "-"
        dataloader = rate(r.get("baseline_samples_per_sec"))
        if r.get("baseline_workers") is not None:
            dataloader += f" ({r['baseline_workers']}w)"
        speedup = f"{r['speedup_vs_baseline']:.1f}" if r.get("speedup_vs_baseline") else "-"
        gbps = f"{r['loader_bytes_per_sec'] / 1e9:.2f}" if r.get("loader_bytes_per_sec") else "-"
        status = r["status"]
        note = ", ".join(notes.get(r["batch_size"], []))
        if r.get("role") == "boundary":
            note = ", ".join(filter(None, ["probe", note]))
        if status not in ("ok", "oom") and r.get("error"):
            note = ", ".join(filter(None, [note, escape(r["error"][:60])]))
        device_peak = ()
        if gpu:
            device_peak = (f"{format_bytes(r.get('peak_device_bytes'))} / {format_bytes(r.get('peak_device_reserved_bytes'))}",)
        note = escape(note)
        t.add_row(
            str(r["batch_size"]), f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            rate(r.get("loader_samples_per_sec")), gbps, rate(r.get("train_samples_per_sec")), waiting,
            dataloader, speedup, format_bytes(r.get("peak_host_bytes")), *device_peak,
            str(r.get("iterations_per_epoch") or "-"),
            *((f"{r['statistical_efficiency']:.2f}" if r.get("statistical_efficiency") else "-",
               rate(r.get("goodput"))) if by_goodput else ()), note,
            style="bold" if "recommended" in notes.get(r["batch_size"], []) else None,
        )
    return t


def summary(report: dict[str, Any]) -> list[str]:
    """The lines printed under the table: machine, limits, boundary, recommendation."""
    hw, cfg, boundary = report["hardware"], report["config"], report["oom_boundary"]
    rec = report.get("recommendation", {})
    gpu = hw.get("gpu")
    lines = [
        f"machine: {hw['cpu']}, {hw['cores']['usable']} cores, {format_bytes(hw['memory_bytes'])} RAM"
        + (f"; {gpu['name']} {format_bytes(gpu['memory_bytes'])}, driver {gpu['driver']}, CUDA {gpu['cuda']}" if gpu else "")
        + f"; torch {hw['versions']['torch']}, numba {hw['versions']['numba']} ({hw['numba_threading_layer']})",
        (f"limits: host memcpy {hw['memcpy_bytes_per_sec'] / 1e9:.1f} GB/s" if hw.get("memcpy_bytes_per_sec")
         else f"limits: not measured ({hw.get('error') or 'no profile'})")
        + (f", pinned host-to-device {hw['h2d_pinned_bytes_per_sec'] / 1e9:.1f} GB/s" if hw.get("h2d_pinned_bytes_per_sec") else ""),
    ]
    limit = cfg.get("memory_limit")
    if limit:
        lines.append(f"host memory limit per trial: {format_bytes(limit)} "
                     f"({'--memory-limit' if cfg.get('memory_limit_from') == 'user' else 'safety default'}, RLIMIT_DATA)")
    lines.append("boundary: " + boundary_text(boundary))
    failed = [r for r in report["results"] if r["status"] not in ("ok", "oom")]
    if failed:
        lines.append("failed trials (not recommended; with --out, their logs are in trial-logs/): " + "; ".join(
            f"{r['batch_size']} {r['status']}" + (f" ({r['error'][:100]})" if r.get("error") else "") for r in failed))
    if report.get("noise_scale"):
        lines.append(noise_text(report["noise_scale"]))
    if rec.get("recommended_batch_size"):
        lines.append(
            f"recommended batch size: {rec['recommended_batch_size']} "
            f"({rec['recommended_fraction_of_best']:.0%} of the best end-to-end rate, "
            f"{rate(rec['best_train_samples_per_sec'])} samples/s at {rec['best_batch_size']}); "
            f"largest safe: {rec['largest_safe_batch_size']}"
        )
        lines.append(chosen_by_text(report))
    elif report.get("interrupted"):
        lines.append("recommended batch size: none (the sweep was interrupted)")
    else:
        lines.append("recommended batch size: none (no batch size completed its training steps)")
    if report.get("lr_scaling"):
        lines.append(report["lr_scaling"])
    return lines


def noise_text(noise: dict[str, Any]) -> str:
    """The measured gradient noise scale: the value used, its interval, and its course over the short training."""
    low, high = noise["interval"]
    course = ", ".join("-" if b is None else f"{b:.3g}" for b in noise["b_simple_over_training"])
    losses = [loss for loss in noise.get("loss_over_training") or [] if loss is not None]
    fall = f"; loss {losses[0]:.3g} -> {losses[-1]:.3g}" if len(losses) > 1 else ""
    return (f"gradient noise scale B_simple: {noise['b_simple']:.3g} (90% interval {low:.3g} to "
            f"{'unbounded' if high is None else format(high, '.3g')}, {noise['samples']} windows), measured after "
            f"{noise['used_step']} training steps of {noise['train_batch_size']} at lr {noise['lr']:g}; "
            f"at steps {', '.join(map(str, noise['at_step']))}: {course}{fall}")


def chosen_by_text(report: dict[str, Any]) -> str:
    """How the recommendation was chosen, and what throughput alone would have chosen."""
    if report.get("recommended_by") != "goodput":
        return (f"chosen by throughput alone (goodput not measured: {report.get('recommended_by_reason')}): "
                "the smallest size within 95% of the best end-to-end rate")
    g = report["goodput"]
    text = (f"chosen by goodput: the highest end-to-end samples/s x statistical efficiency at B_noise "
            f"{g['b_noise']:.3g}")
    if report["oom_boundary"].get("reached"):
        text += f" among sizes at most {SAFE_FRACTION:.0%} of the largest that fits"
    text += "; "
    if g["throughput_batch_size"] == g["batch_size"]:
        return text + "throughput alone chooses the same size"
    return (text + f"throughput alone would choose {g['throughput_batch_size']}, predicted to take "
            f"{1 + g['throughput_choice_slower_by']:.2f}x as long to reach the same loss")


def boundary_text(boundary: dict[str, Any]) -> str:
    if boundary.get("reached"):
        if boundary.get("largest_ok") is None:
            return f"even batch size {boundary['smallest_oom']} runs out of memory"
        return (f"largest ok {boundary['largest_ok']}, smallest oom {boundary['smallest_oom']} "
                f"(within {boundary['tolerance']:.0%} or one sample)")
    why = {
        "max_batch_size": "the sweep stopped at --max-batch-size",
        "dataset": "the sweep stopped at the number of windows in the series (raise --series-length)",
        "batch_sizes": "every size of --batch-sizes ran",
        "timeout": "a trial timed out (--trial-timeout)",
        "crash": "a trial crashed",
        "error": "a trial failed with an error",
        "max_trials": "the search ran out of trials",
    }.get(boundary.get("stopped_by"), str(boundary.get("stopped_by")))
    text = f"not reached: {why}"
    if boundary.get("largest_ok") is not None and boundary.get("smallest_oom") is not None:
        text += f" (bracket so far: ok {boundary['largest_ok']}, oom {boundary['smallest_oom']})"
    elif boundary.get("largest_tried_ok"):
        text += f"; largest size run: {boundary['largest_tried_ok']}"
    if boundary.get("predicted_oom_batch_size"):
        text += f"; the memory model extrapolates to about {boundary['predicted_oom_batch_size']} (not tried)"
    return text


def plot(report: dict[str, Any], out_dir: str) -> list[str]:
    """Write ``throughput.png``, ``memory.png`` and (goodput measured) ``goodput.png``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [os.path.join(out_dir, "throughput.png"), os.path.join(out_dir, "memory.png")]
    results = report["results"]
    ok = [r for r in results if r["status"] == "ok"]
    boundary = report["oom_boundary"]
    sizes = [r["batch_size"] for r in results]
    gpu = report["config"]["device"].startswith("cuda")
    title = (f"{report['config']['model']} on {report['config']['device']} "
             f"({report['hardware']['cpu'][:40]}{'; ' + report['hardware']['gpu']['name'] if report['hardware'].get('gpu') else ''})")

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for key, label, style in (("loader_samples_per_sec", "fastbatch loader only", "o-"),
                              ("train_samples_per_sec", "end-to-end training", "s-"),
                              ("baseline_samples_per_sec", "DataLoader baseline (loader only)", "^--")):
        points = [(r["batch_size"], r[key]) for r in ok if r.get(key)]
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=4)
    rec = report.get("recommended_batch_size")
    if rec:
        ax.axvline(rec, color="tab:green", linestyle=":", label=f"recommended ({rec})")
    _log_axes(ax)
    _finish(fig, ax, boundary, sizes, "samples / s", title, paths[0])

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for key, label, style in (("peak_host_bytes", "peak host, resident", "o-"),
                              ("peak_host_data_bytes", "peak host, private (what --memory-limit counts)", "o:"),
                              ("peak_device_bytes", "peak device (allocated)", "s-"),
                              ("peak_device_reserved_bytes", "peak device (reserved)", "s--")):
        points = [(r["batch_size"], r[key] / 2**30) for r in ok if r.get(key)]
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=4)
    oom = [r["batch_size"] for r in results if r["status"] == "oom"]
    capacity = boundary.get("memory_capacity_bytes")
    if capacity:
        ax.axhline(capacity / 2**30, color="tab:red", linestyle=":", label="device memory available" if gpu else "--memory-limit")
    if oom:
        top = capacity / 2**30 if capacity else max((r.get("peak_host_bytes") or 0) for r in ok or results) / 2**30
        ax.plot(oom, [top] * len(oom), "x", color="tab:red", label="out of memory")
    _log_axes(ax, y_log=False)
    _finish(fig, ax, boundary, sizes, "GiB", title, paths[1], y_from_zero=True)
    if report.get("recommended_by") == "goodput":
        paths.append(os.path.join(out_dir, "goodput.png"))
        _plot_goodput(report, sizes, title, paths[-1])
    return paths


def _plot_goodput(report: dict[str, Any], sizes: list[int], title: str, path: str) -> None:
    """End-to-end samples/s and goodput against batch size, both choices and the boundary marked."""
    import matplotlib.pyplot as plt

    ok = [r for r in report["results"] if r["status"] == "ok" and r.get("goodput")]
    g = report["goodput"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    ax.plot([r["batch_size"] for r in ok], [r["train_samples_per_sec"] for r in ok], "s-", markersize=4,
            label="end-to-end samples / s (throughput)")
    ax.plot([r["batch_size"] for r in ok], [r["goodput"] for r in ok], "o-", markersize=4,
            label=f"goodput: throughput x efficiency (B_noise {g['b_noise']:.3g})")
    ax.axvline(g["batch_size"], color="tab:green", linestyle=":", label=f"recommended by goodput ({g['batch_size']})")
    if g["throughput_batch_size"] != g["batch_size"]:
        ax.axvline(g["throughput_batch_size"], color="tab:gray", linestyle="-.",
                   label=f"throughput alone ({g['throughput_batch_size']}, "
                         f"{1 + g['throughput_choice_slower_by']:.2f}x the time to a loss)")
    _log_axes(ax)
    _finish(fig, ax, report["oom_boundary"], sizes, "samples / s", title, path)


def _finish(fig, ax, boundary: dict[str, Any], sizes: list[int], ylabel: str, title: str, path,
            y_from_zero: bool = False) -> None:
    """Boundary marks, labels and legend of a batch-size plot; write it and free the figure."""
    import matplotlib.pyplot as plt

    _mark_boundary(ax, boundary, sizes)
    if y_from_zero:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _mark_boundary(ax, boundary: dict[str, Any], sizes: list[int]) -> None:
    """The largest ok size as a line, sizes from the smallest oom on as a shaded band."""
    if sizes:
        ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)
    if boundary.get("largest_ok"):
        ax.axvline(boundary["largest_ok"], color="tab:orange", linestyle="--",
                   label=f"largest ok ({boundary['largest_ok']})")
    if boundary.get("smallest_oom"):
        right = max(ax.get_xlim()[1], boundary["smallest_oom"] * 1.5)
        ax.axvspan(boundary["smallest_oom"], right, color="tab:red", alpha=0.12,
                   label=f"out of memory (>= {boundary['smallest_oom']})")
        ax.set_xlim(right=right)


def _log_axes(ax, y_log: bool = True) -> None:
    ax.set_xscale("log", base=2)
    if y_log:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)


def write_all(report: dict[str, Any], out_dir: str) -> list[str]:
    """``results.json``, ``results.csv`` and the plots in ``out_dir`` (created if need be)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.csv")]
    write_json(report, paths[0])
    write_csv(report, paths[1])
    return paths + plot(report, out_dir)

