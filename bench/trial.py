"""One batch size, measured in a fresh child process.

The parent calls :func:`run_trial`; it starts ``python -m bench.trial SPEC
RESULT`` and reads the verdict back from the ``RESULT`` file (not stdout, which
a user's model may print to).  In the child, in this order:

1. import torch, fastbatch and the model's module, then put the memory limit
   on the process (``RLIMIT_DATA``, see :func:`apply_memory_limit`);
2. the loader alone: batches for ``loader_seconds``, samples/s and GB/s;
3. ``steps`` training steps, the time split into waiting for data and compute;
4. the peaks: host high-water mark, device ``max_memory_allocated/reserved``;
5. for sweep trials, the ``DataLoader`` baseline at the same batch size (on a
   GPU its batches are copied to the device too, as fastbatch's are).

An out-of-memory error anywhere gives ``status="oom"``; the parent turns a
child that dies (signal, crash, timeout) into a verdict too, so nothing a trial
does can stop the sweep or skew the next trial.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from bench.config import BenchConfig, format_bytes

# Text of the errors allocators give when memory runs out: torch's CPU
# allocator ("can't allocate memory"), CUDA's ("out of memory"), C++
# (std::bad_alloc), OpenBLAS ("Memory allocation still failed") and Python.
OOM_MARKERS = (
    "out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc",
    "memory allocation", "memoryerror", "outofmemoryerror", "failed to map segment",
    "alloc_failed",  # cuBLAS / cuDNN: CUBLAS_STATUS_ALLOC_FAILED, CUDNN_STATUS_ALLOC_FAILED
    # cuBLAS and cuDNN allocate their workspaces and handles on first use, outside
    # torch's caching allocator; when the card is full they fail with these
    # statuses instead of an allocation error.  Near the boundary that is what
    # they mean, and recording them as errors would hide the boundary.
    "cublas_status_not_initialized", "cudnn_status_not_initialized", "cudnn_status_internal_error",
)
# Above this batch size the DataLoader baseline is not measured: its rate is
# flat there (per-window cost), while its time and memory grow with the batch.
BASELINE_MAX_BATCH_SIZE = 16384
# Timed training steps may go on past --steps, up to this many times it, to last loader_seconds.
MAX_STEPS_FACTOR = 50
STDERR_TAIL = 2000
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


# -- parent side ------------------------------------------------------------------------


def run_trial(config: BenchConfig, batch_size: int, data_path: str, *, role: str = "sweep",
              baseline: bool = False, workdir: str | None = None) -> dict[str, Any]:
    """Measure ``batch_size`` in a child process and return its result dict (never raises for the child's failures).

    ``role`` is ``"sweep"`` or ``"boundary"`` (recorded only).  On Ctrl-C the
    child and everything it started are killed before ``KeyboardInterrupt``
    propagates.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="fastbatch-bench-") as tmp:
            return run_trial(config, batch_size, data_path, role=role, baseline=baseline, workdir=tmp)
    stem = os.path.join(workdir, f"trial-{batch_size}-{role}")
    spec = {"config": config.to_dict(), "batch_size": batch_size, "data_path": data_path,
            "role": role, "baseline": baseline and batch_size <= BASELINE_MAX_BATCH_SIZE,
            "harness_pid": os.getpid()}
    with open(stem + ".spec.json", "w") as f:
        json.dump(spec, f)
    result_path = stem + ".result.json"
    if os.path.exists(result_path):
        os.unlink(result_path)
    command = [sys.executable, "-m", "bench.trial", stem + ".spec.json", result_path]
    started = time.perf_counter()
    returncode, killed_by_us = run_child(command, stem + ".log", config.trial_timeout)
    wall = time.perf_counter() - started
    result = _read_json(result_path)
    log_tail = _tail(stem + ".log")
    if result is None:
        result = {"batch_size": batch_size, **_verdict(returncode, log_tail, killed_by_us, config.trial_timeout)}
    elif returncode != 0 and result.get("status") == "ok":
        result["note"] = f"the trial process exited with code {returncode} after measuring"
    result.update(role=role, wall_s=wall)
    return result


