"""Grow the batch size with the measured gradient noise scale while training, and scale the learning rate.

What Pollux (OSDI 2021) does inside its own scheduler, here in any training
loop: the gradient noise scale ``B_noise = tr(Σ) / |G|²`` grows as the loss
falls, and a batch much smaller than ``B_noise`` wastes steps on noise.  Every
``every`` optimizer steps :class:`AdaptiveBatchSize` reads the online estimate
(:class:`fastbatch.GradientNoiseScale`) and, when ``B_noise`` has grown past
``growth`` times the current batch size, sets the loader's batch size to it
(:meth:`fastbatch.WindowLoader.set_batch_size`, effective at the next batch),
within ``[batch_size at start, max_batch_size]``.  After every step the
learning rate follows the AdaScale gain (Johnson et al. 2020) from the
starting batch size ``B0`` to the current ``B``::

    gain = (tr(Σ)/B0 + |G|²) / (tr(Σ)/B + |G|²)        # between 1 and B / B0
    lr   = lr_at_B0 * gain
"""

from __future__ import annotations

import math
from typing import Any

from fastbatch._checks import _show, check_int


class AdaptiveBatchSize:
    """Batch size from the gradient noise scale, learning rate from the AdaScale gain.

    Call :meth:`step` once after each ``optimizer.step()``::

        loader = fb.WindowLoader(windows, batch_size=64, shuffle=True)
        gns = fb.GradientNoiseScale(model)
        adapt = fb.AdaptiveBatchSize(loader, gns, optimizer, max_batch_size=4096)
        for epoch in range(epochs):
            for x, y in loader:
                loss_fn(model(x), y).backward()
                gns.step(len(x))
                optimizer.step(); optimizer.zero_grad()
                adapt.step()

    Parameters
    ----------
    loader : fastbatch.WindowLoader
        Its batch size at construction is ``B0``, the size ``lr`` was tuned for.
    noise : fastbatch.GradientNoiseScale
        Updated by the loop after each backward.
    optimizer : torch.optim.Optimizer
        Its param groups' ``lr`` at construction are the rates at ``B0``.
    max_batch_size : int
        The largest batch allowed (for example ``python -m bench``'s
        recommendation within the memory boundary).
    every : int, default 50
        Steps between decisions; the estimate needs some steps to settle.
    growth : float, default 2.0
        Grow only when ``B_noise >= growth * B``: no change for small drifts of
        a noisy estimate, and the batch size never shrinks.
    multiple : int, default 8
        New batch sizes are rounded down to a multiple of this (at least one).
    scale_lr : bool, default True
        Set each param group's ``lr`` to its rate at ``B0`` times the AdaScale
        gain after every step.

    Attributes
    ----------
    history : list of (step, batch_size)
        Every change made.
    gain : float
        The latest AdaScale gain (1.0 until the estimate exists).
    """

    def __init__(self, loader: Any, noise: Any, optimizer: Any, *, max_batch_size: int, every: int = 50,
                 growth: float = 2.0, multiple: int = 8, scale_lr: bool = True) -> None:
        from fastbatch.loader import WindowLoader
        from fastbatch.noise import GradientNoiseScale

        if not isinstance(loader, WindowLoader):
            raise TypeError(f"loader must be a fastbatch.WindowLoader, got {_show(loader)}")
        if not isinstance(noise, GradientNoiseScale):
            raise TypeError(f"noise must be a fastbatch.GradientNoiseScale, got {_show(noise)}")
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or not all(isinstance(g, dict) and "lr" in g for g in groups):
            raise TypeError(f"optimizer must be a torch optimizer with an lr per param group, got {_show(optimizer)}")
        self.loader, self.noise, self.optimizer = loader, noise, optimizer
        self.start_batch_size = loader.batch_size
        self.max_batch_size = check_int("max_batch_size", max_batch_size, minimum=self.start_batch_size)
        self.every = check_int("every", every, minimum=1)
        if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not growth >= 1.0:
            raise ValueError(f"growth must be a number >= 1, got growth={_show(growth)}")
        self.growth = float(growth)
        self.multiple = check_int("multiple", multiple, minimum=1)
        if not isinstance(scale_lr, bool):
            raise TypeError(f"scale_lr must be True or False, got {_show(scale_lr)}")
        self.scale_lr = scale_lr
        self.base_lrs = [float(g["lr"]) for g in groups]
        self.steps = 0
        self.gain = 1.0
        self.history: list[tuple[int, int]] = []

    def step(self) -> None:
        """After ``optimizer.step()``: maybe grow the batch size; set the learning rate."""
        self.steps += 1
        if self.steps % self.every == 0:
            self._maybe_grow()
        if self.scale_lr:
            self.gain = self._gain(self.loader.batch_size)
            for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = lr * self.gain

    def target(self) -> int | None:
        """The batch size the current estimate asks for, within the limits; ``None`` without a usable one.

        An averaged ``|G|²`` that is not positive (``b_simple`` infinite) is the
        estimator's noise, not a measurement: no change until it is.
        """
        b_noise = self.noise.b_simple
        if b_noise is None or not math.isfinite(b_noise) or b_noise <= 0:
            return None
        size = max(self.multiple, int(b_noise) // self.multiple * self.multiple)
        return max(self.start_batch_size, min(self.max_batch_size, size))

    def _maybe_grow(self) -> None:
        current = self.loader.batch_size
        b_noise = self.noise.b_simple
        target = self.target()
        if target is None or b_noise < self.growth * current or target <= current:
            return
        self.loader.set_batch_size(target)
        self.history.append((self.steps, target))

    def _gain(self, batch_size: int) -> float:
        grad_sq, trace_cov = self.noise.grad_sq, self.noise.trace_cov
        if grad_sq is None or trace_cov is None or not (grad_sq > 0 and trace_cov >= 0):
            return 1.0
        return adascale_gain(trace_cov, grad_sq, self.start_batch_size, batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Steps, the starting batch size and rates, and the changes made (plain values)."""
        return {"steps": self.steps, "start_batch_size": self.start_batch_size, "base_lrs": list(self.base_lrs),
                "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a run; the loader's own state carries its current batch size."""
        try:
            steps = check_int("steps", state["steps"], minimum=0)
            start = check_int("start_batch_size", state["start_batch_size"], minimum=1)
            base_lrs = [float(v) for v in state["base_lrs"]]
            history = [(int(s), int(b)) for s, b in state["history"]]
        except (KeyError, TypeError) as error:
            raise ValueError(f"state is not an AdaptiveBatchSize state: {error}; got {_show(state)}") from None
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"state has {len(base_lrs)} learning rates, the optimizer "
                             f"{len(self.optimizer.param_groups)} param groups")
        self.steps, self.start_batch_size, self.base_lrs, self.history = steps, start, base_lrs, history


def adascale_gain(trace_cov: float, grad_sq: float, from_batch: int, to_batch: int) -> float:
    """``(tr(Σ)/B0 + |G|²) / (tr(Σ)/B + |G|²)``: how much more progress one step at ``B`` makes than at ``B0``."""
    return (trace_cov / from_batch + grad_sq) / (trace_cov / to_batch + grad_sq)
