"""Train a forecaster with PyTorch Lightning, its train_dataloader a fastbatch WindowLoader.

    pip install lightning            # optional: fastbatch does not need it
    python examples/lightning_train.py --max-steps 200
    python examples/lightning_train.py --devices 2 --strategy ddp     # several processes

Lightning accepts any iterable with a length as a dataloader, so
``train_dataloader`` returns the WindowLoader itself: no DataLoader, no
sampler, no workers.  Under a DDP strategy Lightning has initialised
torch.distributed before it asks for the loader, so each process's loader
takes its rank and world size from there; Lightning leaves it alone because
it is not a ``torch.utils.data.DataLoader``.  The loader has ``state_dict``
and ``load_state_dict``, so Lightning saves its position with each
checkpoint and ``fit(ckpt_path=...)`` resumes mid-epoch with the remaining
batches.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import fastbatch as fb

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the message is the point
    raise SystemExit("this example needs Lightning: pip install lightning") from None


def make_series(n_series: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Noisy cycles of different periods and lengths, one (N, 2) array per series: value and a covariate."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_series):
        t = np.arange(rng.integers(400, 1500))
        period = rng.uniform(12, 48)
        value = np.sin(2 * np.pi * t / period) + 0.1 * rng.standard_normal(t.size)
        covariate = np.cos(2 * np.pi * t / period)
        out.append(np.stack([value, covariate], axis=1).astype(np.float32))
    return out


class Forecaster(pl.LightningModule):
    """An MLP from ``window`` steps of both features to the next ``horizon`` values."""

    def __init__(self, window: int = 32, horizon: int = 8, batch_size: int = 128, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(window * 2, 64), torch.nn.ReLU(), torch.nn.Linear(64, horizon)
        )
        self.batches_seen: list[float] = []  # for the tests: the first value of each batch's first window

    def train_dataloader(self) -> fb.WindowLoader:
        h = self.hparams
        windows = fb.SlidingWindows(make_series(), window=h.window, horizon=h.horizon, target_columns=[0])
        # Batches go to whatever device Lightning puts the model on, by Lightning's own transfer.
        return fb.WindowLoader(windows, batch_size=h.batch_size, shuffle=True, seed=0, drop_last=True)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.batches_seen.append(float(x[0, 0, 0]))
        loss = torch.nn.functional.mse_loss(self(x), y[..., 0])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(argv: list[str] | None = None) -> Forecaster:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--ckpt-path", default=None, help="resume from this checkpoint")
    parser.add_argument("--save", default=None, help="save a checkpoint here at the end")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    trainer = pl.Trainer(
        max_steps=args.max_steps, devices=args.devices, strategy=args.strategy, accelerator=args.accelerator,
        logger=False, enable_checkpointing=False, enable_progress_bar=not args.quiet,
        enable_model_summary=not args.quiet,
    )
    model = Forecaster()
    trainer.fit(model, ckpt_path=args.ckpt_path)
    if args.save:
        trainer.save_checkpoint(args.save)
    return model


if __name__ == "__main__":
    main()
