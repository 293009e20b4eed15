"""``python -m bench.convergence``: does the goodput recommendation reach a target loss soonest?  (slow)

For each data set (the real CO2 series of ``examples/``, a synthetic AR(1)
series), this

1. runs part 2, ``python -m bench`` on the training part (its sweep, in child
   processes, and the noise scale over a short training): the prediction;
2. sets a target validation loss from a pilot run at the reference size;
3. trains at every swept size to that target, at the learning rate the
   measured noise gives (AdaScale from ``--reference-lr``) and at x1/2 and x2
   of it, for several seeds; records steps, samples and training seconds to
   the target (evaluation not counted), keeping the best learning rate;
4. fits ``S_min``, ``E_min`` and ``B_crit`` (:mod:`bench.critical`) and
   compares the measured fastest size and ``B_crit`` with the prediction;
5. (``--adaptive``, on by default) trains the same model on the same data to
   the same target, from the smallest swept size (``--adaptive-start``),
   with ``fb.AdaptiveBatchSize`` growing the batch size as the online noise
   scale grows, up to the largest swept size; once with the learning rate
   scaled by the AdaScale gain (``scale_lr=True``) and once without; the
   starting learning rate chosen as for the fixed sizes (the rule at the
   starting size, x1/2, x2, keeping the best); compared with the best fixed
   size's time to the target.

It also measures the noise scale of the AR(1) series at several noise
levels: noisier data should give a larger noise scale.  The results go to
``--out`` (``convergence.json`` and a plot); docs/batch-size.md shows a run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.critical import fastest, fit_critical

CO2_CSV = Path(__file__).resolve().parent.parent / "examples" / "data" / "co2_weekly.csv"
WINDOW, HORIZON = 52, 4  # a year of weeks in, a month out, as examples/train_forecaster.py
LR_FACTORS = (0.5, 1.0, 2.0)


# -- the data ------------------------------------------------------------------------------


def co2_series() -> np.ndarray:
    """Weekly CO2 at Mauna Loa, gaps interpolated as in examples/train_forecaster.py, as week-to-week changes.

    The level climbs out of any training range; its changes (the seasonal
    cycle plus weather) are stationary, so plain windows of them can be
    learnt by the harness's models without the example's persistence skip.
    """
    table = np.genfromtxt(CO2_CSV, delimiter=",", names=True)
    co2 = table["co2"].astype(np.float64)
    missing = np.isnan(co2)
    weeks = np.arange(co2.size)
    co2[missing] = np.interp(weeks[missing], weeks[~missing], co2[~missing])
    return np.diff(co2)


def ar1_series(noise: float, length: int = 20_000, phi: float = 0.8, seed: int = 0) -> np.ndarray:
    """A yearly cycle plus AR(1) noise ``u_t = phi u_{t-1} + noise * e_t``: ``noise`` sets how noisy."""
    rng = np.random.default_rng(seed)
    shocks = noise * rng.standard_normal(length)
    u = np.empty(length)
    u[0] = shocks[0] / math.sqrt(1 - phi**2)
    for t in range(1, length):
        u[t] = phi * u[t - 1] + shocks[t]
    return np.sin(2 * np.pi * np.arange(length) / 52) + u


def split(series: np.ndarray, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """The first ``train_fraction`` trains, the rest validates; both standardised with the training statistics."""
    cut = int(train_fraction * len(series))
    train, val = series[:cut], series[cut:]
    mean, std = train.mean(), train.std()
    return ((train - mean) / std).astype(np.float32), ((val - mean) / std).astype(np.float32)


# -- part 2's prediction -------------------------------------------------------------------


def predict(train_path: str, sizes: list[int], reference: str, out: str | None) -> dict[str, Any]:
    """``python -m bench`` on the training series (in-process harness, child-process trials): its report."""
    from rich.console import Console

    from bench import cli, harness, report

    argv = ["--device", "cpu", "--data", train_path, "--window", str(WINDOW), "--horizon", str(HORIZON),
            "--batch-sizes", ",".join(map(str, sizes)), "--no-baseline", "--reference-lr", reference]
    config = cli.config_from_args(cli.build_parser().parse_args(argv))
    prepared = harness.prepare(config)
    try:
        result = harness.run(prepared, Console(stderr=True))
    finally:
        harness.cleanup(prepared)
    result["argv"] = argv
    if out:
        report.write_all(result, out)
    return result


def noise_levels(levels: list[float], reference: str, workdir: str) -> list[dict[str, Any]]:
    """The noise scale part 2 measures on the AR(1) series at each noise level, same model, steps and seed."""
    from bench import cli
    from bench.noise_run import measure_in_child, summarise

    out = []
    for level in levels:
        train, _ = split(ar1_series(level))
        path = os.path.join(workdir, f"ar1-{level:g}.npy")
        np.save(path, train)
        argv = ["--device", "cpu", "--data", path, "--window", str(WINDOW), "--horizon", str(HORIZON),
                "--reference-lr", reference]
        config = cli.config_from_args(cli.build_parser().parse_args(argv))
        noise = summarise(measure_in_child(config, path, workdir))
        out.append({"noise": level, "b_simple": noise and noise["b_simple"], "interval": noise and noise["interval"],
                    "b_simple_over_training": noise and noise["b_simple_over_training"]})
        print(f"  AR(1) noise {level:g}: B_simple {out[-1]['b_simple']}", file=sys.stderr)
    return out


# -- runs to a target ------------------------------------------------------------------------


class Task:
    """A data set's training windows and its validation batch, ready to train on."""

    def __init__(self, train: np.ndarray, val: np.ndarray) -> None:
        import fastbatch as fb

        self.train = fb.SlidingWindows(train, window=WINDOW, horizon=HORIZON)
        val_windows = fb.SlidingWindows(val, window=WINDOW, horizon=HORIZON)
        x, y = next(iter(fb.WindowLoader(val_windows, batch_size=len(val_windows))))
        self.x_val, self.y_val = x.float(), y.float()

    def val_loss(self, model) -> float:
        import torch

        with torch.no_grad():
            prediction = model(self.x_val)
            return float(torch.nn.functional.mse_loss(prediction, self.y_val.reshape(prediction.shape)))

    def run(self, batch_size: int, lr: float, seed: int, *, target: float = -math.inf,
            max_samples: int, max_seconds: float, eval_samples: int = 64) -> dict[str, Any]:
        """Train until the validation loss reaches ``target`` (or a budget ends); steps, samples and seconds.

        The validation loss is evaluated every ``eval_samples`` training
        samples (every step for larger batches); its time is not counted.
        """
        import torch

        import fastbatch as fb
        from bench.models import TrainStep, build_model

        torch.manual_seed(seed)
        model = build_model("mlp", WINDOW, HORIZON, 1, 1)
        step = TrainStep(model, lr=lr)
        loader = fb.WindowLoader(self.train, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True)
        every = max(1, eval_samples // batch_size)
        steps, seconds, best = 0, 0.0, self.val_loss(model)
        curve = [(0, best)]
        while steps * batch_size < max_samples and seconds < max_seconds:
            started = time.perf_counter()
            for x, y in loader:
                loss = step(x, y)
                steps += 1
                if steps % every == 0:
                    seconds += time.perf_counter() - started
                    if not math.isfinite(float(loss)):
                        return self._result(batch_size, lr, seed, steps, seconds, best, curve, reached=False)
                    value = self.val_loss(model)
                    best = min(best, value)
                    curve.append((steps, value))
                    if value <= target:
                        return self._result(batch_size, lr, seed, steps, seconds, best, curve, reached=True)
                    if steps * batch_size >= max_samples or seconds >= max_seconds:
                        break
                    started = time.perf_counter()
            else:
                seconds += time.perf_counter() - started
        return self._result(batch_size, lr, seed, steps, seconds, best, curve, reached=False)

    def run_adaptive(self, start_batch_size: int, max_batch_size: int, lr: float, seed: int, *,
                     scale_lr: bool, every: int = 50, target: float = -math.inf, max_samples: int,
                     max_seconds: float, eval_samples: int = 64) -> dict[str, Any]:
        """As :meth:`run`, with the batch size grown by ``fb.AdaptiveBatchSize`` from ``start_batch_size``.

        Same model, optimizer (AdamW), seed and evaluation as :meth:`run`;
        ``fb.GradientNoiseScale(model, every=1)`` is updated after each backward (the
        differenced estimator: no micro-batches), ``AdaptiveBatchSize.step()``
        after each optimizer step; their time counts as training time.  The
        validation loss is evaluated every ``eval_samples // B`` steps of the
        current size ``B`` (at least every step).
        """
        import torch

        import fastbatch as fb
        from bench.models import TrainStep, build_model

        torch.manual_seed(seed)
        model = build_model("mlp", WINDOW, HORIZON, 1, 1)
        optimizer = TrainStep(model, lr=lr).optimizer  # AdamW, the fixed runs' settings
        loader = fb.WindowLoader(self.train, batch_size=start_batch_size, shuffle=True, seed=seed, drop_last=True)
        gns = fb.GradientNoiseScale(model, every=1)  # every step: the seeds alone fix the run
        adapt = fb.AdaptiveBatchSize(loader, gns, optimizer, max_batch_size=max_batch_size, every=every,
                                     scale_lr=scale_lr)
        mse = torch.nn.functional.mse_loss
        steps, samples, since_eval, seconds, best = 0, 0, 0, 0.0, self.val_loss(model)
        curve, lrs = [(0, best)], []

        def result(reached: bool) -> dict[str, Any]:
            return {"adaptive": True, "scale_lr": scale_lr, "every": every, "batch_size": start_batch_size,
                    "max_batch_size": max_batch_size, "lr": lr, "seed": seed, "reached": reached, "steps": steps,
                    "samples": samples, "seconds": seconds, "best_val_loss": best,
                    "final_batch_size": loader.batch_size, "history": [list(h) for h in adapt.history],
                    "b_simple": gns.b_simple, "final_lr": optimizer.param_groups[0]["lr"],
                    "lr_at": lrs[:: max(1, len(lrs) // 50)], "curve": curve[:: max(1, len(curve) // 50)]}

        while samples < max_samples and seconds < max_seconds:
            started = time.perf_counter()
            for x, y in loader:
                prediction = model(x)
                loss = mse(prediction.float(), y.reshape(prediction.shape).float())
                loss.backward()
                gns.step(len(x))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                adapt.step()
                steps, samples, since_eval = steps + 1, samples + len(x), since_eval + 1
                if since_eval >= max(1, eval_samples // len(x)):
                    since_eval = 0
                    seconds += time.perf_counter() - started
                    if not math.isfinite(float(loss.detach())):
                        return result(False)
                    value = self.val_loss(model)
                    best = min(best, value)
                    curve.append((steps, value))
                    lrs.append((steps, len(x), optimizer.param_groups[0]["lr"]))
                    if value <= target:
                        return result(True)
                    if samples >= max_samples or seconds >= max_seconds:
                        break
                    started = time.perf_counter()
            else:
                seconds += time.perf_counter() - started
        return result(False)

    @staticmethod
    def _result(batch_size, lr, seed, steps, seconds, best, curve, *, reached) -> dict[str, Any]:
        return {"batch_size": batch_size, "lr": lr, "seed": seed, "reached": reached, "steps": steps,
                "samples": steps * batch_size, "seconds": seconds, "best_val_loss": best,
                "curve": curve[:: max(1, len(curve) // 50)]}


def target_loss(task: Task, batch_size: int, lr: float, fraction: float, max_samples: int,
                max_seconds: float) -> dict[str, Any]:
    """A pilot run at the reference size: the target is ``fraction`` of the way from its best loss back to its first."""
    pilot = task.run(batch_size, lr, seed=1000, max_samples=max_samples, max_seconds=max_seconds)
    first, best = pilot["curve"][0][1], pilot["best_val_loss"]
    return {"target": best + fraction * (first - best), "pilot_first": first, "pilot_best": best,
            "pilot_steps": pilot["steps"], "pilot_seconds": pilot["seconds"], "fraction": fraction,
            "pilot_batch_size": batch_size, "pilot_lr": lr}


def learning_rate(report: dict[str, Any], reference: tuple[float, int], batch_size: int) -> float:
    """The rule's learning rate for ``batch_size``: AdaScale from the measured noise, else the square-root rule."""
    from bench.goodput import learning_rates

    rates = learning_rates(report.get("noise_scale"), reference, batch_size)
    return rates["adascale"] if rates["adascale"] is not None else rates["sqrt"]


def time_to_target(task: Task, sizes: list[int], report: dict[str, Any], reference: tuple[float, int],
                   target: float, seeds: int, max_samples: int, max_seconds: float) -> list[dict[str, Any]]:
    runs = []
    for size in sizes:
        base = learning_rate(report, reference, size)
        for factor in LR_FACTORS:
            for seed in range(seeds):
                run = task.run(size, base * factor, seed, target=target, max_samples=max_samples,
                               max_seconds=max_seconds)
                run["lr_factor"] = factor
                runs.append(run)
            done = [r for r in runs if r["batch_size"] == size and r["lr_factor"] == factor]
            print(f"  batch {size:5d} lr x{factor:g} ({base * factor:.3g}): "
                  + ", ".join(f"{r['steps']} steps {r['seconds']:.2f} s" if r["reached"] else "not reached"
                              for r in done), file=sys.stderr)
    return runs


def adaptive_start(sizes: list[int], report: dict[str, Any], how: str) -> int:
    """The adaptive runs' starting size: the smallest swept (``smallest``) or the recommendation / 4 (``quarter``).

    ``quarter`` is kept within the swept range and falls back to the smallest
    swept size when part 2 made no recommendation.
    """
    if how == "smallest" or not report.get("recommended_batch_size"):
        return min(sizes)
    return max(min(sizes), min(max(sizes), int(report["recommended_batch_size"]) // 4))


def adaptive_to_target(task: Task, start: int, max_batch_size: int, report: dict[str, Any],
                       reference: tuple[float, int], target: float, seeds: int, max_samples: int,
                       max_seconds: float, every: int) -> list[dict[str, Any]]:
    """Adaptive runs from ``start``: the rule's lr at ``start`` x1/2, x1, x2, each seed, AdaScale on and off."""
    runs = []
    base = learning_rate(report, reference, start)
    for scale_lr in (True, False):
        for factor in LR_FACTORS:
            done = []
            for seed in range(seeds):
                run = task.run_adaptive(start, max_batch_size, base * factor, seed, scale_lr=scale_lr, every=every,
                                        target=target, max_samples=max_samples, max_seconds=max_seconds)
                run["lr_factor"] = factor
                done.append(run)
            runs += done
            print(f"  adaptive from {start} (AdaScale lr {'on' if scale_lr else 'off'}) lr x{factor:g} "
                  f"({base * factor:.3g}): "
                  + ", ".join((f"{r['steps']} steps {r['seconds']:.2f} s" if r["reached"] else "not reached")
                              + f" [{_trajectory(r)}]" for r in done), file=sys.stderr)
    return runs


def _trajectory(run: dict[str, Any]) -> str:
    """``4 -> 64@50 -> 256@100``: the starting size, then each change and the step it was made at."""
    return " -> ".join([str(run["batch_size"])] + [f"{b}@{s}" for s, b in run["history"]])


def summarise_adaptive(runs: list[dict[str, Any]], fixed: dict[str, Any]) -> dict[str, Any]:
    """Per ``scale_lr``: the best starting lr (as for the fixed sizes) and its time against the best fixed size."""
    best_fixed = fixed["per_size"][fixed["measured_fastest"]]
    out: dict[str, Any] = {"best_fixed_batch_size": fixed["measured_fastest"], "best_fixed_seconds": best_fixed["seconds"],
                           "runs_by_scale_lr": {}}
    for scale_lr in (True, False):
        options = []
        for factor in LR_FACTORS:
            group = [r for r in runs if r["scale_lr"] == scale_lr and r["lr_factor"] == factor]
            if group and all(r["reached"] for r in group):
                options.append((statistics.median(r["seconds"] for r in group), factor, group))
        key = "scale_lr" if scale_lr else "fixed_lr"
        if not options:
            mine = [r for r in runs if r["scale_lr"] == scale_lr]
            out["runs_by_scale_lr"][key] = {
                "reached": False, "seconds": math.inf, "vs_best_fixed": None,
                "best_val_loss": min((r["best_val_loss"] for r in mine), default=None),
                "trajectories": [_trajectory(r) for r in mine]}
            continue
        seconds, factor, group = min(options, key=lambda o: o[0])
        ratio = seconds / best_fixed["seconds"] if math.isfinite(best_fixed["seconds"]) else None
        out["runs_by_scale_lr"][key] = {
            "reached": True, "start_batch_size": group[0]["batch_size"], "lr_factor": factor, "lr": group[0]["lr"],
            "seconds": seconds, "steps": statistics.median(r["steps"] for r in group),
            "samples": statistics.median(r["samples"] for r in group),
            "seconds_by_seed": [r["seconds"] for r in group],
            "final_batch_sizes": [r["final_batch_size"] for r in group],
            "final_lrs": [r["final_lr"] for r in group],
            "trajectories": [_trajectory(r) for r in group],
            "vs_best_fixed": ratio}
    return out


def summarise(runs: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    """Per size the best learning rate (least median time, all seeds reaching the target); the fit; the verdict."""
    per_size: dict[int, dict[str, Any]] = {}
    for size in sorted({r["batch_size"] for r in runs}):
        options = []
        for factor in LR_FACTORS:
            group = [r for r in runs if r["batch_size"] == size and r["lr_factor"] == factor]
            if group and all(r["reached"] for r in group):
                options.append((statistics.median(r["seconds"] for r in group), factor, group))
        if not options:
            per_size[size] = {"reached": False, "seconds": math.inf}
            continue
        seconds, factor, group = min(options, key=lambda o: o[0])
        per_size[size] = {"reached": True, "lr_factor": factor, "lr": group[0]["lr"], "seconds": seconds,
                          "steps": statistics.median(r["steps"] for r in group),
                          "samples": statistics.median(r["samples"] for r in group),
                          "seconds_by_seed": [r["seconds"] for r in group]}
    reached = {b: v for b, v in per_size.items() if v["reached"]}
    fit = None
    if len(reached) >= 2:
        f = fit_critical(list(reached), [v["steps"] for v in reached.values()])
        fit = {"s_min": f.s_min, "e_min": f.e_min, "b_crit": f.b_crit, "rms_relative_error": f.rms_relative_error}
    quickest = fastest({b: v["seconds"] for b, v in per_size.items()})
    recommended, throughput = report.get("recommended_batch_size"), report.get("throughput_batch_size")
    best = per_size[quickest]["seconds"]

    def vs_best(size):
        value = per_size.get(size, {}).get("seconds", math.inf)
        return value / best if math.isfinite(value) and math.isfinite(best) else None

    return {"per_size": per_size, "fit": fit, "measured_fastest": quickest,
            "recommended": recommended, "recommended_time_vs_fastest": vs_best(recommended),
            "throughput_choice": throughput, "throughput_time_vs_fastest": vs_best(throughput),
            "predicted_b_noise": (report.get("noise_scale") or {}).get("b_simple"),
            "predicted_time_vs_best": {r["batch_size"]: r.get("predicted_time_vs_best") for r in report["results"]},
            "within_15_percent": (vs_best(recommended) or math.inf) <= 1.15}


# -- the command ---------------------------------------------------------------------------


def _data_sets(names: list[str], ar1_noise: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in names:
        out[name] = split(co2_series()) if name == "co2" else split(ar1_series(ar1_noise))
    return out


def build_parser() -> argparse.ArgumentParser:
    from bench.cli import _fraction, _Parser, _integer, _reference_lr, _seconds, _wrap
    from bench.config import parse_batch_sizes

    p = _Parser(prog="python -m bench.convergence", description="Does the goodput recommendation of python -m bench reach a target "
                "validation loss soonest?  Trains at each batch size to the target and compares (slow; minutes). "
                "See docs/batch-size.md.")
    p.add_argument("--datasets", default="co2,ar1", type=_wrap(_names, "data sets"),
                   help="co2 (weekly CO2, examples/data) and/or ar1 (synthetic) (default co2,ar1)")
    p.add_argument("--batch-sizes", type=_wrap(parse_batch_sizes, "batch sizes"), default=[4, 16, 64, 256, 1024],
                   metavar="B,B,...", help="swept by part 2 and trained to the target (default 4,16,64,256,1024)")
    p.add_argument("--seeds", type=_integer(1), default=3, help="seeds per size and learning rate (default 3)")
    p.add_argument("--reference-lr", type=_reference_lr, default=(1e-3, 32), metavar="LR@B",
                   help="AdamW's learning rate at a batch size; the rule scales it (default 1e-3@32)")
    p.add_argument("--target-fraction", type=_fraction(one=False), default=0.05, metavar="F",
                   help="target loss: best pilot loss + F x (first - best) (default 0.05)")
    p.add_argument("--ar1-noise", type=_positive, default=0.5,
                   help="the AR(1) shocks' standard deviation for the runs (default 0.5)")
    p.add_argument("--noise-levels", type=_levels, default=[0.1, 0.5, 2.0],
                   metavar="S,S,...", help="AR(1) noise levels whose noise scale is compared (default 0.1,0.5,2)")
    p.add_argument("--max-samples", type=_integer(1), default=400_000,
                   help="a run that has not reached the target after this many samples stops (default 400000)")
    p.add_argument("--max-seconds", type=_seconds, default=10.0,
                   help="...or after this many seconds of training (default 10)")
    p.add_argument("--threads", type=_integer(1), default=1,
                   help="torch threads, here and in part 2's trials (default 1: see docs/batch-size.md)")
    p.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True,
                   help="also train with fb.AdaptiveBatchSize growing the batch size up to the largest swept size, "
                        "AdaScale lr on and off, and compare with the best fixed size (default on)")
    p.add_argument("--adaptive-start", choices=("smallest", "quarter"), default="smallest",
                   help="the adaptive runs' first batch size: the smallest swept, or part 2's recommendation / 4 "
                        "(default smallest)")
    p.add_argument("--adaptive-every", type=_integer(1), default=50, metavar="N",
                   help="AdaptiveBatchSize(every=N): steps between its decisions (default 50, its default)")
    p.add_argument("--out", metavar="DIR", help="write convergence.json, time-to-target.png and part 2's reports")
    return p


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in ("co2", "ar1") for n in names):
        raise ValueError(f"must be co2, ar1 or co2,ar1, got {text!r}")
    return names


def _positive(text: str) -> float:
    from bench.cli import _number

    value = _number(text)  # refuses what is not a finite number, naming it
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _levels(text: str) -> list[float]:
    return [_positive(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # On a shared 2-core machine two OpenMP threads make each small step wait for a descheduled
    # thread (the MLP's step at 32: 23 ms with 2 threads, 1.5 ms with 1, with other jobs running).
    # Set before torch is imported, so that part 2's trial processes inherit it too.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    reference = f"{args.reference_lr[0]:g}@{args.reference_lr[1]}"
    out = args.out or tempfile.mkdtemp(prefix="fastbatch-convergence-")
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"argv": sys.argv if argv is None else ["python", "-m", "bench.convergence", *argv],
                               "torch_threads": torch.get_num_threads(), "data_sets": {}}
    for name, (train, val) in _data_sets(args.datasets, args.ar1_noise).items():
        print(f"{name}: part 2 (python -m bench) on the {len(train)} points of the training part", file=sys.stderr)
        path = os.path.join(out, f"{name}-train.npy")
        np.save(path, train)
        report = predict(path, args.batch_sizes, reference, os.path.join(out, f"bench-{name}"))
        task = Task(train, val)
        lr0, b0 = args.reference_lr
        target = target_loss(task, b0, lr0, args.target_fraction, args.max_samples, args.max_seconds)
        print(f"{name}: target validation loss {target['target']:.4g} (pilot {target['pilot_first']:.4g} -> "
              f"{target['pilot_best']:.4g})", file=sys.stderr)
        runs = time_to_target(task, args.batch_sizes, report, args.reference_lr, target["target"], args.seeds,
                              args.max_samples, args.max_seconds)
        summary = summarise(runs, report)
        adaptive = None
        if args.adaptive:
            start = adaptive_start(args.batch_sizes, report, args.adaptive_start)
            adaptive_runs = adaptive_to_target(task, start, max(args.batch_sizes), report, args.reference_lr,
                                               target["target"], args.seeds, args.max_samples, args.max_seconds,
                                               args.adaptive_every)
            adaptive = {"start": args.adaptive_start, "start_batch_size": start, "every": args.adaptive_every,
                        "max_batch_size": max(args.batch_sizes), "summary": summarise_adaptive(adaptive_runs, summary),
                        "runs": adaptive_runs}
        results["data_sets"][name] = {"target": target, "summary": summary, "runs": runs, "adaptive": adaptive,
                                      "prediction": {k: report.get(k) for k in (
                                          "recommended_batch_size", "throughput_batch_size", "recommended_by",
                                          "noise_scale", "goodput", "learning_rate")},
                                      "train_samples_per_sec": {r["batch_size"]: r["train_samples_per_sec"]
                                                                for r in report["results"]},
                                      "n_train_windows": len(task.train)}
        _print_summary(name, results["data_sets"][name])
    if "ar1" in args.datasets and args.noise_levels:
        print("AR(1) noise levels:", file=sys.stderr)
        results["ar1_noise_levels"] = noise_levels(args.noise_levels, reference, out)
    results["elapsed_s"] = time.perf_counter() - started
    with open(os.path.join(out, "convergence.json"), "w") as f:
        json.dump(_finite(results), f, indent=1)
    plot(results, os.path.join(out, "time-to-target.png"))
    print(f"wrote {out}/convergence.json and time-to-target.png in {results['elapsed_s']:.0f} s")
    return 0


def _finite(value: Any) -> Any:
    """``value`` with every inf or nan float as ``None``: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _print_summary(name: str, data: dict[str, Any]) -> None:
    s = data["summary"]
    print(f"\n{name}: target {data['target']['target']:.4g}; B_noise predicted {s['predicted_b_noise']}")
    print(f"{'batch':>6} {'lr':>9} {'steps':>8} {'samples':>9} {'seconds':>8}  vs fastest  predicted")
    best = s["per_size"][s["measured_fastest"]]["seconds"]
    for size, v in s["per_size"].items():
        predicted = s["predicted_time_vs_best"].get(size)
        if not v["reached"]:
            print(f"{size:>6} {'-':>9} {'not reached':>27}")
            continue
        print(f"{size:>6} {v['lr']:>9.3g} {v['steps']:>8.0f} {v['samples']:>9.0f} {v['seconds']:>8.2f}  "
              f"{v['seconds'] / best:>9.2f}x  {predicted and f'{predicted:.2f}x'}")
    fit = s["fit"]
    if fit:
        print(f"fit: S_min {fit['s_min']:.3g}, E_min {fit['e_min']:.3g}, B_crit {fit['b_crit']:.3g} "
              f"(rms relative error {fit['rms_relative_error']:.0%})")
    print(f"fastest measured: {s['measured_fastest']}; goodput recommended {s['recommended']} "
          f"({s['recommended_time_vs_fastest']}x); throughput choice {s['throughput_choice']} "
          f"({s['throughput_time_vs_fastest']}x)")
    adaptive = data.get("adaptive")
    if adaptive:
        a = adaptive["summary"]
        print(f"adaptive from {adaptive['start_batch_size']} up to {adaptive['max_batch_size']} "
              f"(every {adaptive['every']} steps), against the best fixed size {a['best_fixed_batch_size']} "
              f"({a['best_fixed_seconds']:.3g} s):")
        print(f"{'AdaScale lr':>11} {'lr':>9} {'steps':>8} {'samples':>9} {'seconds':>8}  vs best fixed  trajectory (seed 0)")
        for key, v in a["runs_by_scale_lr"].items():
            label = "on" if key == "scale_lr" else "off"
            if not v["reached"]:
                print(f"{label:>11} {'-':>9} {'not reached':>27}  best val loss {v['best_val_loss']:.4g}  "
                      f"{v['trajectories'][0] if v['trajectories'] else ''}")
                continue
            print(f"{label:>11} {v['lr']:>9.3g} {v['steps']:>8.0f} {v['samples']:>9.0f} {v['seconds']:>8.2f}  "
                  f"{v['vs_best_fixed']:>12.2f}x  {v['trajectories'][0]}")
    print()


def plot(results: dict[str, Any], path: str) -> None:
    """Measured time to target (best learning rate, median of seeds) against batch size, per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for name, data in results["data_sets"].items():
        s = data["summary"]
        points = [(b, v["seconds"]) for b, v in s["per_size"].items() if v["reached"]]
        if not points:
            continue
        line, = ax.plot(*zip(*points), "o-", label=f"{name}: measured time to target")
        # Part 2 predicts times relative to its best size: scaled to the time measured there.
        predicted = {int(b): t for b, t in s["predicted_time_vs_best"].items() if t}
        best = min(predicted, key=predicted.get) if predicted else None
        if best is not None and s["per_size"].get(best, {}).get("reached"):
            scale = s["per_size"][best]["seconds"]
            ax.plot(sorted(predicted), [predicted[b] * scale for b in sorted(predicted)], "--", alpha=0.6,
                    color=line.get_color(), label=f"{name}: predicted by goodput (scaled at {best})")
        for key, v in ((data.get("adaptive") or {}).get("summary") or {}).get("runs_by_scale_lr", {}).items():
            if v["reached"]:
                ax.axhline(v["seconds"], color=line.get_color(), linestyle="-." if key == "scale_lr" else ":",
                           alpha=0.5, label=f"{name}: adaptive, AdaScale lr {'on' if key == 'scale_lr' else 'off'}")
        if s["recommended"]:
            ax.axvline(s["recommended"], color=line.get_color(), linestyle=":",
                       label=f"{name}: goodput recommendation ({s['recommended']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("seconds of training to the target loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