def child_env() -> dict[str, str]:
    """The environment of a harness child: it finds this bench package (and the fastbatch beside it) first,
    while its working directory, the harness's, stays first for a user's --model module."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_child(command: list[str], log_path: str, timeout: float) -> tuple[int | None, bool]:
    """Run ``command`` with its output in ``log_path``; return ``(returncode, killed_by_us)``.

    The child and everything it started are killed when it ends, after
    ``timeout`` seconds (``killed_by_us``), and on Ctrl-C before
    ``KeyboardInterrupt`` propagates.
    """
    with open(log_path, "wb") as log:
        proc = None
        try:
            # A session of its own: Ctrl-C reaches only the harness, which then
            # kills the child's whole process group (DataLoader workers included).
            with _signals_held():
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env(),
                                        start_new_session=True)
            returncode = proc.wait(timeout=timeout)
            _kill_group(proc)  # whatever the child left behind (a DataLoader worker) goes with it
            return returncode, False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return proc.returncode, True
        except BaseException:
            if proc is not None:
                _kill_group(proc)
            raise


@contextlib.contextmanager
def _signals_held():
    """Hold a Ctrl-C (or a SIGTERM the harness handles) that comes while the child starts.

    Raised inside ``Popen``, after the fork, it would leave a child that
    nobody kills (in a session of its own, the child never sees the signal):
    held, its handler runs once ``proc`` is known and can be killed.  Only
    handlers set from Python are held; a default action stays as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs handlers, and only it may set them
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: h for s, h in previous.items() if callable(h)}
    held: list[tuple[int, Any]] = []
    for signum in previous:
        signal.signal(signum, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum, frame in held[:1]:
        previous[signum](signum, frame)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - STDERR_TAIL))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _message(text: str) -> str:
    """The line of an error message worth showing: the one about memory if any, else the first."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    memory = [line for line in lines if any(m in line.lower() for m in OOM_MARKERS)]
    # torch prefixes C++ failures with "[enforce fail at file.cpp:N] err == 0." - noise to a user.
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", (memory or lines or [""])[0])[:300]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _verdict(returncode: int | None, log_tail: str, killed_by_us: bool, timeout: float) -> dict[str, Any]:
    """The status of a child that wrote no result: timeout, oom or crash."""
    if killed_by_us:
        return {"status": "timeout", "error": f"no result within --trial-timeout {timeout:g} s; killed"}
    memory = any(marker in log_tail.lower() for marker in OOM_MARKERS)
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        if -returncode == signal.SIGKILL:
            # Nobody here sent it: on Linux that is the kernel's out-of-memory killer (or a cgroup's).
            return {"status": "oom", "error": "killed by SIGKILL, most likely the kernel's out-of-memory killer"}
        status = "oom" if memory else "crash"
        return {"status": status, "error": f"killed by {name}: {_last_line(log_tail) or 'no message'}"}
    status = "oom" if memory else "crash"
    return {"status": status, "error": f"exited with code {returncode}: {_last_line(log_tail) or 'no message'}"}


# -- child side ---------------------------------------------------------------------------


def memory_status() -> dict[str, int]:
    """The ``Vm*`` and ``Rss*`` lines of /proc/self/status in bytes (Linux; else ``{}``)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def peak_host_bytes() -> int:
    """This process's resident-set high-water mark.

    ``VmHWM`` rather than ``getrusage().ru_maxrss``: Linux carries the parent's
    peak over into a child's ``ru_maxrss`` across fork + exec, so a harness
    holding 2 GiB would make every trial look 2 GiB large.
    """
    status = memory_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def apply_memory_limit(limit: int) -> str:
    """Limit this process's private writable memory to ``limit`` bytes; return the rlimit's name.

    ``RLIMIT_DATA`` (Linux >= 4.7 counts every private writable mapping: the
    heap, anonymous ``mmap`` and so every tensor and array) rather than
    ``RLIMIT_AS``: torch, OpenBLAS and Numba reserve several hundred MiB of
    address space they never use, and under ``RLIMIT_AS`` they abort inside
    C/C++ (std::bad_alloc, an OpenBLAS exit) instead of raising.  Under
    ``RLIMIT_DATA`` an allocation past the limit raises ``MemoryError`` or
    torch's "can't allocate memory" error, and a memory-mapped ``--data`` file
    does not count against it.
    """
    import resource

    kind = resource.RLIMIT_DATA if hasattr(resource, "RLIMIT_DATA") else resource.RLIMIT_AS
    _soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(kind, (limit, hard))
    return "RLIMIT_DATA" if kind == getattr(resource, "RLIMIT_DATA", None) else "RLIMIT_AS"


