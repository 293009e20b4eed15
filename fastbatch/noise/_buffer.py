"""One gradient-sized buffer whose squared norm costs a few kernel launches, whatever the number of parameters."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fastbatch._jit import REASSOCIATE, jit

# Off the CPU, squares are summed a chunk at a time by a pairwise sum (off by about 3e-8 at 2**22
# float32 elements), the caching allocator serving the chunk's temporary.
CHUNK = 1 << 22


class GradientBuffer:
    """A tensor per parameter, laid out in one flat tensor when the parameters share a device and dtype.

    Per-parameter reductions cost a few small operations each, which for a
    small model on a CPU cost more than the arithmetic; over the flat tensor
    the same reduction is two operations per chunk. Half-precision gradients
    are kept in float32.

    On a CPU, with one flat tensor (``fused``), the reductions are compiled
    loops that accumulate in float64 (the float32 products are exact there,
    so the sums are accurate to about 1e-16 of their size), and
    :meth:`difference` measures a new gradient against the held one while
    it copies it in: what a training step pays for the differenced estimator
    is one pass over its gradient and the buffer.
    """

    def __init__(self, params: Sequence[torch.Tensor], *, fuse: bool = True) -> None:
        dtypes = {_kept(p.dtype) for p in params}
        devices = {p.device for p in params}
        self._flat: torch.Tensor | None = None
        if len(dtypes) == 1 and len(devices) == 1:
            sizes = [p.numel() for p in params]
            self._flat = torch.zeros(sum(sizes), dtype=dtypes.pop(), device=devices.pop())
            self.views = [view.view(p.shape) for p, view in zip(params, self._flat.split(sizes))]
            whole = [self._flat]
        else:
            self.views = whole = [torch.zeros_like(p, dtype=_kept(p.dtype)) for p in params]
        self.fused = fuse and self._flat is not None and self._flat.device.type == "cpu"
        self._held = [view.numpy() for view in self.views] if self.fused else []
        self.chunks = [] if self.fused else [piece for tensor in whole for piece in tensor.view(-1).split(CHUNK)]

    def copy_(self, grads: Sequence[torch.Tensor]) -> None:
        torch._foreach_copy_(self.views, list(grads))

    def add_(self, grads: Sequence[torch.Tensor], alpha: float = 1.0) -> None:
        torch._foreach_add_(self.views, list(grads), alpha=alpha)

    def sub_(self, grads: Sequence[torch.Tensor]) -> None:
        torch._foreach_sub_(self.views, list(grads))

    def zero_(self) -> None:
        if self._flat is not None:
            self._flat.zero_()
        else:
            torch._foreach_zero_(self.views)

    def squared_norm(self) -> torch.Tensor:
        """``|buffer|²`` as a float64 0-d tensor, without a host sync."""
        if self.fused:
            return torch.tensor(squares(self._flat.numpy()), dtype=torch.float64)
        device = self.chunks[0].device
        sums = [c.square().sum().to(device, torch.float64) for c in self.chunks]
        return sums[0] if len(sums) == 1 else torch.stack(sums).sum()

    def difference(self, grads: Sequence[torch.Tensor], *, keep: bool = True) -> tuple[float, float, float]:
        """``(|g|², g·h, |h|²)`` of ``grads`` (g) and what the buffer held (h); the buffer then holds ``grads``.

        Only when :attr:`fused`. A compiled loop per parameter reads its
        gradient and its part of the buffer once, and writes the gradient
        over it: no second buffer, no temporary. ``keep=False`` leaves the
        buffer as it was (one pass that only reads).
        """
        if not self.fused:
            raise RuntimeError("difference() needs the flat CPU buffer (fused)")
        dtype = self._flat.dtype
        gg = gh = hh = 0.0
        for grad, held in zip(grads, self._held):
            if grad.dtype is not dtype:  # half precision, kept in float32
                grad = grad.to(dtype)
            try:
                grad = grad.numpy()  # any strides: the loop reads a copy of a gradient that is not contiguous
            except RuntimeError:  # a gradient that is part of a graph (create_graph=True)
                grad = grad.detach().numpy()
            a, b, c = difference_into(grad, held, keep)
            gg += a
            gh += b
            hh += c
        return gg, gh, hh


@jit(fastmath=REASSOCIATE)
def squares(a):
    """``Σ a[i]²``, accumulated in float64."""
    total = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        total += x * x
    return total


@jit(fastmath=REASSOCIATE)
def difference_into(a, b, write=True):
    """``(a·a, a·b, b·b)`` of two arrays of one shape, accumulated in float64; then ``b[:] = a`` if ``write``.

    One pass. Any number of dimensions; ``b`` C-contiguous, ``a`` of any
    strides (read through a copy unless C-contiguous).
    """
    a = a.ravel()
    b = b.reshape(b.size)
    aa = 0.0
    ab = 0.0
    bb = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        y = np.float64(b[i])
        aa += x * x
        ab += x * y
        bb += y * y
        if write:
            b[i] = a[i]
    return aa, ab, bb


def _kept(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
