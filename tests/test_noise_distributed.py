"""GradientNoiseScale across ranks: two real gloo processes on CPU, checked against a single-process hand computation.

Each rank's local gradient is a small batch and the all-reduced ``.grad`` the
large one, so with ``R`` ranks of ``b`` samples the two-size estimator has
``n = R`` parts (``R·k`` with ``k`` accumulated micro-batches per rank) and
needs no extra backward pass. The gradients are all-reduced by
``DistributedDataParallel`` (slow: building the first DDP module imports
``torch._dynamo``, several seconds per process) or by hand after the backward
pass, as loops without DDP do.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastbatch as fb
from test_distributed import free_port
from test_noise import half_squared, regression

WORLD = 2
LOCAL = 64  # samples per rank per step
STEPS = 150  # for the closed-form check, at fixed parameters


def two_sizes(parts: list[torch.Tensor], b: int) -> tuple[float, float]:
    """McCandlish's unbiased ``(|G|², tr(Σ))`` from the mean gradients of equal parts of ``b`` samples."""
    n = len(parts)
    small = sum(float(g @ g) for g in parts) / n
    mean = torch.stack(parts).mean(0)
    big = float(mean @ mean)
    return (n * b * big - b * small) / (n * b - b), (small - big) / (1 / b - 1 / (n * b))


def gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    half_squared(model(x), y).backward()
    grad = model.weight.grad.double().flatten().clone()
    model.zero_grad()
    return grad


class HandAllReduce:
    """What DDP does to ``.grad``, by hand: average over ranks after the last backward pass of a step."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x):
        return self.module(x)

    def no_sync(self):
        return contextlib.nullcontext()  # nothing is all-reduced until sync()

    def sync(self) -> None:
        for p in self.module.parameters():
            dist.all_reduce(p.grad)
            p.grad /= WORLD


def rank_main(rank: int, folder: str, port: int, use_ddp: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        data = torch.load(f"{folder}/data.pt")
        model = nn.Linear(data["weight"].shape[1], 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(data["weight"])
        net = nn.parallel.DistributedDataParallel(model) if use_ddp else HandAllReduce(model)
        sync = (lambda: None) if use_ddp else net.sync
        x, y = data["x"][:, rank], data["y"][:, rank]  # (steps, LOCAL, d): this rank's share of each step
        out = {}

        gns = fb.GradientNoiseScale(model, beta=0.9, every=1)
        half_squared(net(x[0]), y[0]).backward()
        sync()
        gns.step(LOCAL)
        out["plain"] = [gns.grad_sq, gns.trace_cov, gns.biased, gns.world_size]
        gns.close()
        model.zero_grad()

        gns = fb.GradientNoiseScale(model, beta=0.9, every=1)
        half = LOCAL // 2
        with net.no_sync():  # gradient accumulation: the first micro-batch is not all-reduced
            (half_squared(net(x[0, :half]), y[0, :half]) / 2).backward()
            gns.accumulate()
        (half_squared(net(x[0, half:]), y[0, half:]) / 2).backward()
        sync()
        gns.accumulate()
        gns.step(LOCAL)
        out["accumulated"] = [gns.grad_sq, gns.trace_cov, gns.biased]
        gns.close()
        model.zero_grad()

        gns = fb.GradientNoiseScale(model, beta=0.999, every=1)
        for step in range(STEPS):
            half_squared(net(x[step]), y[step]).backward()
            sync()
            gns.step(LOCAL)
            model.zero_grad()
        out["closed_form"] = [gns.b_simple, gns.updates, gns.biased]
        gns.close()

        # every="auto": each rank times itself, and rank 1's steps take 2 ms longer; a rank choosing
        # from its own timings alone would update on other steps than its peer, and the all-reduces of
        # the updates would pair wrongly or hang. The mean timings reach both ranks alike.
        gns = fb.GradientNoiseScale(model, beta=0.9)
        chosen = []
        for step in range(STEPS):
            if rank == 1:
                time.sleep(0.002)
            half_squared(net(x[step]), y[step]).backward()
            sync()
            gns.step(LOCAL)
            model.zero_grad()
            chosen.append(gns.every)
        out["auto"] = [chosen, gns.updates, gns.grad_sq, gns.trace_cov]
        gns.close()

        if use_ddp:  # measure_noise_scale measures this rank's batches through .module, no collective
            local = list(zip(x[:10], y[:10]))
            out["measure"] = [fb.measure_noise_scale(net, half_squared, local).b_simple,
                              fb.measure_noise_scale(model, half_squared, local).b_simple]
        with open(f"{folder}/rank{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def check_two_ranks(tmp_path, use_ddp: bool) -> None:
    model, batches, b_simple, *_ = regression(8, 2.0, 1.0, n_batches=STEPS, batch_size=WORLD * LOCAL, seed=3)
    x = torch.stack([b[0] for b in batches]).view(STEPS, WORLD, LOCAL, -1)
    y = torch.stack([b[1] for b in batches]).view(STEPS, WORLD, LOCAL)
    torch.save({"weight": model.weight.detach(), "x": x, "y": y}, tmp_path / "data.pt")
    mp.start_processes(rank_main, args=(str(tmp_path), free_port(), use_ddp), nprocs=WORLD, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    out = ranks[0]
    for key in ("plain", "accumulated", "closed_form", "auto"):
        assert ranks[1][key] == out[key], key  # the scalar all-reduce gives every rank the same figures

    grad_sq, trace = two_sizes([gradient(model, x[0, r], y[0, r]) for r in range(WORLD)], LOCAL)
    assert out["plain"][:2] == pytest.approx([grad_sq, trace], rel=1e-4)
    assert out["plain"][2:] == [False, WORLD]

    half = LOCAL // 2
    parts = [gradient(model, x[0, r, i * half:(i + 1) * half], y[0, r, i * half:(i + 1) * half])
             for r in range(WORLD) for i in range(2)]
    grad_sq, trace = two_sizes(parts, half)
    assert out["accumulated"] == pytest.approx([grad_sq, trace, False], rel=1e-4)

    assert out["closed_form"][0] == pytest.approx(b_simple, rel=0.15)
    assert out["closed_form"][1:] == [STEPS, False]
    if use_ddp:
        assert out["measure"][0] == out["measure"][1]

    # A tiny model: the hooks and the scalar all-reduce cost a large share of its step, so "auto"
    # updates on a fraction of the steps; the first choice comes after four updates (one cycle late:
    # the ranks' timings ride with the next update's all-reduce).
    chosen, updates = out["auto"][:2]
    assert chosen[:4] == [1, 1, 1, 1] and chosen[-1] > 1 and updates < STEPS


def test_ranks_are_the_small_batches_and_the_all_reduced_gradient_the_large(tmp_path):
    check_two_ranks(tmp_path, use_ddp=False)


@pytest.mark.slow
def test_under_ddp_the_hooks_see_each_ranks_gradient_before_the_all_reduce(tmp_path):
    check_two_ranks(tmp_path, use_ddp=True)
