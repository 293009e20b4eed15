import json
import os
import subprocess
import sys

import pytest

from bench import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_profile_names_the_machine_and_measures_its_limits():
    profile = hardware.profile("cpu", quick=True)
    json.dumps(profile)  # JSON-ready as it is
    assert profile["cpu"] and profile["cores"]["usable"] >= 1 and profile["memory_bytes"] > 2**28
    assert set(profile["versions"]) == {"fastbatch", "torch", "numba", "numpy"}
    assert profile["numba_threading_layer"]
    # Any machine copies memory at more than 100 MB/s and less than 10 TB/s.
    assert 1e8 < profile["memcpy_bytes_per_sec"] < 1e13
    assert profile["h2d_pinned_bytes_per_sec"] is None


def test_memcpy_bandwidth_of_a_small_buffer():
    assert hardware.memcpy_bandwidth(1 << 20, repeats=2) > 1e8


def _not_here(*args, **kwargs):
    raise AssertionError("measured in the harness process")


def test_the_profile_is_measured_in_a_child_process(tmp_path, monkeypatch):
    # Whatever the measurements leave behind (on a GPU: a CUDA context, cached
    # device memory, pinned buffers) must not stay in the harness for the sweep.
    for name in ("memcpy_bandwidth", "h2d_bandwidth", "threading_layer", "gpu_info", "profile"):
        monkeypatch.setattr(hardware, name, _not_here)
    profile = hardware.profile_in_child("cpu", quick=True, timeout=120, workdir=str(tmp_path))
    assert "error" not in profile, profile.get("error")
    assert 1e8 < profile["memcpy_bytes_per_sec"] < 1e13 and profile["numba_threading_layer"]


def test_the_harness_profiles_in_a_child(tmp_path, monkeypatch):
    from rich.console import Console

    from bench import harness, trial
    from bench.config import BenchConfig

    monkeypatch.setattr(hardware, "profile", _not_here)
    monkeypatch.setattr(trial, "run_trial", lambda config, size, path, **kw: {
        "batch_size": size, "status": "ok", "loader_samples_per_sec": 1.0, "train_samples_per_sec": 1.0,
        "role": kw["role"]})
    prepared = harness.prepare(BenchConfig(series_length=500, features=2, batch_sizes=[4], quick=True))
    try:
        report = harness.run(prepared, Console(file=open(os.devnull, "w")))
    finally:
        harness.cleanup(prepared)
    assert report["hardware"]["memcpy_bytes_per_sec"] > 1e8


def test_a_profile_that_fails_leaves_the_machine_described_and_says_why(tmp_path):
    from bench.report import summary

    profile = hardware.profile_in_child("cpu", quick=True, timeout=0.01, workdir=str(tmp_path))
    assert profile["cpu"] and profile["cores"]["usable"] >= 1 and profile["memcpy_bytes_per_sec"] is None
    assert "no result within --trial-timeout 0.01 s" in profile["error"]
    report = {"hardware": profile, "config": {}, "oom_boundary": {"largest_ok": None, "smallest_oom": None,
                                                                 "reached": False, "stopped_by": "batch_sizes"},
              "results": []}
    assert any("limits: not measured (profiling the hardware in a child process failed" in line
               for line in summary(report))


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_profiling_a_gpu_leaves_the_harness_without_a_cuda_context(tmp_path):
    script = ("import sys, torch; from bench import hardware; "
              f"p = hardware.profile_in_child('cuda', quick=True, timeout=120, workdir={str(tmp_path)!r}); "
              "assert p['h2d_pinned_bytes_per_sec'] > 1e8, p; "
              "assert not torch.cuda.is_initialized(); print('clean')")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr
