import os
import signal
import textwrap
import time

import psutil
import pytest

from bench.config import BenchConfig
from bench.data import write_synthetic
from bench.trial import _message, _verdict, is_oom_error, run_trial

# Small enough that a trial is quick, long enough for a batch of 2**16 windows.
SERIES_LENGTH = 70_000


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("series") / "series.npy"), SERIES_LENGTH, 8)


def small_config(**overrides):
    values = dict(steps=3, loader_seconds=0.05, trial_timeout=120, baseline_samples=256)
    values.update(overrides)
    return BenchConfig(**values)


def test_a_trial_measures_loader_training_and_memory(series, tmp_path):
    result = run_trial(small_config(), 32, series, baseline=True, workdir=str(tmp_path))
    assert result["status"] == "ok", result
    assert result["batch_size"] == 32 and result["role"] == "sweep"
    assert result["loader_samples_per_sec"] > 0 and result["loader_bytes_per_sec"] > 0
    # The first step is a warm-up; then at least the remaining 2 steps, more to fill loader_seconds.
    assert result["train_samples"] == 32 * (result["train_steps"] - 1) and result["train_steps"] >= 3
    assert result["train_samples_per_sec"] > 0 and result["compute_s"] > 0 and result["data_wait_s"] >= 0
    # The child's own high-water mark: torch alone is over 100 MiB, and no child here reaches 4 GiB.
    assert 100 * 2**20 < result["peak_host_bytes"] < 4 * 2**30
    assert result["peak_device_bytes"] is None
    assert result["baseline_samples_per_sec"] > 0 and result["baseline_workers"] in (0, 2)


def test_a_tiny_memory_limit_gives_an_oom_verdict(series, tmp_path):
    # 2**16 windows of 72 x 8 float32 are 150 MiB per batch, beyond what 450 MiB leaves after the runtime.
    config = small_config(memory_limit=450 * 2**20, memory_limit_from="user")
    result = run_trial(config, 2**16, series, workdir=str(tmp_path))
    assert result["status"] == "oom", result
    assert result["memory_limit_kind"] == "RLIMIT_DATA"
    assert "memory" in result["error"].lower() or "alloc" in result["error"].lower()
    assert run_trial(config, 16, series, workdir=str(tmp_path))["status"] == "ok"


def test_a_limit_below_the_runtime_itself_is_named(series, tmp_path):
    result = run_trial(small_config(memory_limit=64 * 2**20), 16, series, workdir=str(tmp_path))
    assert result["status"] == "oom" and "own footprint" in result["error"]


def user_module(tmp_path, monkeypatch, body):
    (tmp_path / "user_models.py").write_text(textwrap.dedent(body))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))


@pytest.mark.parametrize("death,status,fragment", [
    ("ctypes.string_at(0)", "crash", "killed by SIGSEGV"),  # a real invalid read
    pytest.param("os.abort()", "crash", "killed by SIGABRT", marks=pytest.mark.slow),
    pytest.param("os._exit(3)", "crash", "exited with code 3", marks=pytest.mark.slow),
    ("os.kill(os.getpid(), signal.SIGKILL)", "oom", "out-of-memory killer"),  # what the OOM killer sends
])
def test_a_child_that_dies_without_a_result_gets_a_verdict(series, tmp_path, monkeypatch, death, status, fragment):
    user_module(tmp_path, monkeypatch, f"""
        import ctypes, os, signal
        def build(window, horizon, n_features, n_targets):
            {death}
    """)
    result = run_trial(small_config(model="user_models:build"), 16, series, workdir=str(tmp_path))
    assert result["status"] == status and fragment in result["error"], result


@pytest.mark.slow
def test_a_slow_child_times_out_and_is_killed_with_its_children(series, tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, f"""
        import subprocess, time
        def build(window, horizon, n_features, n_targets):
            with open({str(tmp_path / "grandchild")!r}, "w") as f:
                f.write(str(subprocess.Popen(["sleep", "600"]).pid))
            time.sleep(600)
    """)
    result = run_trial(small_config(model="user_models:build", trial_timeout=8), 16, series, workdir=str(tmp_path))
    assert result["status"] == "timeout" and "--trial-timeout 8" in result["error"] and result["wall_s"] < 30
    assert not [p for p in psutil.Process().children(recursive=True) if "bench.trial" in " ".join(p.cmdline())]
    grandchild = int((tmp_path / "grandchild").read_text())  # the hang was reached, with a process of its own
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_ctrl_c_kills_the_child(series, tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, """
        import time
        def build(window, horizon, n_features, n_targets):
            time.sleep(600)
    """)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 4.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_trial(small_config(model="user_models:build"), 16, series, workdir=str(tmp_path))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not [p for p in psutil.Process().children(recursive=True) if "bench.trial" in " ".join(p.cmdline())]