def is_oom_error(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from or while handling, says that memory ran out.

    Memory runs out in many guises under a limit: ``MemoryError``, torch's
    ``OutOfMemoryError`` and "can't allocate memory" ``RuntimeError``, and an
    ``OSError`` with ``ENOMEM`` when a lazy import cannot map its files.
    """
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, MemoryError):
            return True
        if isinstance(error, OSError) and error.errno == errno.ENOMEM:
            return True
        torch = sys.modules.get("torch")
        oom_type = getattr(torch, "OutOfMemoryError", None) if torch else None
        if oom_type is not None and isinstance(error, oom_type):
            return True
        if isinstance(error, (RuntimeError, ImportError)) and any(m in str(error).lower() for m in OOM_MARKERS):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def make_loader(windows, batch_size: int, device, prefetch: int, seed: int):
    """``(loader, move)``: a shuffled ``WindowLoader`` that delivers on ``device``, and what each batch goes through.

    fastbatch gathers float16 data only as float16; ``move`` casts such
    batches to float32, the models' dtype, on the device after the copy, as
    a training loop would.  Other batches are left alone.
    """
    import numpy as np

    import fastbatch as fb

    loader = fb.WindowLoader(windows, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True, device=device,
                             prefetch=prefetch)
    return loader, _to_float32 if np.dtype(windows.dtype) == np.float16 else _same


def _to_float32(x, y):
    return x.float(), y.float()


def _same(x, y):
    return x, y


def _inputs_and_target(batch):
    """``(x, y)`` of a batch; from a table with covariates, the target's history and past covariates, and the target."""
    past = getattr(batch, "past", None)
    return (past, batch.target) if past is not None else (batch[0], batch[1])


class _Batches:
    """Endless batches from a loader: a new epoch starts where one ends, as in training."""

    def __init__(self, loader, move: Callable) -> None:
        self.loader, self.move = loader, move
        self.it = iter(loader)

    def next(self):
        try:
            x, y = _inputs_and_target(next(self.it))
        except StopIteration:
            self.close()
            self.it = iter(self.loader)
            x, y = _inputs_and_target(next(self.it))
        return self.move(x, y)

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()
        self.it = None


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def time_loader(loader, move: Callable, device, seconds: float, min_batches: int = 3) -> tuple[float, int]:
    """``(elapsed_s, samples)`` of drawing batches for about ``seconds`` after one warm-up batch."""
    batches = _Batches(loader, move)
    try:
        batches.next()  # the epoch's order, first kernel call, the prefetch thread's start
        _sync(device)
        samples, count, t0 = 0, 0, time.perf_counter()
        while count < min_batches or time.perf_counter() - t0 < seconds:
            x, _ = batches.next()
            samples += x.shape[0]
            count += 1
        _sync(device)
        return time.perf_counter() - t0, samples
    finally:
        batches.close()


def train(step: Callable, loader, move: Callable, device, steps: int, warmup: int,
          min_seconds: float = 0.0) -> dict[str, Any]:
    """Run ``steps`` training steps; time the ones after ``warmup``, split into waiting for data and compute.

    Small batches take a millisecond a step, too short to time against the
    scheduler's noise: timed steps go on until they add up to ``min_seconds``
    (at most ``MAX_STEPS_FACTOR * steps`` steps).  On a GPU every step ends
    with a synchronisation, so compute is the time the device needed and
    waiting is what the host spent blocked on the loader.
    """
    batches = _Batches(loader, move)
    wait = compute = 0.0
    samples = done = 0
    loss = None
    try:
        while done < steps or (wait + compute < min_seconds and done < MAX_STEPS_FACTOR * steps):
            t0 = time.perf_counter()
            x, y = batches.next()
            t1 = time.perf_counter()
            loss = step(x, y)
            _sync(device)
            t2 = time.perf_counter()
            if done >= warmup:
                wait += t1 - t0
                compute += t2 - t1
                samples += x.shape[0]
            done += 1
            del x, y
    finally:
        batches.close()
    final_loss = float(loss.item()) if loss is not None else None
    return {"data_wait_s": wait, "compute_s": compute, "train_samples": samples, "train_steps": done,
            "train_samples_per_sec": samples / (wait + compute) if wait + compute > 0 else None,
            "final_loss": final_loss if final_loss is None or math.isfinite(final_loss) else None}


def measure(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """The trial itself: fills ``result`` as it goes, so a failure keeps what was measured before it."""
    import torch

    from bench.data import open_windows
    from bench.models import TrainStep, build_model, resolve_factory

    config = BenchConfig.from_dict(spec["config"])
    batch_size = spec["batch_size"]
    torch.manual_seed(config.seed)
    resolve_factory(config.model)  # the user's module is imported before the limit
    device = _prepare_device(config, result)
    _limit_memory(config, device, result)

    windows = open_windows(spec["data_path"], config)
    data = None if config.table is not None else windows.data
    if len(windows) < batch_size:
        raise ValueError(f"batch size {batch_size} exceeds the {len(windows)} windows of the series")
    loader, move = make_loader(windows, batch_size, device, config.prefetch, config.seed)
    sample_bytes = windows.window_nbytes

    elapsed, samples = time_loader(loader, move, device, config.loader_seconds)
    result["loader_samples_per_sec"] = samples / elapsed
    result["loader_bytes_per_sec"] = samples * sample_bytes / elapsed

    model = build_model(config.model, config.window, config.horizon, windows.n_features, windows.n_targets,
                        **config.model_options).to(device)
    step = TrainStep(model, bf16=config.bf16)
    result.update(train(step, loader, move, device, config.steps, config.warmup_steps, config.loader_seconds))
    result["steps"] = config.steps
    result["model_parameters"] = sum(p.numel() for p in model.parameters())
    _record_peaks(result, device)
    result["status"] = "ok"

    del step, model, loader
    gc.collect()
    if spec.get("baseline") and data is not None:
        _measure_baseline(result, data, config, batch_size, device)
    elif spec.get("baseline"):
        result["baseline_error"] = "no DataLoader baseline for a table: it has no per-window Dataset to compare"


def _prepare_device(config: BenchConfig, result: dict[str, Any]):
    """The ``torch.device`` to train on; on a GPU, its memory fraction set and its peaks reset."""
    import torch

    device = torch.device(config.device)
    if device.type != "cuda":
        return device
    if device.index is None:  # set_device and the peak counters want an index
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    torch.cuda.init()
    if config.gpu_memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, device)
    free, total = torch.cuda.mem_get_info(device)
    result["memory_capacity_bytes"] = int(min((config.gpu_memory_fraction or 1.0) * total, free))
    torch.cuda.reset_peak_memory_stats(device)
    return device


def _limit_memory(config: BenchConfig, device, result: dict[str, Any]) -> None:
    """Put ``--memory-limit`` on this process; refuse at once a limit the runtime alone exceeds."""
    idle = memory_status()
    result["runtime_host_bytes"] = idle.get("VmRSS")
    if config.memory_limit is None:
        return
    result["memory_limit_kind"] = apply_memory_limit(config.memory_limit)
    if idle.get("VmData", 0) > config.memory_limit:
        raise MemoryError(f"the memory limit {format_bytes(config.memory_limit)} is below the trial "
                          f"process's own footprint before any data ({format_bytes(idle['VmData'])})")
    if device.type == "cpu":
        result["memory_capacity_bytes"] = config.memory_limit


def _record_peaks(result: dict[str, Any], device) -> None:
    import torch

    result["peak_host_bytes"] = peak_host_bytes()
    status = memory_status()
    if {"VmPeak", "VmSize", "VmData"} <= set(status):
        # The kernel keeps no peak of VmData, the size RLIMIT_DATA checks, but
        # it keeps one of the whole address space (VmPeak); the rest of it
        # (libraries, file mappings) hardly changes once the trial runs.
        result["peak_host_data_bytes"] = status["VmPeak"] - (status["VmSize"] - status["VmData"])
    if device.type == "cuda":
        result["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_device_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        result["model_peak_bytes"] = result["peak_device_reserved_bytes"]
    else:
        result["peak_device_bytes"] = result["peak_device_reserved_bytes"] = None
        result["model_peak_bytes"] = result.get("peak_host_data_bytes") or result["peak_host_bytes"]


def _measure_baseline(result: dict[str, Any], data, config: BenchConfig, batch_size: int, device) -> None:
    """The same-batch-size ``DataLoader`` rate; a failure here never changes the trial's status."""
    from bench.baselines import WindowDataset, best_dataloader_rate

    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    # At least 16 batches: worker processes prefetch 2 batches each while the
    # warm-up batch is made, and a shorter run would time little but those.
    n_batches = max(16, math.ceil(config.baseline_samples / batch_size))
    try:
        # On a GPU the baseline delivers where fastbatch does: pinned batches,
        # copied with .to(device, non_blocking=True), the copy timed, as a user would.
        rate, workers = best_dataloader_rate(
            WindowDataset(data, config.window, config.horizon), batch_size, n_batches,
            workers=config.baseline_workers, pin_memory=device.type == "cuda", device=device,
        )
        result["baseline_samples_per_sec"], result["baseline_workers"] = rate, workers
    except Exception as error:  # noqa: BLE001 - recorded, the trial stands
        result["baseline_error"] = f"{type(error).__name__}: {_message(str(error))}"


def die_with_harness(harness_pid: int | None) -> None:
    """Linux: have the kernel SIGKILL this process when the harness dies, even by SIGKILL.

    The harness kills its trials itself on Ctrl-C, SIGTERM and timeouts; this
    covers the death it cannot handle, so a hung trial never outlives it.
    """
    if not sys.platform.startswith("linux") or harness_pid is None:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != harness_pid:  # it died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.trial SPEC RESULT``: run one trial, write its result, exit."""
    spec_path, result_path = argv if argv is not None else sys.argv[1:]
    with open(spec_path) as f:
        spec = json.load(f)
    die_with_harness(spec.get("harness_pid"))
    result: dict[str, Any] = {"batch_size": spec["batch_size"], "status": "error", "error": None}
    started = time.perf_counter()
    try:
        measure(spec, result)
    except BaseException as error:  # noqa: BLE001 - every failure becomes a verdict
        if result.get("status") != "ok":  # a failure after the training (baseline) keeps the verdict
            result["status"] = "oom" if is_oom_error(error) else "error"
        result["error"] = f"{type(error).__name__}: {_message(str(error)) or 'no message'}"
        del error
        gc.collect()
    result["child_s"] = time.perf_counter() - started
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: prefetch threads, DataLoader workers and CUDA
    # contexts are all gone with the process, and teardown can hang or crash.
    os._exit(0)


if __name__ == "__main__":
    main()
