"""The harness end to end, as a user runs it: real child processes, real training steps."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*argv, timeout):
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_quick_run_writes_every_output(tmp_path):
    proc = bench("--quick", "--device", "cpu", "--out", str(tmp_path), timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "recommended batch size" in proc.stdout and "Traceback" not in proc.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    sizes = [r["batch_size"] for r in report["results"]]
    assert sizes == [1, 4, 16, 64, 256, 1024]  # --quick: every other power of two
    assert all(r["status"] == "ok" and r["train_samples_per_sec"] > 0 for r in report["results"])
    assert report["oom_boundary"]["largest_ok"] is None and report["oom_boundary"]["smallest_oom"] is None
    assert report["recommended_batch_size"] in sizes
    assert report["baseline"] and report["hardware"]["memcpy_bytes_per_sec"] > 0
    for name in ("results.csv", "throughput.png", "memory.png", "goodput.png"):
        assert (tmp_path / name).stat().st_size > 0
    # After the sweep, the noise scale over a short training picks the size of highest goodput.
    noise = report["noise_scale"]
    assert noise["b_simple"] > 0 and noise["at_step"][0] == 0 and len(noise["b_simple_over_training"]) >= 2
    assert report["recommended_by"] == "goodput" and report["throughput_batch_size"] in sizes
    best = max(report["results"], key=lambda r: r["goodput"])
    assert report["recommended_batch_size"] == best["batch_size"]
    assert "chosen by goodput" in proc.stdout and "gradient noise scale" in proc.stdout


@pytest.mark.slow
def test_a_memory_limit_is_found_as_a_boundary(tmp_path):
    proc = bench("--device", "cpu", "--batch-sizes", "1024,65536", "--memory-limit", "600MiB",
                 "--series-length", "70000", "--steps", "3", "--no-baseline", "--tolerance", "0.25",
                 "--out", str(tmp_path), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    boundary = report["oom_boundary"]
    status = {r["batch_size"]: r["status"] for r in report["results"]}
    assert boundary["reached"] and status[boundary["largest_ok"]] == "ok" and status[boundary["smallest_oom"]] == "oom"
    assert boundary["smallest_oom"] - boundary["largest_ok"] <= 0.25 * boundary["largest_ok"]
    assert report["recommended_batch_size"] <= 0.8 * boundary["largest_ok"]
