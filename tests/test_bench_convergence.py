"""``python -m bench.convergence``: the fit of steps against batch size, the summary of runs, and a smoke run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.convergence import (LR_FACTORS, Task, adaptive_start, ar1_series, build_parser, co2_series, split,
                               summarise, summarise_adaptive)
from bench.critical import fastest, fit_critical

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [4, 16, 64, 256, 1024]


def test_the_fit_recovers_s_min_and_e_min_from_exact_runs():
    steps = [200 + 12_800 / b for b in SIZES]  # S_min 200, E_min 12800: B_crit 64
    fit = fit_critical(SIZES, steps)
    assert fit.s_min == pytest.approx(200) and fit.e_min == pytest.approx(12_800)
    assert fit.b_crit == pytest.approx(64) and fit.rms_relative_error < 1e-9
    for b, s in zip(SIZES, steps):  # McCandlish's (S/S_min - 1)(E/E_min - 1) = 1 with E = B S
        assert (s / fit.s_min - 1) * (b * s / fit.e_min - 1) == pytest.approx(1)


def test_the_fit_weighs_short_and_long_runs_alike():
    rng = np.random.default_rng(0)
    steps = [(200 + 12_800 / b) * rng.uniform(0.9, 1.1) for b in SIZES]
    fit = fit_critical(SIZES, steps)
    assert 40 < fit.b_crit < 100 and fit.rms_relative_error < 0.1
    # One run 10x too slow at the largest size must not drag the small-batch end with it.
    skewed = fit_critical(SIZES, [200 + 12_800 / b for b in SIZES[:-1]] + [2000])
    assert skewed.steps(4) == pytest.approx(200 + 3200, rel=0.5)


def test_the_fit_stays_non_negative_at_either_extreme():
    no_gain = fit_critical(SIZES, [500.0] * 5)  # a larger batch saves no step: B_crit 0
    assert no_gain.s_min == pytest.approx(500) and no_gain.e_min == 0 and no_gain.b_crit == 0
    perfect = fit_critical(SIZES, [51_200 / b for b in SIZES])  # every doubling halves the steps
    assert perfect.s_min == pytest.approx(0, abs=1e-9) and perfect.e_min == pytest.approx(51_200)
    assert perfect.b_crit > 1e12  # no batch size is critical
    assert fit_critical(SIZES, [10 + 51_200 / b ** 1.5 for b in SIZES]).s_min >= 0


@pytest.mark.parametrize("sizes,steps,fragment", [
    ([64, 64], [10, 12], "two distinct batch sizes"),
    ([16, 64], [10], "equal length"),
    ([16, 64], [10, 0], "steps must be finite numbers > 0"),
    ([0, 64], [10, 5], "batch_sizes must be finite numbers > 0"),
    ([16, 64], [10, math.inf], "steps must be finite"),
])
def test_the_fit_refuses_what_it_cannot_fit(sizes, steps, fragment):
    with pytest.raises(ValueError, match=fragment):
        fit_critical(sizes, steps)


def test_fastest_counts_an_unreached_target_as_slowest():
    assert fastest({16: 2.0, 64: 1.5, 256: math.inf}) == 64
    assert fastest({16: math.inf, 64: math.inf}) == 16
    with pytest.raises(ValueError):
        fastest({})


def runs_for(seconds_by_size_and_factor, seeds=3):
    runs = []
    for (size, factor), seconds in seconds_by_size_and_factor.items():
        for seed in range(seeds):
            reached = math.isfinite(seconds)
            runs.append({"batch_size": size, "lr_factor": factor, "lr": 1e-3 * factor, "seed": seed,
                         "reached": reached, "steps": 3200 // size + 50 if reached else 999,
                         "samples": (3200 // size + 50) * size, "seconds": seconds + 0.01 * seed})
    return runs


def test_summary_keeps_the_best_learning_rate_and_compares_with_the_prediction():
    times = {(size, f): math.inf if (size, f) == (16, 2.0) else {16: 2.0, 64: 1.0, 256: 1.1}[size] * f
             for size in (16, 64, 256) for f in LR_FACTORS}
    report = {"recommended_batch_size": 256, "throughput_batch_size": 16,
              "noise_scale": {"b_simple": 80.0}, "results": [{"batch_size": b, "predicted_time_vs_best": 1.0}
                                                             for b in (16, 64, 256)]}
    out = summarise(runs_for(times), report)
    assert out["measured_fastest"] == 64 and out["per_size"][64]["lr_factor"] == 0.5
    assert out["recommended_time_vs_fastest"] == pytest.approx(1.1, rel=0.01) and out["within_15_percent"]
    assert out["throughput_time_vs_fastest"] == pytest.approx(2.0, rel=0.02)
    assert out["fit"]["b_crit"] > 0 and out["predicted_b_noise"] == 80.0


def test_a_size_that_never_reaches_the_target_is_reported_so():
    times = {(size, f): (math.inf if size == 1024 else 1.0) for size in (64, 1024) for f in LR_FACTORS}
    report = {"recommended_batch_size": 1024, "throughput_batch_size": 1024, "results": []}
    out = summarise(runs_for(times), report)
    assert out["per_size"][1024] == {"reached": False, "seconds": math.inf}
    assert out["recommended_time_vs_fastest"] is None and not out["within_15_percent"]


def test_the_data_sets():
    co2 = co2_series()
    assert co2.shape == (2283,) and np.isfinite(co2).all()  # weekly changes of 2284 weeks, gaps filled
    train, val = split(co2)
    assert len(train) == int(0.8 * len(co2)) and abs(train.mean()) < 1e-5 and abs(train.std() - 1) < 1e-4
    quiet, noisy = ar1_series(0.1), ar1_series(2.0)
    assert noisy.std() > 3 * quiet.std()  # the noise is what the parameter sets; the cycle is the same


@pytest.mark.parametrize("argv,fragment", [
    (["--datasets", "co3"], "argument --datasets: must be co2, ar1 or co2,ar1, got 'co3'"),
    (["--target-fraction", "1.5"], "argument --target-fraction: must be a number in (0, 1), got '1.5'"),
    (["--noise-levels", "0.1,-1"], "argument --noise-levels: must be a number > 0, got '-1'"),
    (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got '0'"),
    (["--adaptive-start", "half"], "argument --adaptive-start: invalid choice: 'half'"),
    (["--adaptive-every", "0"], "argument --adaptive-every: must be an integer >= 1, got '0'"),
])
def test_bad_options_name_the_option_and_value(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


def test_the_adaptive_options():
    assert build_parser().parse_args([]).adaptive is True  # on by default
    args = build_parser().parse_args(["--no-adaptive", "--adaptive-start", "quarter", "--adaptive-every", "5"])
    assert (args.adaptive, args.adaptive_start, args.adaptive_every) == (False, "quarter", 5)


def test_the_adaptive_start_is_the_smallest_size_or_a_quarter_of_the_recommendation():
    assert adaptive_start(SIZES, {"recommended_batch_size": 256}, "smallest") == 4
    assert adaptive_start(SIZES, {"recommended_batch_size": 256}, "quarter") == 64
    assert adaptive_start(SIZES, {"recommended_batch_size": 8}, "quarter") == 4  # within the swept range
    assert adaptive_start(SIZES, {"recommended_batch_size": None}, "quarter") == 4  # no recommendation


def adaptive_runs(seconds_by_scale_lr_and_factor, seeds=3):
    runs = []
    for (scale_lr, factor), seconds in seconds_by_scale_lr_and_factor.items():
        for seed in range(seeds):
            reached = math.isfinite(seconds)
            runs.append({"adaptive": True, "scale_lr": scale_lr, "lr_factor": factor, "lr": 1e-4 * factor,
                         "batch_size": 4, "seed": seed, "reached": reached, "steps": 120, "samples": 6000,
                         "seconds": seconds + 0.01 * seed, "best_val_loss": 0.5, "final_batch_size": 256,
                         "final_lr": 1e-3, "history": [[50, 64], [100, 256]]})
    return runs


def test_the_adaptive_summary_keeps_the_best_start_lr_and_compares_with_the_best_fixed_size():
    fixed = {"measured_fastest": 64, "per_size": {64: {"reached": True, "seconds": 0.5}}}
    times = {(True, 0.5): 2.0, (True, 1.0): 0.6, (True, 2.0): math.inf,
             (False, 0.5): math.inf, (False, 1.0): math.inf, (False, 2.0): math.inf}
    out = summarise_adaptive(adaptive_runs(times), fixed)
    assert out["best_fixed_batch_size"] == 64 and out["best_fixed_seconds"] == 0.5
    on = out["runs_by_scale_lr"]["scale_lr"]
    assert on["reached"] and on["lr_factor"] == 1.0 and on["seconds"] == pytest.approx(0.61)
    assert on["vs_best_fixed"] == pytest.approx(0.61 / 0.5) and on["trajectories"][0] == "4 -> 64@50 -> 256@100"
    off = out["runs_by_scale_lr"]["fixed_lr"]
    assert not off["reached"] and off["vs_best_fixed"] is None and off["best_val_loss"] == 0.5


def test_an_adaptive_run_grows_the_batch_size_and_counts_every_sample():
    task = Task(*split(ar1_series(2.0, length=3000)))
    run = task.run_adaptive(4, 64, 1e-3, seed=0, scale_lr=True, every=10, max_samples=1500, max_seconds=60)
    assert not run["reached"] and run["samples"] >= 1500  # no target: runs to the sample budget
    sizes = [4] + [b for _, b in run["history"]]
    assert run["history"] and sizes == sorted(sizes) and sizes[-1] <= 64 and run["final_batch_size"] == sizes[-1]
    assert all(s % 10 == 0 for s, _ in run["history"])  # decisions every 10 steps
    assert run["final_lr"] >= 1e-3  # the AdaScale gain is >= 1
    # The samples are the batches' sizes summed: 4 each step before the first change, and so on.
    steps_at = [0] + [s for s, _ in run["history"]] + [run["steps"]]
    assert run["samples"] == sum((b - a) * size for a, b, size in zip(steps_at, steps_at[1:], sizes))
    same = task.run_adaptive(4, 64, 1e-3, seed=0, scale_lr=False, every=10, max_samples=1500, max_seconds=60)
    assert same["final_lr"] == 1e-3  # scale_lr=False leaves the learning rate alone


def test_an_adaptive_run_stops_at_the_target():
    task = Task(*split(ar1_series(0.5, length=3000)))
    run = task.run_adaptive(16, 64, 1e-3, seed=0, scale_lr=True, target=math.inf, max_samples=10_000, max_seconds=5)
    assert run["reached"] and run["steps"] == 4 and run["samples"] == 64  # evaluated after 64 samples: reached


def _docs_adaptive_blocks():
    """The ```py blocks of docs/batch-size.md's last section (``py``: tests/test_noise.py counts its ```python ones)."""
    import re

    page = (Path(ROOT) / "docs" / "batch-size.md").read_text()
    section = page[page.index("## Growing the batch size while training"):]
    return re.findall(r"^```py\n(.*?)^```", section, flags=re.M | re.S)


@pytest.mark.parametrize("index", [0, pytest.param(1, marks=pytest.mark.slow)])  # 1: Lightning, ~15 s
def test_the_docs_adaptive_examples_run(index, tmp_path, monkeypatch):
    blocks = _docs_adaptive_blocks()
    assert len(blocks) == 2
    if "lightning" in blocks[index]:
        pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[index], f"docs/batch-size.md adaptive block {index}", "exec"), {"__name__": "__docs__"})


@pytest.mark.slow
def test_a_tiny_convergence_run_writes_its_results(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.convergence", "--datasets", "ar1", "--batch-sizes", "16,256",
                           "--seeds", "1", "--noise-levels", "0.1,2", "--max-seconds", "3", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "convergence.json").read_text())
    ar1 = data["data_sets"]["ar1"]
    assert ar1["prediction"]["recommended_by"] == "goodput" and ar1["summary"]["recommended"] in (16, 256)
    assert {run["batch_size"] for run in ar1["runs"]} == {16, 256} and len(ar1["runs"]) == 2 * len(LR_FACTORS)
    assert ar1["summary"]["measured_fastest"] in (16, 256)
    adaptive = ar1["adaptive"]  # on by default: from the smallest size, up to the largest, AdaScale lr on and off
    assert (adaptive["start_batch_size"], adaptive["max_batch_size"], adaptive["every"]) == (16, 256, 50)
    assert len(adaptive["runs"]) == 2 * len(LR_FACTORS) and {r["scale_lr"] for r in adaptive["runs"]} == {True, False}
    assert all(16 <= r["final_batch_size"] <= 256 for r in adaptive["runs"])
    assert set(adaptive["summary"]["runs_by_scale_lr"]) == {"scale_lr", "fixed_lr"}
    assert adaptive["summary"]["best_fixed_batch_size"] == ar1["summary"]["measured_fastest"]
    assert "adaptive from 16 up to 256" in proc.stdout
    levels = data["ar1_noise_levels"]
    assert [level["noise"] for level in levels] == [0.1, 2.0]
    assert levels[1]["b_simple"] > levels[0]["b_simple"]  # noisier data, larger noise scale
    assert (tmp_path / "time-to-target.png").stat().st_size > 5_000 and (tmp_path / "bench-ar1" / "goodput.png").exists()
