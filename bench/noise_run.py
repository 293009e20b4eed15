"""The gradient noise scale over a short training run, in a child process: ``python -m bench.noise_run SPEC RESULT``.

After the sweep, the harness trains the model on the data at the reference
``(lr, batch size)`` (``--reference-lr``; AdamW, the sweep's training step)
for ``--goodput-steps`` steps or ``--goodput-seconds`` of training, whichever
comes first, and measures ``B_simple = tr(Σ)/|G|²`` with
:func:`fastbatch.measure_noise_scale` at steps 0, N/8, N/4, N/2 and N.  The
noise scale grows as the loss falls, so the points show its trend; the
harness uses the last one.  Like a trial, it runs in a child process under
the memory limit, so nothing it does can stop or skew the harness.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import time
from typing import Any

from bench.config import BenchConfig

# Each measurement: MEASURE_BATCHES batches of MEASURE_BATCH_SIZE windows, each
# split into MICRO_BATCHES parts (4 backward passes of 64).  16 x 256 = 4096
# windows give a 90 % interval of about +-30 % on the reference models here;
# a measurement takes well under a second for the MLP on 2 cores.
MEASURE_BATCH_SIZE = 256
MICRO_BATCHES = 4
MEASURE_BATCHES = 16
QUICK_MEASURE_BATCHES = 8


def checkpoints(steps: int) -> list[int]:
    """The training steps at which the noise scale is measured: 0, N/8, N/4, N/2, N (distinct)."""
    return sorted({0, *(max(1, steps * k // 8) for k in (1, 2, 4)), steps})


# -- parent side ------------------------------------------------------------------------


def measure_in_child(config: BenchConfig, data_path: str, workdir: str) -> dict[str, Any]:
    """Run the measurement in a child bounded by ``--trial-timeout``; its result, or ``{"error": ...}``."""
    from bench.trial import _last_line, _read_json, _tail, run_child

    stem = os.path.join(workdir, "noise-scale")
    with open(stem + ".spec.json", "w") as f:
        json.dump({"config": config.to_dict(), "data_path": data_path, "harness_pid": os.getpid()}, f)
    if os.path.exists(stem + ".result.json"):
        os.unlink(stem + ".result.json")
    command = [sys.executable, "-m", "bench.noise_run", stem + ".spec.json", stem + ".result.json"]
    started = time.perf_counter()
    returncode, killed = run_child(command, stem + ".log", config.trial_timeout)
    result = _read_json(stem + ".result.json")
    if killed:
        return {"error": f"no result within --trial-timeout {config.trial_timeout:g} s; killed"}
    if result is None:
        return {"error": f"the process ended with code {returncode} before reporting: "
                         f"{_last_line(_tail(stem + '.log')) or 'no message'}"}
    result["wall_s"] = time.perf_counter() - started
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any] | None:
    """The ``noise_scale`` entry of ``results.json`` from the child's points; ``None`` if none was measured."""
    points = result.get("points") or []
    measured = [p for p in points if p.get("b_simple") is not None]
    if not measured:
        return None
    last = measured[-1]  # the latest in training: see docs/bench.md, "Goodput"
    return {
        "b_simple": last["b_simple"], "interval": last["interval"], "samples": last["samples"],
        "trace_cov": last["trace_cov"], "grad_sq": last["grad_sq"], "used_step": last["step"],
        "at_step": [p["step"] for p in points],
        "b_simple_over_training": [p.get("b_simple") for p in points],
        "interval_over_training": [p.get("interval") for p in points],
        "loss_over_training": [p.get("loss") for p in points],
        "errors": [p.get("error") for p in points],
        **{k: result.get(k) for k in ("train_batch_size", "lr", "optimizer", "steps", "stopped_by",
                                      "train_seconds", "measure_batch_size", "micro_batches", "measure_batches")},
    }


# -- child side ---------------------------------------------------------------------------


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf: an unbounded end is null


def _loss_fn(prediction, y):
    """The sweep's training loss (``TrainStep``): the batch's mean squared error, in float32."""
    from torch import nn

    return nn.functional.mse_loss(prediction.float(), y.reshape(prediction.shape).float())


