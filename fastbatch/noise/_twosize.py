"""The two-size estimator of McCandlish et al. (2018, appendix A), shared by both forms.

A gradient ``g_b`` averaged over ``b`` independent samples has
``E|g_b|² = |G|² + tr(Σ)/b``. Measured at two sizes, ``b`` and ``B = n·b``,
the two equations give ``|G|²`` and ``tr(Σ)`` without bias.
"""

from __future__ import annotations

from typing import Sequence

import torch


def squared_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ |t|²`` over ``tensors`` as a float64 0-d tensor on their device, with no host sync."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    norms = torch._foreach_norm(list(tensors), 2, dtype=torch.float64)
    device = norms[0].device  # parameters split over devices: add up on the first one's
    return torch.stack([n.to(device) for n in norms]).square().sum()


def two_sizes(small_sq, big_sq, b: float, n: float):
    """``(|G|², tr(Σ))`` from the mean ``|g_b|²`` of ``n`` gradients of ``b`` samples and ``|g_B|²`` of their mean.

    ``small_sq`` and ``big_sq`` may be floats or tensors; ``n >= 2``.
    """
    big_b = n * b
    grad_sq = (big_b * big_sq - b * small_sq) / (big_b - b)
    trace_cov = (small_sq - big_sq) / (1.0 / b - 1.0 / big_b)
    return grad_sq, trace_cov
