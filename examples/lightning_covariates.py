"""Train a forecaster with covariates on a real multi-series table, with PyTorch Lightning and fastbatch.

    pip install lightning pandas pyarrow      # optional: fastbatch does not need them
    python examples/lightning_covariates.py --max-steps 100

The table is ``examples/data/us_employment.csv`` (US Bureau of Labor
Statistics, public domain; see examples/data/README.md): 21 industries ×
120 months in long format, one row per (industry, month).  Its columns play
the roles pytorch-forecasting and neuralforecast users know:

- ``unique_id`` the series id, ``ds`` the month (as an integer index ``time_idx``), ``y`` the employment (target);
- ``nonfarm`` (total employment) is *observed*: known only up to the forecast start (``past``);
- ``month`` is *known* over the input window and the horizon (``future``);
- ``sector`` is a code constant per industry (``static``).

The last 12 months of every series are held out (``w.split(last=12)``); the
per-series standard scaling is fitted on the training months only and fused
into the gather.  The model sees scaled values; the validation error is
reported in thousands of jobs, through ``scaler.inverse``, next to the error
of repeating the last observed value.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import fastbatch as fb

try:
    import lightning.pytorch as pl
    import pandas as pd
except ImportError:  # pragma: no cover - the message is the point
    raise SystemExit("this example needs Lightning and pandas: pip install lightning pandas pyarrow") from None

DATA = Path(__file__).resolve().parent / "data" / "us_employment.csv"
N_SECTORS = 4  # the codes of the table's `sector` column


def load_table(path: Path = DATA) -> "pd.DataFrame":
    """The long-format table: unique_id, ds, y, nonfarm, month, sector, and an integer month index ``time_idx``.

    Calendar months are 28 to 31 days apart, not a fixed step, so the
    windows are laid on ``time_idx`` (months since January 2006), the
    integer time index pytorch-forecasting asks for too.
    """
    df = pd.read_csv(path, parse_dates=["ds"])
    df["time_idx"] = (df["ds"].dt.year - 2006) * 12 + df["ds"].dt.month - 1
    return df


def make_windows(window: int = 24, horizon: int = 6, holdout: int = 12):
    """``(train, valid)`` windows over the table, scaled per series with statistics of the training months."""
    w = fb.SlidingWindows.from_frame(
        load_table(), id="unique_id", time="time_idx", target="y", past=["nonfarm"], future=["month"], static=["sector"],
        window=window, horizon=horizon, scale="standard",
    )
    return w.split(last=holdout)


class Forecaster(pl.LightningModule):
    """The last observed value plus a learned correction, from the past, the known months and the sector.

    ``past`` ``(B, T, 2)`` (employment, nonfarm) and ``future`` ``(B, T + H, 1)``
    (month) are flattened; ``static`` (the sector code) goes through an
    embedding.  Starting from the last value makes the untrained model the
    naive forecast, which the training improves on.
    """

    def __init__(self, window: int = 24, horizon: int = 6, batch_size: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sector = torch.nn.Embedding(N_SECTORS, 4)
        width = window * 2 + (window + horizon) + 4
        self.net = torch.nn.Sequential(torch.nn.Linear(width, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(32, horizon))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)
        self.train_windows, self.valid_windows = make_windows(window, horizon)

    def forward(self, b) -> torch.Tensor:
        """``(B, H, 1)`` forecasts of the target, in scaled units."""
        last = b.past[:, -1:, :]  # the last observed values: the forecast is relative to them
        history = (b.past - last).flatten(1)
        features = torch.cat([history, b.future.flatten(1), self.sector(b.static[:, 0].long())], dim=1)
        return last[..., :1] + self.net(features).unsqueeze(-1)

    def train_dataloader(self) -> fb.WindowLoader:
        return fb.WindowLoader(self.train_windows, batch_size=self.hparams.batch_size, shuffle=True, seed=0,
                               drop_last=True)

    def val_dataloader(self) -> fb.WindowLoader:
        return fb.WindowLoader(self.valid_windows, batch_size=256)

    def training_step(self, b, batch_idx):
        loss = torch.nn.functional.mse_loss(self(b), b.target)
        self.log("train_loss", loss, prog_bar=True, batch_size=b.target.shape[0])
        return loss

    def validation_step(self, b, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self(b), b.target), batch_size=b.target.shape[0])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.1)


@torch.no_grad()
def evaluate(model: Forecaster) -> dict[str, float]:
    """Mean absolute error over the validation windows in the data's units (thousands of jobs): model and naive."""
    model.eval()
    scaler = model.valid_windows.scaler
    errors = {"val_mae": 0.0, "naive_mae": 0.0}
    n = 0
    for b in fb.WindowLoader(model.valid_windows, batch_size=256):
        truth = scaler.inverse(b.target, b.series)
        pred = scaler.inverse(model(b), b.series)
        naive = scaler.inverse(b.past[:, -1:, :1].expand_as(b.target), b.series)
        errors["val_mae"] += float((pred - truth).abs().sum())
        errors["naive_mae"] += float((naive - truth).abs().sum())
        n += truth.numel()
    return {k: v / n for k, v in errors.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    pl.seed_everything(0, verbose=False)
    model = Forecaster(lr=args.lr)
    trainer = pl.Trainer(
        max_steps=args.max_steps, accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=not args.quiet, enable_model_summary=not args.quiet, num_sanity_val_steps=0,
    )
    trainer.fit(model)
    result = evaluate(model.cpu())
    print(f"{len(model.train_windows)} training and {len(model.valid_windows)} validation windows over "
          f"{model.train_windows.n_series} series")
    print(f"validation MAE: {result['val_mae']:.1f} thousand jobs (repeating the last value: "
          f"{result['naive_mae']:.1f})")
    return result


if __name__ == "__main__":
    main()
