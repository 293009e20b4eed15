import csv
import json

import pytest
from rich.console import Console

from bench.config import BenchConfig
from bench.harness import build_report
from bench.report import boundary_text, rate, summary, table, write_all
from bench.search import search

HARDWARE = {
    "cpu": "Test CPU", "cores": {"logical": 2, "physical": 1, "usable": 2}, "memory_bytes": 8 * 2**30,
    "memory_available_bytes": 6 * 2**30, "platform": "test", "python": "3.11",
    "versions": {"fastbatch": "0.1.0", "torch": "2.13.0", "numba": "0.68.1", "numpy": "2.4.6"},
    "numba_threading_layer": "omp", "numba_threads": 2, "torch_threads": 2, "gpu": None,
    "memcpy_bytes_per_sec": 8e9, "h2d_pinned_bytes_per_sec": None,
}
DATASET = {"source": "synthetic", "series_length": 100_000, "features": 8, "dtype": "float32",
           "n_windows": 99_929, "bytes_per_window": 2304, "model_parameters": 1000}


def fake_trial(size, role):
    if size > 3000:
        return {"batch_size": size, "status": "oom", "error": "RuntimeError: can't allocate memory"}
    return {
        "batch_size": size, "status": "ok", "loader_samples_per_sec": 1e6 * size / (size + 8),
        "loader_bytes_per_sec": 2304e6 * size / (size + 8), "train_samples_per_sec": 5e4 * size / (size + 64),
        "data_wait_s": 0.01, "compute_s": 0.09, "peak_host_bytes": 400 * 2**20 + 20_000 * size,
        "model_peak_bytes": 400 * 2**20 + 20_000 * size, "memory_capacity_bytes": 400 * 2**20 + 20_000 * 3000.5,
        "peak_device_bytes": None, "peak_device_reserved_bytes": None,
        **({"baseline_samples_per_sec": 1e5, "baseline_workers": 2} if role == "sweep" else {}),
    }


@pytest.fixture
def report():
    out = search(fake_trial, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    return build_report(BenchConfig(memory_limit=2**30, memory_limit_from="user"), HARDWARE, DATASET,
                        out.results, out.boundary)


def test_results_json_keeps_the_contract(report, tmp_path):
    paths = write_all(report, str(tmp_path))
    data = json.loads((tmp_path / "results.json").read_text())
    assert {"hardware", "config", "results", "baseline", "oom_boundary", "recommended_batch_size"} <= set(data)
    for row in data["results"]:
        assert {"batch_size", "status", "loader_samples_per_sec", "train_samples_per_sec", "peak_host_bytes",
                "peak_device_bytes"} <= set(row)
        assert row["status"] in ("ok", "oom")
        assert row["peak_device_bytes"] is None  # no GPU
    tried = {row["batch_size"] for row in data["results"]}
    boundary = data["oom_boundary"]
    assert boundary["largest_ok"] in tried and boundary["smallest_oom"] in tried
    assert boundary["largest_ok"] <= 3000 < boundary["smallest_oom"]
    assert data["baseline"] and all(set(b) >= {"batch_size", "samples_per_sec"} for b in data["baseline"])
    assert isinstance(data["recommended_batch_size"], int) and data["recommended_batch_size"] in tried
    assert len(paths) == 4


def test_results_csv_has_a_row_per_trial(report, tmp_path):
    write_all(report, str(tmp_path))
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["batch_size"]) for r in rows] == [r["batch_size"] for r in report["results"]]
    assert rows[0]["peak_device_bytes"] == "" and float(rows[0]["train_samples_per_sec"]) > 0


def test_plots_are_png_files(report, tmp_path):
    write_all(report, str(tmp_path))
    for name in ("throughput.png", "memory.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 300_000


def test_plots_without_a_boundary_or_an_ok_trial(tmp_path):
    out = search(lambda size, role: {"batch_size": size, "status": "oom"}, [1, 2])
    report = build_report(BenchConfig(), HARDWARE, DATASET, out.results, out.boundary)
    assert report["recommended_batch_size"] is None
    write_all(report, str(tmp_path))
    assert (tmp_path / "memory.png").exists()


def test_table_and_summary_show_boundary_and_recommendation(report):
    console = Console(width=200, record=True)
    console.print(table(report))
    for line in summary(report):
        console.print(line)
    text = console.export_text()
    assert "smallest oom" in text and "largest ok" in text and "recommended" in text
    assert f"recommended batch size: {report['recommended_batch_size']}" in text
    assert "square-root rule" in text


def test_boundary_text_says_why_it_was_not_reached():
    text = boundary_text({"reached": False, "stopped_by": "max_batch_size", "largest_tried_ok": 4096,
                          "predicted_oom_batch_size": 10**6})
    assert "--max-batch-size" in text and "4096" in text and "not tried" in text


def test_rate_formats_samples_per_second():
    assert rate(None) == "-" and rate(950) == "950" and rate(123_456) == "123k" and rate(2.5e6) == "2.5M"


def test_summary_lists_failed_trials_with_their_errors(report):
    def trial(size, role):
        if size == 4:
            return {"batch_size": 4, "status": "crash", "error": "killed by SIGSEGV: Segmentation fault"}
        return fake_trial(size, role)

    out = search(trial, [1, 2, 4, 8])
    crashed = build_report(BenchConfig(), HARDWARE, DATASET, out.results, out.boundary)
    lines = [line for line in summary(crashed) if line.startswith("failed trials")]
    assert len(lines) == 1 and "4 crash (killed by SIGSEGV: Segmentation fault)" in lines[0]
    assert crashed["recommended_batch_size"] in (1, 2, 8)
    # An out-of-memory trial is the boundary, not a failure.
    assert not [line for line in summary(report) if line.startswith("failed trials")]
