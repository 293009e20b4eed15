"""Train a forecaster with DistributedDataParallel, one process per GPU (or CPU), under torchrun.

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --epochs 2
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
        --nproc_per_node=8 examples/ddp_train.py          # the same on several machines

Each process builds the same windows (here: 64 synthetic series of different
lengths) and a WindowLoader, which takes its rank and world size from
torch.distributed: every epoch the ranks read disjoint shards of the same
shuffled order, the same number of batches each, so DDP's gradient all-reduce
never waits for a rank that ran out.  ``set_epoch`` reshuffles for all.  The
loader's state (``loader.state_dict()``) is the same on every rank, so rank 0
alone saves it with the model.  Multi-node runs need nothing more than
torchrun's own options: fastbatch only reads the rank and world size.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import fastbatch as fb


def make_series(n_series: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Noisy daily and weekly cycles with a trend, one array per series, of different lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_series):
        t = np.arange(rng.integers(500, 2000))
        level, trend, phase = rng.normal(0, 1), rng.normal(0, 1e-3), rng.uniform(0, 2 * np.pi)
        values = level + trend * t + np.sin(2 * np.pi * t / 24 + phase) + 0.5 * np.sin(2 * np.pi * t / 168)
        out.append((values + 0.1 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--window", type=int, default=48)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--record", default=None, help="write what each rank saw here (JSON; used by the tests)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    torch.manual_seed(0)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)

    windows = fb.SlidingWindows(make_series(), window=args.window, horizon=args.horizon)
    # rank and world_size come from torch.distributed; drop_last keeps every rank's batches full.
    loader = fb.WindowLoader(windows, batch_size=args.batch_size, shuffle=True, seed=1234, drop_last=True,
                             device=device)
    model = torch.nn.Sequential(torch.nn.Linear(args.window, 128), torch.nn.ReLU(), torch.nn.Linear(128, args.horizon))
    model = DistributedDataParallel(model.to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    seen, losses, step = [], [], 0
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen.append(x[:, :2].cpu().numpy().tolist())  # the first steps identify a window
            losses.append(loss.item())
            step += 1
            if args.max_steps is not None and step >= args.max_steps:
                break
        if args.max_steps is not None and step >= args.max_steps:
            break
        if rank == 0:
            print(f"epoch {epoch}: {len(loader)} batches a rank, last loss {losses[-1]:.4f}", flush=True)

    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    result = {"rank": rank, "world_size": world_size, "batches_per_epoch": len(loader), "steps": step,
              "losses": losses, "checksum": checksum, "seen": seen, "state": loader.state_dict()}
    if args.record:
        with open(f"{args.record}.rank{rank}.json", "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
