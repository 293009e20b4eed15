"""Goodput: the sweep's throughput times the statistical efficiency the gradient noise scale predicts.

McCandlish et al. (2018): to reach a given loss, training with batches of
``B`` takes ``S = S_min (1 + B_noise / B)`` steps and ``E = E_min (1 + B /
B_noise)`` samples.  A sample at size ``B`` is therefore worth
``E(B) = (B_noise + B0) / (B_noise + B)`` of one at the smallest size swept,
``B0``, and the time to a given loss goes as ``1 / goodput`` with
``goodput = samples/s x E(B)`` (Pollux, Qiao et al. 2021).  Pure functions of
the report's rows and the measurement, so they can be tested without a trial.
"""

from __future__ import annotations

import math
from typing import Any

from bench.search import SAFE_FRACTION, smoothed_rates

def parse_reference_lr(text: str) -> tuple[float, int]:
    """``"1e-3@32"`` -> ``(0.001, 32)``: a learning rate tuned at a batch size."""
    lr_text, sep, size_text = str(text).partition("@")
    allowed = "LR@B, a learning rate > 0 and the batch size it was tuned at (an integer >= 1), e.g. 1e-3@32"
    if not sep:
        raise ValueError(f"must be {allowed}; got {text!r}")
    try:
        lr = float(lr_text)
    except ValueError:
        lr = math.nan
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a finite number > 0, got {lr_text.strip()!r} in {text!r} "
                         f"(the form is {allowed})")
    size_text = size_text.strip()
    if not size_text.isdigit() or int(size_text) < 1:
        raise ValueError(f"the batch size must be an integer >= 1, got {size_text!r} in {text!r} "
                         f"(the form is {allowed})")
    return lr, int(size_text)


def efficiency(b_noise: float, batch_size: float, smallest: float) -> float:
    """``(B_noise + B0) / (B_noise + B)``: what a sample at ``batch_size`` is worth against one at ``smallest``."""
    return (b_noise + smallest) / (b_noise + batch_size)


def adascale_gain(trace_cov: float, grad_sq: float, reference: float, batch_size: float) -> float:
    """``(tr(Σ)/B0 + |G|²) / (tr(Σ)/B + |G|²)``: AdaScale's learning-rate factor from ``reference`` to ``batch_size``.

    Between 1 (no noise: a larger batch is no better a step) and ``B/B0``
    (all noise: the linear rule).
    """
    return (trace_cov / reference + grad_sq) / (trace_cov / batch_size + grad_sq)


def learning_rates(noise: dict[str, Any] | None, reference: tuple[float, int], batch_size: int) -> dict[str, Any]:
    """The learning rate for ``batch_size`` from ``reference = (lr, B0)``: linear, square-root and AdaScale rules."""
    lr, b0 = reference
    k = batch_size / b0
    out = {"reference_lr": lr, "reference_batch_size": b0, "batch_size": batch_size,
           "linear": lr * k, "sqrt": lr * math.sqrt(k), "adascale": None, "adascale_gain": None}
    if noise and noise.get("trace_cov") is not None and noise.get("grad_sq"):
        gain = adascale_gain(noise["trace_cov"], noise["grad_sq"], b0, batch_size)
        out.update(adascale_gain=gain, adascale=lr * gain)
    return out


def lr_note(rates: dict[str, Any]) -> str:
    """One line for the summary: the learning rate for the recommended size by each rule."""
    b0, b = rates["reference_batch_size"], rates["batch_size"]
    text = (f"Learning rate for {b}, from {rates['reference_lr']:.3g} at {b0}: "
            f"{rates['linear']:.3g} by the linear rule (x{b / b0:.3g}, for SGD, with warm-up), "
            f"{rates['sqrt']:.3g} by the square-root rule (x{math.sqrt(b / b0):.3g}, for Adam-like optimisers)")
    if rates.get("adascale") is not None:
        text += (f", {rates['adascale']:.3g} by the measured noise (AdaScale gain x{rates['adascale_gain']:.3g}, "
                 f"for SGD)")
    return text + "; confirm with a short run."


def apply_goodput(rows: list[dict[str, Any]], boundary: dict[str, Any], b_noise: float) -> dict[str, Any]:
    """Add ``statistical_efficiency``, ``goodput`` and ``predicted_time_vs_best`` to ``rows``; the goodput choice.

    Each size's end-to-end rate is first smoothed as the throughput rule does
    (:func:`bench.search.smoothed_rates`), so one disturbed trial moves
    neither choice.  The choice is the size of highest goodput among those
    that ran and are at most ``SAFE_FRACTION`` of the largest size that fits.
    """
    ok = [r for r in rows if r["status"] == "ok" and r.get("train_samples_per_sec")]
    for row in rows:
        row.update(statistical_efficiency=None, goodput=None, predicted_time_vs_best=None)
    if not ok:
        return {"goodput_batch_size": None}
    rate = smoothed_rates(ok)
    smallest = min(rate)
    goodput = {b: r * efficiency(b_noise, b, smallest) for b, r in rate.items()}
    best = max(goodput.values())
    for row in ok:
        b = row["batch_size"]
        row.update(statistical_efficiency=efficiency(b_noise, b, smallest), goodput=goodput[b],
                   predicted_time_vs_best=best / goodput[b])
    ceiling = math.inf
    if boundary.get("reached") and boundary.get("largest_ok"):
        ceiling = SAFE_FRACTION * boundary["largest_ok"]
    safe = [b for b in goodput if b <= ceiling] or [min(goodput)]
    chosen = max(safe, key=goodput.__getitem__)
    return {"goodput_batch_size": chosen, "goodput_samples_per_sec": goodput[chosen], "b_noise": b_noise,
            "smallest_batch_size": smallest, "goodput": goodput}
