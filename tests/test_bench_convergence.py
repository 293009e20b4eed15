"""``python -m bench.convergence``: the fit of steps against batch size, the summary of runs, and a smoke run."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.convergence import LR_FACTORS, ar1_series, build_parser, co2_series, split, summarise
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
])
def test_bad_options_name_the_option_and_value(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


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
    levels = data["ar1_noise_levels"]
    assert [level["noise"] for level in levels] == [0.1, 2.0]
    assert levels[1]["b_simple"] > levels[0]["b_simple"]  # noisier data, larger noise scale
    assert (tmp_path / "time-to-target.png").stat().st_size > 5_000 and (tmp_path / "bench-ar1" / "goodput.png").exists()
