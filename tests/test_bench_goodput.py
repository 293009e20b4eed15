"""Goodput in ``python -m bench``: the noise scale measured in a child, statistical efficiency, the recommendation."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console

from bench import cli
from bench.config import BenchConfig
from bench.data import write_synthetic
from bench.goodput import adascale_gain, efficiency, learning_rates, parse_reference_lr
from bench.harness import Prepared, _noise_scale, build_report
from bench.noise_run import checkpoints, measure_in_child, summarise
from bench.report import summary, table, write_all
from bench.search import search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARDWARE = {
    "cpu": "Test CPU", "cores": {"logical": 2, "physical": 1, "usable": 2}, "memory_bytes": 8 * 2**30,
    "versions": {"fastbatch": "0.1.0", "torch": "2.13.0", "numba": "0.68.1", "numpy": "2.4.6"},
    "numba_threading_layer": "omp", "gpu": None, "memcpy_bytes_per_sec": 8e9, "h2d_pinned_bytes_per_sec": None,
}
DATASET = {"source": "synthetic", "series_length": 100_000, "features": 8, "dtype": "float32",
           "n_windows": 99_929, "bytes_per_window": 2304, "model_parameters": 1000}
SIZES = [1, 4, 16, 64, 256, 1024, 4096]


def saturating(size, role="sweep", oom_above=None):
    """A trial whose end-to-end rate saturates: 1e5 * B / (B + 64) samples/s."""
    if oom_above is not None and size > oom_above:
        return {"batch_size": size, "status": "oom", "error": "RuntimeError: can't allocate memory"}
    return {"batch_size": size, "status": "ok", "train_samples_per_sec": 1e5 * size / (size + 64),
            "loader_samples_per_sec": 1e6, "data_wait_s": 0.0, "compute_s": 0.1, "peak_host_bytes": 2**28 + 1000 * size,
            "model_peak_bytes": 2**28 + 1000 * size, "memory_capacity_bytes": 2**28 + 1000 * 5000}


def noise(b_simple=100.0, grad_sq=0.01):
    return {"b_simple": b_simple, "interval": [0.9 * b_simple, 1.1 * b_simple], "samples": 4096,
            "trace_cov": b_simple * grad_sq, "grad_sq": grad_sq, "used_step": 500,
            "at_step": [0, 62, 125, 250, 500], "b_simple_over_training": [20.0, 40.0, 60.0, 80.0, b_simple],
            "interval_over_training": [None] * 5, "loss_over_training": [0.6, 0.1, 0.05, 0.03, 0.02],
            "errors": [None] * 5, "train_batch_size": 32, "lr": 1e-3}


def report_for(b_noise, sizes=SIZES, oom_above=None, **config):
    out = search(lambda size, role: saturating(size, role, oom_above), sizes)
    return build_report(BenchConfig(**config), HARDWARE, DATASET, out.results, out.boundary,
                        noise=None if b_noise is None else noise(b_noise), noise_reason="--no-goodput")


def test_efficiency_is_one_at_the_smallest_size_and_falls_as_the_batch_outgrows_the_noise():
    assert efficiency(100, 1, smallest=1) == 1
    assert efficiency(100, 102, smallest=1) == pytest.approx(0.5)  # (100 + 1) / (100 + 102)
    assert efficiency(1e9, 4096, smallest=1) == pytest.approx(1, rel=1e-5)  # pure noise: every sample counts


@pytest.mark.parametrize("b_noise", [3.0, 100.0, 3000.0])
def test_the_recommendation_is_the_size_of_highest_goodput(b_noise):
    report = report_for(b_noise)
    by_hand = {b: 1e5 * b / (b + 64) * (b_noise + 1) / (b_noise + b) for b in SIZES}
    assert report["recommended_by"] == "goodput" and report["recommended_by_reason"] is None
    assert report["recommended_batch_size"] == max(by_hand, key=by_hand.get)
    for row in report["results"]:
        assert row["goodput"] == pytest.approx(by_hand[row["batch_size"]], rel=0.02)  # the smoothing's median
        assert row["predicted_time_vs_best"] >= 1


def test_more_noise_recommends_larger_batches_and_the_throughput_choice_stays_beside_it():
    chosen = [report_for(b)["recommended_batch_size"] for b in (3.0, 100.0, 3000.0)]
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1]
    report = report_for(3.0)
    assert report["throughput_batch_size"] == 1024  # the smallest within 95 % of the best rate
    assert report["recommended_batch_size"] < report["throughput_batch_size"]
    g = report["goodput"]
    rows = {r["batch_size"]: r for r in report["results"]}
    assert g["throughput_choice_slower_by"] == pytest.approx(rows[1024]["predicted_time_vs_best"] - 1)
    assert g["throughput_choice_slower_by"] > 1  # with B_noise 3, 1024 wastes most of its samples


def test_the_goodput_choice_keeps_the_boundary_margin():
    # With much noise, goodput would go as large as throughput does; the margin still holds.
    report = report_for(1e6, sizes=[16, 64, 256, 1024, 4096], oom_above=3000, tolerance=0.05)
    largest_ok = report["oom_boundary"]["largest_ok"]
    assert largest_ok is not None and report["recommended_batch_size"] <= 0.8 * largest_ok


def test_without_a_measurement_the_throughput_choice_stands_and_says_why(tmp_path):
    report = report_for(None)
    assert report["recommended_by"] == "throughput" and report["recommended_by_reason"] == "--no-goodput"
    assert report["recommended_batch_size"] == report["throughput_batch_size"] == 1024
    assert report["noise_scale"] is None and all(r["goodput"] is None for r in report["results"])
    paths = write_all(report, str(tmp_path))
    assert not (tmp_path / "goodput.png").exists() and len(paths) == 4
    assert any("throughput alone (goodput not measured: --no-goodput)" in line for line in summary(report))


def test_results_json_holds_the_goodput_contract(tmp_path):
    write_all(report_for(100.0), str(tmp_path))
    data = json.loads((tmp_path / "results.json").read_text())
    assert {"b_simple", "interval", "samples", "at_step", "b_simple_over_training"} <= set(data["noise_scale"])
    assert len(data["noise_scale"]["at_step"]) == len(data["noise_scale"]["b_simple_over_training"])
    assert data["recommended_by"] == "goodput" and data["throughput_batch_size"] == 1024
    assert data["recommendation"]["rule"].startswith("highest goodput") and "95%" in data["recommendation"]["throughput_rule"]
    assert all({"statistical_efficiency", "goodput"} <= set(row) for row in data["results"])
    png = (tmp_path / "goodput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert "goodput" in header and "statistical_efficiency" in header


def test_the_terminal_shows_noise_goodput_and_both_choices():
    report = report_for(3.0)
    console = Console(width=250, record=True)
    console.print(table(report))
    for line in summary(report):
        console.print(line, highlight=False)
    text = console.export_text()
    assert "goodput/s" in text and "throughput choice" in text and "B_simple: 3" in text
    assert f"throughput alone would choose 1024, predicted to take {1 + report['goodput']['throughput_choice_slower_by']:.2f}x" in text
    assert "AdaScale gain" in text


def test_adascale_gain_runs_from_one_without_noise_to_linear_with_only_noise():
    assert adascale_gain(0.0, 1.0, 32, 1024) == 1
    assert adascale_gain(1.0, 1e-12, 32, 1024) == pytest.approx(32)
    assert adascale_gain(100.0, 1.0, 32, 64) == pytest.approx((100 / 32 + 1) / (100 / 64 + 1))


def test_learning_rates_scale_the_reference_by_each_rule():
    rates = learning_rates(noise(100.0), (2e-3, 32), 128)
    assert rates["linear"] == pytest.approx(8e-3) and rates["sqrt"] == pytest.approx(4e-3)
    assert rates["adascale"] == pytest.approx(2e-3 * (100 / 32 + 1) / (100 / 128 + 1))
    assert learning_rates(None, (2e-3, 32), 128)["adascale"] is None


def test_parse_reference_lr():
    assert parse_reference_lr("1e-3@32") == (1e-3, 32)
    assert parse_reference_lr(" 0.5 @ 7 ") == (0.5, 7)


@pytest.mark.parametrize("value,fragment", [
    ("1e-3", "must be LR@B"), ("x@32", "learning rate must be a finite number > 0, got 'x'"),
    ("0@32", "got '0'"), ("inf@32", "got 'inf'"), ("1e-3@0", "batch size must be an integer >= 1, got '0'"),
    ("1e-3@2.5", "got '2.5'"), ("1e-3@", "got ''"),
])
def test_a_bad_reference_lr_names_option_value_and_form(value, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--reference-lr", value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "--reference-lr" in err and fragment in err and "e.g. 1e-3@32" in err


@pytest.mark.parametrize("argv,fragment", [
    (["--goodput-steps", "0"], "argument --goodput-steps: must be an integer >= 1, got '0'"),
    (["--goodput-seconds", "-1"], "argument --goodput-seconds: must be a number of seconds > 0, got '-1'"),
    (["--reference-lr", "1e-3@5000", "--series-length", "1000"],
     "--reference-lr 0.001@5000: batch size 5000 exceeds the 929 windows"),
])
def test_bad_goodput_options_are_refused_before_any_trial(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


def test_quick_shortens_the_measurement_and_options_override_it():
    quick = cli.config_from_args(cli.build_parser().parse_args(["--quick", "--device", "cpu"]))
    default = cli.config_from_args(cli.build_parser().parse_args(["--device", "cpu"]))
    assert quick.goodput_steps < default.goodput_steps and quick.goodput_seconds < default.goodput_seconds
    given = cli.config_from_args(cli.build_parser().parse_args(
        ["--quick", "--device", "cpu", "--goodput-steps", "7", "--reference-lr", "3e-4@64", "--no-goodput"]))
    assert (given.goodput_steps, given.reference_lr, given.reference_lr_from, given.goodput) == (7, (3e-4, 64), "user", False)


def test_checkpoints_spread_over_training():
    assert checkpoints(500) == [0, 62, 125, 250, 500]
    assert checkpoints(3) == [0, 1, 3] and checkpoints(1) == [0, 1]


def test_the_latest_measured_point_is_used():
    points = [{"step": 0, "b_simple": 10.0, "interval": [9, 11], "samples": 2048, "trace_cov": 1.0, "grad_sq": 0.1,
               "loss": 0.5},
              {"step": 50, "b_simple": 30.0, "interval": [25, None], "samples": 2048, "trace_cov": 3.0,
               "grad_sq": 0.1, "loss": 0.1},
              {"step": 100, "loss": 0.05, "error": "the gradient is estimated as -0.001 <= 0"}]
    out = summarise({"points": points, "train_batch_size": 32, "lr": 1e-3})
    assert out["b_simple"] == 30.0 and out["used_step"] == 50 and out["interval"] == [25, None]
    assert out["b_simple_over_training"] == [10.0, 30.0, None] and out["at_step"] == [0, 50, 100]
    assert summarise({"points": points[2:]}) is None


# -- real child processes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("series") / "series.npy"), 20_000, 4)


def test_the_child_trains_and_the_noise_scale_is_measured_as_the_loss_falls(series, tmp_path):
    config = BenchConfig(window=16, horizon=4, goodput_steps=40, goodput_seconds=60, quick=True, trial_timeout=120)
    result = measure_in_child(config, series, str(tmp_path))
    assert "error" not in result, result
    out = summarise(result)
    assert out["at_step"] == [0, 5, 10, 20, 40] and out["used_step"] == 40 and out["stopped_by"] == "steps"
    assert all(b is not None and b > 0 for b in out["b_simple_over_training"])
    losses = out["loss_over_training"]
    assert losses[-1] < 0.5 * losses[0]
    low, high = out["interval"]
    assert low <= out["b_simple"] <= high and out["samples"] == 8 * 256


def test_the_time_budget_ends_the_training_with_a_last_measurement(series, tmp_path):
    config = BenchConfig(window=16, horizon=4, goodput_steps=10**7, goodput_seconds=0.5, quick=True,
                         trial_timeout=120)
    out = summarise(measure_in_child(config, series, str(tmp_path)))
    assert out["stopped_by"] == "seconds" and 0 < out["used_step"] < 10**7
    assert out["at_step"][-1] == out["used_step"] and out["train_seconds"] < 5


PARAMETERLESS = """
    import torch

    class Persistence(torch.nn.Module):
        def __init__(self, horizon):
            super().__init__()
            self.horizon = horizon

        def forward(self, x):
            return x[:, -1:].expand(-1, self.horizon, -1)

    def build(window, horizon, n_features, n_targets):
        return Persistence(horizon)
