"""The two-size estimator of McCandlish et al. (2018, appendix A), shared by both forms.

A gradient ``g_b`` averaged over ``b`` independent samples has
``E|g_b|² = |G|² + tr(Σ)/b``. Measured at two sizes, ``b`` and ``B = n·b``,
the two equations give ``|G|²`` and ``tr(Σ)`` without bias.
"""

from __future__ import annotations

from typing import Sequence

import torch


def squared_norms(*groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[Σ |t|² for t in group]`` for each group: float64, on the first tensor's device, no host sync.

    Each tensor's squares are summed by PyTorch's pairwise (cascade) summation
    in float32 or float64 (relative error about 1e-8 at 2·10⁷ float32
    elements, where ``torch.linalg.vector_norm`` of float32 is off by 0.3 %),
    the tensors' sums in float64. Upcasting every gradient to float64 instead
    costs a copy of it: it doubled the cost of a step's statistics. The
    temporary is one tensor's squares, never the whole gradient's.
    """
    if not any(groups):
        return torch.zeros(len(groups), dtype=torch.float64)
    device = next(t for group in groups for t in group).device
    sums = [torch.stack([_sum_of_squares(t).to(device) for t in group]).sum() if group
            else torch.zeros((), dtype=torch.float64, device=device) for group in groups]
    return torch.stack(sums)


def _sum_of_squares(t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # bfloat16 and float16 lose the sum's precision
    return (t * t).sum(dtype=torch.float64) if t.dtype == torch.float64 else (t * t).sum().double()


def squared_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ |t|²`` over ``tensors`` as a float64 0-d tensor (see :func:`squared_norms`)."""
    return squared_norms(tensors)[0]


def two_sizes(small_sq, big_sq, b: float, n: float):
    """``(|G|², tr(Σ))`` from the mean ``|g_b|²`` of ``n`` gradients of ``b`` samples and ``|g_B|²`` of their mean.

    ``small_sq`` and ``big_sq`` may be floats or tensors; ``n >= 2``. Linear in both.
    """
    big_b = n * b
    grad_sq = (big_b * big_sq - b * small_sq) / (big_b - b)
    trace_cov = (small_sq - big_sq) / (1.0 / b - 1.0 / big_b)
    return grad_sq, trace_cov
