"""Faults of ``python -m bench`` as a user meets them: the real command, real trial processes, real signals.

The model here misbehaves only at the batch sizes named in ``FAULTS``
(``"4:segfault,32:hang"``), inside its forward pass, so the harness's own check
(two windows) passes and the fault happens in a trial's training step.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAULTY_MODEL = """
    import ctypes, os, subprocess, time
    import torch

    FAULTS = dict(item.split(":") for item in filter(None, os.environ.get("FAULTS", "").split(",")))

    class Faulty(torch.nn.Module):
        def __init__(self, window, horizon, n_features, n_targets):
            super().__init__()
            self.linear = torch.nn.Linear(window * n_features, horizon * n_targets)
            self.out = (horizon, n_targets)

        def forward(self, x):
            fault = FAULTS.get(str(x.shape[0]))
            if fault == "segfault":
                ctypes.string_at(0)  # a real invalid read: SIGSEGV
            if fault == "hang":
                subprocess.Popen(["sleep", "600"])  # a grandchild, which must go too
                time.sleep(600)
            return self.linear(x.flatten(1)).view(x.shape[0], *self.out)

    def build(window, horizon, n_features, n_targets):
        return Faulty(window, horizon, n_features, n_targets)
"""


def start_bench(tmp_path, faults, *argv):
    (tmp_path / "faulty_model.py").write_text(textwrap.dedent(FAULTY_MODEL))
    env = dict(os.environ, FAULTS=faults,
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "bench", "--device", "cpu", "--model", "faulty_model:build", "--quick",
               "--no-baseline", "--series-length", "5000", *argv]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_hung_trial(harness: subprocess.Popen, timeout: float = 90) -> list[psutil.Process]:
    """The harness's descendants once its trial hangs (its ``sleep`` grandchild exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert harness.poll() is None, harness.communicate()
        try:
            descendants = psutil.Process(harness.pid).children(recursive=True)
            if any(p.name() == "sleep" for p in descendants):
                return descendants
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.1)
    harness.kill()
    pytest.fail(f"no hung trial within {timeout} s: {harness.communicate()}")


def kill_leftovers(processes: list[psutil.Process]) -> None:
    for p in processes:
        if alive(p.pid):
            p.kill()


def gone_within(processes: list[psutil.Process], seconds: float) -> list[int]:
    """The pids still alive after waiting up to ``seconds`` for them to go."""
    deadline = time.monotonic() + seconds
    while any(alive(p.pid) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p.pid for p in processes if alive(p.pid)]


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_leaves_no_process_behind(tmp_path, signum):
    harness = start_bench(tmp_path, "4:hang", "--batch-sizes", "4")
    descendants: list[psutil.Process] = []
    try:
        descendants = wait_for_hung_trial(harness)
        assert any("bench.trial" in " ".join(p.cmdline()) for p in descendants)
        harness.send_signal(signum)
        _, err = harness.communicate(timeout=15)
        assert harness.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
        assert gone_within(descendants, 5) == []  # the trial and its own child
    finally:
        harness.kill()
        kill_leftovers(descendants)


@pytest.mark.slow
def test_a_killed_harness_takes_its_trial_with_it(tmp_path):
    """SIGKILL cannot be handled: the kernel kills the trial (PR_SET_PDEATHSIG), so a hung one never lingers."""
    harness = start_bench(tmp_path, "4:hang", "--batch-sizes", "4")
    descendants: list[psutil.Process] = []
    try:
        descendants = wait_for_hung_trial(harness)
        trial = [p for p in descendants if "bench.trial" in " ".join(p.cmdline())]
        assert len(trial) == 1
        harness.kill()
        harness.communicate(timeout=15)
        assert gone_within(trial, 5) == []
    finally:
        harness.kill()
        kill_leftovers(descendants)  # what the trial started itself is not covered


@pytest.mark.slow
def test_a_crash_and_a_hang_are_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "out"
    harness = start_bench(tmp_path, "4:segfault,32:hang", "--batch-sizes", "1,4,16,32,64", "--trial-timeout", "8",
                          "--out", str(out))
    stdout, stderr = harness.communicate(timeout=240)
    assert harness.returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    status = {r["batch_size"]: r["status"] for r in report["results"]}
    assert status == {1: "ok", 4: "crash", 16: "ok", 32: "timeout", 64: "ok"}
    errors = {r["batch_size"]: r["error"] for r in report["results"]}
    assert "SIGSEGV" in errors[4] and "--trial-timeout 8" in errors[32]
    assert report["recommended_batch_size"] in (1, 16, 64)
    assert "failed trials" in stdout and "4 crash" in stdout and "32 timeout" in stdout
    # The noise scale is measured training at 32, which hangs too: the throughput choice stands, with the reason.
    assert report["recommended_by"] == "throughput" and "--trial-timeout 8" in report["recommended_by_reason"]
    assert sorted(os.listdir(out / "trial-logs")) == ["noise-scale.log", "trial-32-sweep.log", "trial-4-sweep.log"]
    assert not [p for p in psutil.process_iter(["name"]) if p.info["name"] == "sleep" and alive(p.pid)
                and "600" in " ".join(p.cmdline())]
