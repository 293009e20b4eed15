"""``measure_noise_scale``: the gradient noise scale of a model on a few batches, off the training loop."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from fastbatch._checks import _show, check_int
from fastbatch.noise._twosize import squared_norm, two_sizes

#: Bootstrap resamples for the interval; the seed makes ``interval`` reproducible.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class NoiseScale:
    """The result of :func:`measure_noise_scale`.

    Attributes
    ----------
    b_simple : float
        ``tr(Σ) / |G|²``: the batch size at which the gradient's noise and its
        signal are equal (McCandlish et al.'s ``B_simple``).
    trace_cov : float
        ``tr(Σ)``, the trace of the per-sample gradient covariance.
    grad_sq : float
        ``|G|²``, the squared norm of the true gradient.
    interval : tuple of float
        ``(low, high)``: a 90 % percentile-bootstrap interval for ``b_simple``,
        resampling batches. ``high`` is ``inf`` when some resamples estimate
        ``|G|² <= 0``.
    samples : int
        Samples the estimate used (a batch's remainder beyond ``micro_batches``
        equal parts is not used).
    batches : int
        Batches the estimate used.
    skipped : int
        Batches skipped because a gradient was not finite.
    micro_batches : int
        Parts each batch was split into.
    """

    b_simple: float
    trace_cov: float
    grad_sq: float
    interval: tuple[float, float]
    samples: int
    batches: int
    skipped: int
    micro_batches: int


def measure_noise_scale(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], batches: Iterable, *,
                        max_batches: int | None = None, micro_batches: int = 4) -> NoiseScale:
    """Estimate the gradient noise scale ``B_simple = tr(Σ) / |G|²`` of ``model`` at its current parameters.

    Each batch of ``B`` samples is split into ``micro_batches`` equal parts of
    ``b = B // micro_batches`` samples (the last ``B % micro_batches`` samples
    are not used), one backward pass each. The mean of the parts' squared
    gradient norms estimates ``|G|² + tr(Σ)/b``, the squared norm of their
    mean gradient ``|G|² + tr(Σ)/(k·b)``; McCandlish et al.'s (2018,
    appendix A) unbiased estimates of ``|G|²`` and ``tr(Σ)`` follow, are
    averaged over batches, and their ratio is ``b_simple``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module; a ``DistributedDataParallel`` wrapper is measured through
        its ``.module``, on this rank's batches only. It runs in training mode
        (dropout and batch-norm as SGD sees them) and is put back in the mode
        it was in. Batches are moved to the device of its first parameter.
    loss_fn : callable
        ``loss_fn(model(x), y)`` returns the batch's **mean** loss, a scalar tensor.
    batches : iterable
        Yields ``(x, y)`` (or longer tuples whose first two items are ``x``
        and ``y``), e.g. a :class:`~fastbatch.WindowLoader`. Each batch needs
        at least ``micro_batches`` samples. Drawn independently of the
        parameters (no training happens), so one epoch's batches are fine.
    max_batches : int, optional
        Use at most this many batches (default: all of ``batches``).
    micro_batches : int, default 4
        Parts ``k >= 2`` each batch is split into. The estimator needs two
        batch sizes, ``b`` and ``k·b``; with ``k=1`` there is only one.

    Returns
    -------
    NoiseScale
        ``b_simple``, ``trace_cov``, ``grad_sq``, ``interval``, ``samples``, ...

    Raises
    ------
    TypeError, ValueError
        For bad arguments (each message names the parameter and the value);
        when every batch had a non-finite gradient; and when the estimated
        ``|G|²`` is not positive (a zero gradient, or one too small against
        its noise for these batches: use more or larger batches).

    Notes
    -----
    Mixed precision: call it inside your ``torch.autocast(...)`` context; the
    forward pass and ``loss_fn`` then run under it, the gradients' squared
    norms are summed in float64. A batch whose gradient is not finite is
    skipped and counted in ``skipped``.

    The parameters are not changed; every parameter's ``.grad`` is afterwards
    the very tensor it was before (``None`` stays ``None``), and buffers such
    as batch-norm running statistics are restored. Extra memory: one
    gradient-sized buffer (the sum of the parts' gradients) and a copy of the
    module's buffers. The global RNG state advances (dropout).
    """
    model, params = _checked_model(model)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model(x), y), got {_show(loss_fn)} "
                        f"of type {type(loss_fn).__name__}")
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, minimum=1)
    if isinstance(micro_batches, int) and not isinstance(micro_batches, bool) and micro_batches == 1:
        raise ValueError("micro_batches must be an integer >= 2, got micro_batches=1: the estimator compares "
                         "the gradient at two batch sizes (a part and the whole batch), and with one part "
                         "there is only one size, so |G|² and tr(Σ) cannot be separated")
    micro_batches = check_int("micro_batches", micro_batches, minimum=2)
    try:
        iterator = iter(batches)
    except TypeError:
        raise TypeError(f"batches must be an iterable of (x, y) batches, got {_show(batches)} "
                        f"of type {type(batches).__name__}") from None
    if max_batches is not None:
        iterator = itertools.islice(iterator, max_batches)

    was_training = model.training
    saved_grads = [p.grad for p in params]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    try:
        model.train()
        for p in params:
            p.grad = None
        per_batch, samples, skipped = _measure(model, params, loss_fn, iterator, micro_batches)
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        with torch.no_grad():
            for b, saved in zip(model.buffers(), saved_buffers):
                b.copy_(saved)
        model.train(was_training)
    return _summarise(per_batch, samples, skipped, micro_batches)


def _checked_model(model: Any) -> tuple[nn.Module, list[torch.nn.Parameter]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {_show(model)} of type {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # no all-reduce per part: this rank's batches only
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"model has no parameters that require grad (model={type(model).__name__}): "
                         "there is no gradient to measure")
    return model, params


def _split(batch: Any, index: int, micro_batches: int) -> tuple[Any, Any, int, int]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"batches must yield (x, y) tuples, got batch {index} of type {type(batch).__name__}")
    x, y = batch[0], batch[1]
    size = len(x)
    if size < micro_batches:
        raise ValueError(f"micro_batches must be <= the batch size, got micro_batches={micro_batches} but batch "
                         f"{index} has {size} samples (use a smaller micro_batches, or drop_last=True)")
    return x, y, size, size // micro_batches


def _measure(model, params, loss_fn, iterator, micro_batches):
    """Per batch ``(|G|², tr(Σ))`` estimates; samples used; batches skipped."""
    device = params[0].device
    total = [torch.zeros_like(p) for p in params]  # the one gradient-sized buffer
    per_batch: list[tuple[float, float]] = []
    samples = skipped = 0
    for index, batch in enumerate(iterator):
        x, y, _, part = _split(batch, index, micro_batches)
        x, y = _to(x, device), _to(y, device)
        small_sq = torch.zeros((), dtype=torch.float64, device=device)
        for buffer in total:
            buffer.zero_()
        for i in range(micro_batches):
            piece = slice(i * part, (i + 1) * part)
            loss = loss_fn(model(x[piece]), y[piece])
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return the batch's mean loss as a scalar tensor, got "
                                 f"{type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))}")
            loss.backward()
            grads, sums = [], []
            for p, buffer in zip(params, total):
                if p.grad is not None:  # a parameter this part did not reach has a zero gradient
                    grads.append(p.grad)
                    sums.append(buffer)
                    p.grad = None
            small_sq += squared_norm(grads)
            if grads:
                torch._foreach_add_(sums, grads)
        big_sq = squared_norm(total) / micro_batches**2
        small, big = torch.stack([small_sq.to(big_sq.device) / micro_batches, big_sq]).tolist()
        if not (math.isfinite(small) and math.isfinite(big)):
            skipped += 1
            continue
        per_batch.append(two_sizes(small, big, part, micro_batches))
        samples += part * micro_batches
    return per_batch, samples, skipped


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor) and value.device != device:
        return value.to(device, non_blocking=True)
    return value


def _summarise(per_batch, samples, skipped, micro_batches) -> NoiseScale:
    if not per_batch:
        if skipped:
            raise ValueError(f"every batch had a non-finite gradient ({skipped} skipped): nothing to estimate from "
                             "(check the loss, or the loss scale under mixed precision)")
        raise ValueError("batches is empty: the estimate needs at least one batch")
    estimates = np.asarray(per_batch, dtype=np.float64)
    grad_sq, trace_cov = estimates.mean(axis=0)
    if not grad_sq > 0:
        what = "is zero" if np.all(estimates == 0) else f"is estimated as {grad_sq:.3g} <= 0"
        raise ValueError(f"the gradient {what}: the noise scale tr(Σ)/|G|² is undefined. A zero gradient means "
                         "the model is at a stationary point of loss_fn on these batches (or loss_fn does not "
                         "depend on the parameters); a negative estimate means the gradient is too small against "
                         "its noise for these batches: use more batches or larger ones")
    return NoiseScale(b_simple=float(trace_cov / grad_sq), trace_cov=float(trace_cov), grad_sq=float(grad_sq),
                      interval=_bootstrap(estimates), samples=samples, batches=len(per_batch), skipped=skipped,
                      micro_batches=micro_batches)


def _bootstrap(estimates: np.ndarray) -> tuple[float, float]:
    """The 5th and 95th percentiles of the ratio of means, resampling batches."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = rng.integers(0, len(estimates), size=(BOOTSTRAP_RESAMPLES, len(estimates)))
    grad_sq = estimates[picks, 0].mean(axis=1)
    trace_cov = estimates[picks, 1].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(grad_sq > 0, trace_cov / grad_sq, np.inf)
    low, high = np.quantile(ratio, [0.05, 0.95], method="inverted_cdf")
    return float(low), float(high)
