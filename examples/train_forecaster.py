"""Train a forecaster on a real series: weekly CO2 at Mauna Loa, 1958-2001.

    python examples/train_forecaster.py [--model mlp] [--epochs 30]

The data (examples/data/co2_weekly.csv, public domain; source in
examples/data/README.md) has 2,284 weeks with 59 gaps, filled here by linear
interpolation.  The first 80 % of the weeks train, the rest validate; both are
standardised with the training statistics.  Inputs are the past year (52
weeks), targets the next 4 weeks.  The series climbs out of the training
range, so the model sees each window relative to its last value and predicts
the change from it (a persistence skip connection).  The script prints the
validation error next to the naive forecast "the next 4 weeks equal the last
week", which a useful model must beat.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import fastbatch as fb
from bench.models import MODELS, TrainStep, build_model

DATA = Path(__file__).parent / "data" / "co2_weekly.csv"


def load_co2() -> np.ndarray:
    """The weekly series in ppmv, gaps filled by linear interpolation."""
    table = np.genfromtxt(DATA, delimiter=",", names=True)
    co2 = table["co2"].astype(np.float64)
    missing = np.isnan(co2)
    weeks = np.arange(co2.size)
    co2[missing] = np.interp(weeks[missing], weeks[~missing], co2[~missing])
    return co2


def relative(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets minus the window's last value, with a feature axis: (B, T, 1), (B, H, 1)."""
    last = x[:, -1:]
    return (x - last).unsqueeze(-1), (y - last).unsqueeze(-1)


def evaluate(model: torch.nn.Module, loader: fb.WindowLoader) -> tuple[float, float]:
    """(model MSE, last-value MSE) over one pass of ``loader``, in standardised units."""
    model.eval()
    total = naive = 0.0
    count = 0
    with torch.no_grad():
        for x, y in loader:
            x_rel, y_rel = relative(x, y)
            prediction = model(x_rel)
            total += float(torch.nn.functional.mse_loss(prediction, y_rel, reduction="sum"))
            naive += float(torch.nn.functional.mse_loss(torch.zeros_like(y_rel), y_rel, reduction="sum"))
            count += y.numel()
    model.train()
    return total / count, naive / count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--window", type=int, default=52)
    parser.add_argument("--horizon", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    co2 = load_co2()
    split = int(0.8 * co2.size)
    train_w = fb.SlidingWindows(co2[:split], window=args.window, horizon=args.horizon, dtype="float32")
    # Validation windows start where their input lies wholly after the split.
    val_w = fb.SlidingWindows(co2[split:], window=args.window, horizon=args.horizon, dtype="float32")
    train = fb.WindowLoader(train_w, batch_size=args.batch_size, shuffle=True, seed=args.seed, normalize=True)
    val = fb.WindowLoader(val_w, batch_size=256, normalize=train.normalize_stats)

    model = build_model(args.model, args.window, args.horizon, 1, 1)
    step = TrainStep(model, lr=1e-3)
    print(f"co2: {co2.size} weeks, {len(train_w)} training windows ({len(train)} batches of "
          f"{args.batch_size}), {len(val_w)} validation windows; model {args.model}")
    for epoch in range(args.epochs):
        losses = [float(step(*relative(x, y))) for x, y in train]
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            val_mse, naive_mse = evaluate(model, val)
            print(f"epoch {epoch + 1:3d}  train mse {np.mean(losses):.4f}  "
                  f"val mse {val_mse:.4f}  (last-value forecast: {naive_mse:.4f})")
    val_mse, naive_mse = evaluate(model, val)
    return {"val_mse": val_mse, "naive_mse": naive_mse}


if __name__ == "__main__":
    main()
