"""What machine this is, and the physical limits a loader runs into on it.

:func:`profile` returns a JSON-ready dict: processor, cores, memory, GPU,
library versions, Numba's threading layer, and two measured limits, the host
memcpy bandwidth and (with a GPU) the pinned host-to-device bandwidth.  The
loader's GB/s in the results are read against these.

The harness calls :func:`profile_in_child`: measuring the host-to-device
bandwidth makes a CUDA context and leaves device memory in torch's caching
allocator and pinned host buffers behind; in the harness process they would
stay for the whole sweep and move every trial's out-of-memory boundary.
``python -m bench.hardware DEVICE OUT.json [--quick]`` is that child.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np


def cpu_model() -> str:
    """The processor's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> dict[str, Any]:
    import psutil

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {"logical": os.cpu_count(), "physical": psutil.cpu_count(logical=False), "usable": usable}


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def gpu_info(device: str | None = None) -> dict[str, Any] | None:
    """Name, memory, capability, driver and CUDA version of ``device`` (default: the current GPU), or ``None``."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device or "cuda").index
    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": props.name,
        "memory_bytes": props.total_memory,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "count": torch.cuda.device_count(),
        "driver": _driver_version(),
        "cuda": torch.version.cuda,
    }


def threading_layer() -> str:
    """Numba's threading layer; it is chosen on the first parallel kernel call, so make one."""
    import numba

    import fastbatch as fb

    fb.SlidingWindows(np.zeros((8, 1), dtype=np.float32), window=2).gather(np.arange(2))
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel ran (FASTBATCH_DISABLE_JIT)
        return "none (JIT disabled)"


def memcpy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Host memcpy, bytes copied per second (best of ``repeats``), over buffers far larger than the caches."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch: page faults are not bandwidth
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def h2d_bandwidth(device: str, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Pinned host-to-device copy, bytes per second (best of ``repeats``)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def _static_profile() -> dict[str, Any]:
    """What can be read without measuring, initialising CUDA or running a kernel."""
    import numba
    import psutil
    import torch

    import fastbatch

    memory = psutil.virtual_memory()
    return {
        "cpu": cpu_model(),
        "cores": _cores(),
        "memory_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {"fastbatch": fastbatch.__version__, "torch": torch.__version__, "numba": numba.__version__,
                     "numpy": np.__version__},
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "torch_threads": torch.get_num_threads(),
        "executable": sys.executable,
    }


def profile(device: str = "cpu", *, quick: bool = False) -> dict[str, Any]:
    """The hardware profile and its measured limits, as a JSON-ready dict."""
    size = (64 if quick else 256) << 20
    out = _static_profile()
    out.update(
        numba_threading_layer=threading_layer(),
        gpu=gpu_info(device if device.startswith("cuda") else None),
        memcpy_bytes_per_sec=memcpy_bandwidth(size),
        h2d_pinned_bytes_per_sec=h2d_bandwidth(device, size) if device.startswith("cuda") else None,
    )
    return out


def profile_in_child(device: str, *, quick: bool, timeout: float, workdir: str) -> dict[str, Any]:
    """:func:`profile`, measured in a child process so that this one holds no CUDA context or buffers.

    A child that fails or outlasts ``timeout`` gives the profile without its
    measurements, with ``error`` saying why: the sweep does not depend on it.
    """
    from bench.trial import _last_line, _read_json, _tail, run_child

    path = os.path.join(workdir, "hardware.json")
    log = os.path.join(workdir, "hardware.log")
    command = [sys.executable, "-m", "bench.hardware", device, path] + (["--quick"] if quick else [])
    returncode, killed = run_child(command, log, timeout)
    found = _read_json(path) if returncode == 0 else None
    if found is not None:
        return found
    why = (f"no result within --trial-timeout {timeout:g} s; killed" if killed
           else f"exited with code {returncode}: {_last_line(_tail(log)) or 'no message'}")
    return {**_static_profile(), "numba_threading_layer": None, "gpu": None, "memcpy_bytes_per_sec": None,
            "h2d_pinned_bytes_per_sec": None, "error": f"profiling the hardware in a child process failed: {why}"}


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.hardware DEVICE OUT.json [--quick]``: write :func:`profile` to ``OUT.json``."""
    args = sys.argv[1:] if argv is None else argv
    quick = "--quick" in args
    device, path = [a for a in args if a != "--quick"]
    found = profile(device, quick=quick)
    with open(path + ".tmp", "w") as f:
        json.dump(found, f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