"""


def test_a_model_without_parameters_is_refused_by_the_child_and_named_by_the_harness(series, tmp_path, monkeypatch):
    (tmp_path / "persistence.py").write_text(textwrap.dedent(PARAMETERLESS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = BenchConfig(window=16, horizon=4, model="persistence:build", goodput_steps=5, trial_timeout=120)
    assert "no trainable parameters" in measure_in_child(config, series, str(tmp_path))["error"]
    prepared = Prepared(config, series, {**DATASET, "model_parameters": 0}, str(tmp_path), [1], "batch_sizes")
    noise_scale, reason = _noise_scale(prepared, [{"status": "ok"}], Console(file=open(os.devnull, "w")))
    assert noise_scale is None and "no parameters" in reason


@pytest.mark.slow
def test_no_goodput_recommends_by_throughput_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "--device", "cpu", "--batch-sizes", "16,64,256",
                           "--series-length", "20000", "--no-baseline", "--steps", "3", "--no-goodput",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["recommended_by"] == "throughput" and report["recommended_by_reason"] == "--no-goodput"
    assert report["noise_scale"] is None and not (tmp_path / "goodput.png").exists()
    assert "goodput not measured: --no-goodput" in proc.stdout
    assert math.isfinite(report["learning_rate"]["sqrt"])
