"""Distributed ranks: shards like DistributedSampler, defaults from torch.distributed, a real DDP run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

import fastbatch as fb
from fastbatch.distributed import resolve_ranks
from helpers_resume import tensor_rows
from reference import series

ROOT = Path(__file__).resolve().parents[1]


def loader_for(rank, world_size, *, n_steps=1003, batch_size=16, drop_last=False, **kw):
    w = fb.SlidingWindows(series(n_steps, None, np.float64), window=3, horizon=1)
    return fb.WindowLoader(w, batch_size=batch_size, shuffle=True, seed=5, drop_last=drop_last, rank=rank,
                           world_size=world_size, **kw)


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_disjoint_shards_and_the_same_number_of_batches(world_size, drop_last):
    loaders = [loader_for(r, world_size, drop_last=drop_last) for r in range(world_size)]
    n = len(loaders[0].windows)  # 1000 windows: not a multiple of 3 or of 16
    assert len({len(lo) for lo in loaders}) == 1
    seen = [tensor_rows(list(lo)) for lo in loaders]
    assert len({s.size for s in seen}) == 1
    every = np.concatenate(seen)
    if drop_last:
        assert seen[0].size == (n // world_size // 16) * 16
        assert np.unique(every).size == every.size  # nothing twice
    else:
        per_rank = -(-n // world_size)
        assert len(loaders[0]) == -(-per_rank // 16) and seen[0].size == per_rank
        assert np.unique(every).size == n  # every window; the padding repeats the epoch's first ones
        assert every.size - n == per_rank * world_size - n


@pytest.mark.parametrize("n_windows,world_size", [(10, 3), (7, 4), (3, 5), (12, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sequential_shards_are_torch_distributed_samplers(n_windows, world_size, drop_last):
    from torch.utils.data.distributed import DistributedSampler

    w = fb.SlidingWindows(np.arange(n_windows, dtype=np.float64), window=1, horizon=0)
    for rank in range(world_size):
        ours = fb.WindowLoader(w, batch_size=1, rank=rank, world_size=world_size, drop_last=drop_last)
        theirs = DistributedSampler(range(n_windows), num_replicas=world_size, rank=rank, shuffle=False,
                                    drop_last=drop_last)
        assert tensor_rows(list(ours)).astype(int).tolist() == list(theirs)


def test_set_epoch_reshuffles_every_rank_alike():
    a, b = loader_for(0, 2), loader_for(1, 2)
    first = [tensor_rows(list(lo)) for lo in (a, b)]
    for lo in (a, b):
        lo.set_epoch(1)
    second = [tensor_rows(list(lo)) for lo in (a, b)]
    assert not np.array_equal(first[0], second[0])
    assert np.intersect1d(second[0], second[1]).size == 0


@pytest.mark.parametrize(
    "rank,world_size,error,match",
    [
        (None, 2, ValueError, "give both rank and world_size"),
        (1, None, ValueError, "give both rank and world_size"),
        (2, 2, ValueError, r"rank must be in \[0, world_size\)"),
        (0, 0, ValueError, "world_size must be an integer >= 1"),
        (-1, 2, ValueError, "rank must be an integer >= 0"),
        (0.0, 2, TypeError, "rank must be an integer"),
    ],
)
def test_rank_arguments_are_checked(rank, world_size, error, match):
    with pytest.raises(error, match=match):
        loader_for(rank, world_size)


def test_defaults_come_from_an_initialised_process_group(tmp_path):
    assert resolve_ranks(None, None) == (0, 1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        loader = loader_for(None, None)
        assert (loader.rank, loader.world_size) == (0, 1)
        # Explicit values win over the process group's.
        loader = loader_for(1, 3)
        assert (loader.rank, loader.world_size) == (1, 3)
        assert resolve_ranks(None, 4) == (0, 4)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_a_ddp_model_under_torchrun(tmp_path):
    # examples/ddp_train.py under torchrun, two CPU processes, gloo on 127.0.0.1.
    record = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "examples" / "ddp_train.py"),
               "--epochs", "1", "--max-steps", "3", "--batch-size", "64", "--record", str(record)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(Path(f"{record}.rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in runs] == [0, 1] and all(r["world_size"] == 2 for r in runs)
    assert runs[0]["steps"] == runs[1]["steps"] == 3
    assert runs[0]["batches_per_epoch"] == runs[1]["batches_per_epoch"]
    # DDP kept the replicas equal, and the loss went down on the shared model.
    assert runs[0]["checksum"] == pytest.approx(runs[1]["checksum"], rel=1e-6)
    windows = [{tuple(w) for batch in r["seen"] for w in batch} for r in runs]
    assert len(windows[0]) == len(windows[1]) == 3 * 64
    assert not windows[0] & windows[1]  # disjoint shards
    # The same shards as a loader built here with explicit ranks.
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from ddp_train import make_series
    finally:
        sys.path.pop(0)
    w = fb.SlidingWindows(make_series(), window=48, horizon=12)
    for r in range(2):
        here = fb.WindowLoader(w, batch_size=64, shuffle=True, seed=1234, drop_last=True, rank=r, world_size=2)
        x, _ = next(iter(here))
        np.testing.assert_allclose(x[:, :2].numpy(), np.array(runs[r]["seen"][0]), rtol=0, atol=0)
    assert runs[0]["state"] == runs[1]["state"]  # one state resumes every rank
