"""McCandlish et al.'s (2018) trade-off between steps and samples, fitted to measured runs to a target loss.

Training to a given loss with batches of ``B`` takes ``S`` steps and
``E = B S`` samples, and the runs of different ``B`` lie on

    (S / S_min - 1) (E / E_min - 1) = 1,

which, with ``E = B S``, is ``S = S_min + E_min / B``: linear in ``1 / B``.
:func:`fit_critical` fits ``S_min`` and ``E_min`` to the measured ``(B, S)``
by least squares on the relative residual ``(S - Ŝ) / S`` (the same as on
``E``, since ``E/Ê = S/Ŝ``), so that runs of a few steps and runs of
thousands weigh alike; ``B_crit = E_min / S_min``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class CriticalFit:
    s_min: float  # steps at an infinite batch
    e_min: float  # samples in the limit of small batches
    b_crit: float  # E_min / S_min: the batch size that takes twice S_min steps and twice E_min samples
    rms_relative_error: float  # of the fitted steps against the measured ones

    def steps(self, batch_size: float) -> float:
        """The fitted steps to the target at ``batch_size``."""
        return self.s_min + self.e_min / batch_size


def fit_critical(batch_sizes: Sequence[float], steps: Sequence[float]) -> CriticalFit:
    """Fit ``S = S_min + E_min / B`` to measured steps to a target; both coefficients kept >= 0.

    Raises ``ValueError`` for fewer than two distinct batch sizes, unequal
    lengths, or a size or step count that is not a finite number > 0.
    """
    b = np.asarray(batch_sizes, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    if b.shape != s.shape or b.ndim != 1:
        raise ValueError(f"batch_sizes and steps must be 1-D and of equal length, got {b.shape} and {s.shape}")
    for name, values in (("batch_sizes", b), ("steps", s)):
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"{name} must be finite numbers > 0, got {values.tolist()}")
    if len(np.unique(b)) < 2:
        raise ValueError(f"the fit needs at least two distinct batch sizes, got {b.tolist()}")
    # Relative residuals: divide each equation S_i = S_min + E_min / B_i by S_i.
    design = np.stack([1 / s, 1 / (b * s)], axis=1)
    target = np.ones_like(s)
    (s_min, e_min), *_ = np.linalg.lstsq(design, target, rcond=None)
    if s_min < 0 or e_min < 0:  # the constrained optimum lies on an edge: refit the other alone
        candidates = []
        for column in (0, 1):
            x = design[:, column]
            coefficient = max(0.0, float(x @ target / (x @ x)))
            candidates.append((np.sum((design[:, column] * coefficient - target) ** 2), column, coefficient))
        _, column, coefficient = min(candidates)
        s_min, e_min = (coefficient, 0.0) if column == 0 else (0.0, coefficient)
    fitted = s_min + e_min / b
    rms = float(np.sqrt(np.mean(((s - fitted) / s) ** 2)))
    b_crit = e_min / s_min if s_min > 0 else math.inf
    return CriticalFit(s_min=float(s_min), e_min=float(e_min), b_crit=float(b_crit), rms_relative_error=rms)


def fastest(times: dict[int, float]) -> int:
    """The batch size of least time to the target; sizes that never reached it (``inf``) count as slowest."""
    if not times:
        raise ValueError("no batch size was timed")
    return min(times, key=lambda size: (times[size], size))