def test_ctrl_c_while_the_child_starts_still_kills_it(series, tmp_path, monkeypatch):
    """A Ctrl-C inside ``Popen`` (after the fork) is held until the child can be killed, not lost with it."""
    import subprocess

    from bench import trial

    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the signal's handler runs in here
        return started[-1]

    monkeypatch.setattr(trial.subprocess, "Popen", popen)
    with pytest.raises(KeyboardInterrupt):
        run_trial(small_config(), 16, series, workdir=str(tmp_path))
    assert len(started) == 1 and started[0].poll() is not None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_model_error_is_an_error_not_an_oom(series, tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, """
        def build(window, horizon, n_features, n_targets):
            raise KeyError("no such layer")
    """)
    result = run_trial(small_config(model="user_models:build"), 16, series, workdir=str(tmp_path))
    assert result["status"] == "error" and "no such layer" in result["error"]


@pytest.mark.parametrize("returncode,log,expected", [
    (-signal.SIGKILL, "", "oom"),
    (-signal.SIGSEGV, "Segmentation fault", "crash"),
    (-signal.SIGABRT, "terminate called after throwing an instance of 'std::bad_alloc'", "oom"),
    (1, "OpenBLAS error: Memory allocation still failed after 10 retries, giving up.", "oom"),
    (1, "ImportError: no module named x", "crash"),
])
def test_verdict_of_a_child_without_a_result(returncode, log, expected):
    verdict = _verdict(returncode, log, killed_by_us=False, timeout=10)
    assert verdict["status"] == expected
    assert verdict["error"]


def test_verdict_of_a_killed_child_is_a_timeout():
    assert _verdict(-signal.SIGKILL, "", killed_by_us=True, timeout=10)["status"] == "timeout"


def test_oom_errors_are_recognised():
    import torch

    assert is_oom_error(MemoryError())
    assert is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom_error(OSError(12, "Cannot allocate memory", "site-packages/sympy"))
    try:
        try:
            raise MemoryError
        except MemoryError as inner:
            raise ValueError("while cleaning up") from inner
    except ValueError as outer:
        assert is_oom_error(outer)
    assert not is_oom_error(OSError(2, "No such file or directory"))
    assert not is_oom_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom_error(KeyError("memory"))


# What torch raises (as RuntimeError) when cuBLAS, cuDNN or CUDA itself run out of device memory.
CUDA_OOM_IN_DISGUISE = [
    "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR",
    "cuDNN error: CUDNN_STATUS_NOT_INITIALIZED",
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1",
]


@pytest.mark.parametrize("message", CUDA_OOM_IN_DISGUISE)
def test_cuda_library_failures_under_memory_pressure_are_oom(message):
    assert is_oom_error(RuntimeError(message))
    # A child that died of one (no result written) gets the same verdict, and the line shown is that one.
    verdict = _verdict(1, f"Traceback (most recent call last):\nRuntimeError: {message}\n", False, 10)
    assert verdict["status"] == "oom"
    assert _message(f"Traceback (most recent call last):\n  File x\nRuntimeError: {message}").startswith(
        f"RuntimeError: {message.splitlines()[0]}")


def test_float16_series_are_trained_in_float32(series, tmp_path):
    import numpy as np

    half = tmp_path / "half.npy"
    np.save(half, np.load(series)[:20_000].astype(np.float16))
    result = run_trial(small_config(), 32, str(half), workdir=str(tmp_path))
    assert result["status"] == "ok", result
    # float16 is what the loader moves: 2 bytes a value, (64 + 8) steps x 8 features a window.
    assert result["loader_bytes_per_sec"] == pytest.approx(result["loader_samples_per_sec"] * 72 * 8 * 2)
    assert result["final_loss"] is not None


def test_the_loader_casts_float16_batches_only():
    import numpy as np
    import torch

    import fastbatch as fb
    from bench.trial import make_loader

    for dtype, expected in ((np.float16, torch.float32), (np.float32, torch.float32), (np.float64, torch.float64)):
        windows = fb.SlidingWindows(np.zeros((100, 2), dtype=dtype), window=4, horizon=2)
        loader, move = make_loader(windows, 8, torch.device("cpu"), 2, 0)
        x, y = move(*next(iter(loader)))
        assert x.dtype == y.dtype == expected and x.shape == (8, 4, 2)