def _point(model, batches: list, step: int, autocast) -> dict[str, Any]:
    """``B_simple`` and the mean loss on ``batches`` at the model's current parameters."""
    import torch

    import fastbatch as fb

    point: dict[str, Any] = {"step": step}
    with torch.no_grad(), autocast():
        losses = [float(_loss_fn(model(x), y)) for x, y in batches]
    point["loss"] = sum(losses) / len(losses)
    try:
        with autocast():
            ns = fb.measure_noise_scale(model, _loss_fn, batches, micro_batches=MICRO_BATCHES)
    except ValueError as error:  # |G|² estimated <= 0, every gradient non-finite
        point["error"] = str(error).splitlines()[0][:300]
        return point
    point.update(b_simple=ns.b_simple, interval=[_finite(ns.interval[0]), _finite(ns.interval[1])],
                 trace_cov=ns.trace_cov, grad_sq=ns.grad_sq, samples=ns.samples)
    return point


def measure(spec: dict[str, Any], result: dict[str, Any]) -> None:
    import torch

    from bench.data import open_windows
    from bench.models import TrainStep, build_model, resolve_factory
    from bench.trial import _Batches, _limit_memory, _prepare_device, make_loader

    config = BenchConfig.from_dict(spec["config"])
    torch.manual_seed(config.seed)
    resolve_factory(config.model)  # the user's module is imported before the limit, as in a trial
    device = _prepare_device(config, {})
    _limit_memory(config, device, {})
    windows = open_windows(spec["data_path"], config)
    lr, train_size = config.reference_lr
    train_size = min(train_size, len(windows))
    measure_size = min(MEASURE_BATCH_SIZE, len(windows))
    if measure_size < MICRO_BATCHES:
        raise ValueError(f"the series has {len(windows)} windows; the noise scale needs at least {MICRO_BATCHES}")
    model = build_model(config.model, config.window, config.horizon, windows.n_features, windows.n_targets,
                        **config.model_options).to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters: there is no gradient to measure")
    step = TrainStep(model, lr=lr, bf16=config.bf16)
    loader, move = make_loader(windows, train_size, device, config.prefetch, config.seed)
    probe, probe_move = make_loader(windows, measure_size, device, config.prefetch, config.seed + 1)
    result.update(train_batch_size=train_size, lr=lr, optimizer="AdamW", measure_batch_size=measure_size,
                  micro_batches=MICRO_BATCHES, points=[], stopped_by="steps")
    n_batches = QUICK_MEASURE_BATCHES if config.quick else MEASURE_BATCHES

    def autocast():  # as the training step runs its forward pass and loss
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    result["measure_batches"] = n_batches
    batches, probes = _Batches(loader, move), _Batches(probe, probe_move)
    done, seconds = 0, 0.0
    try:
        for target in checkpoints(config.goodput_steps):
            started = time.perf_counter()
            while done < target and seconds + time.perf_counter() - started < config.goodput_seconds:
                step(*batches.next())
                done += 1
            seconds += time.perf_counter() - started
            if result["points"] and result["points"][-1]["step"] == done:
                break  # the time budget ran out before another step
            result["points"].append(_point(model, [probes.next() for _ in range(n_batches)], done, autocast))
            if done < target:
                result["stopped_by"] = "seconds"
                break
    finally:
        batches.close()
        probes.close()
        result.update(steps=done, train_seconds=seconds)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.noise_run SPEC RESULT``: measure, write the result, exit."""
    from bench.trial import _message, die_with_harness, is_oom_error

    spec_path, result_path = argv if argv is not None else sys.argv[1:]
    with open(spec_path) as f:
        spec = json.load(f)
    die_with_harness(spec.get("harness_pid"))
    result: dict[str, Any] = {}
    try:
        measure(spec, result)
    except BaseException as error:  # noqa: BLE001 - every failure becomes a reason, the recommendation stands
        kind = "out of memory: " if is_oom_error(error) else ""
        result["error"] = f"{kind}{type(error).__name__}: {_message(str(error)) or 'no message'}"
        del error
        gc.collect()
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(result_path + ".tmp", result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no teardown: prefetch threads and the like go with the process


if __name__ == "__main__":
    main()
