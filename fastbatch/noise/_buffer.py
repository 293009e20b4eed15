"""One gradient-sized buffer whose squared norm costs a few kernel launches, whatever the number of parameters."""

from __future__ import annotations

from typing import Sequence

import torch

# Squares are summed a chunk at a time. On a CPU by torch.dot over chunks of 2**16 elements, whose float32
# accumulation is off by about 3e-8 at that length (2e-6 at 2**20, 2e-5 at 2**22): one pass and no
# temporary, where a temporary of the squares was fresh memory, paid in page faults, on every step.
# Elsewhere by a pairwise sum of the squares (3e-8 at 2**22), the caching allocator serving the temporary.
CPU_CHUNK = 1 << 16
CHUNK = 1 << 22


class GradientBuffer:
    """A tensor per parameter, laid out in one flat tensor when the parameters share a device and dtype.

    Per-parameter reductions cost a few small operations each, which for a
    small model on a CPU cost more than the arithmetic; over the flat tensor
    the same reduction is two operations per chunk. Half-precision gradients
    are kept in float32.
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        dtypes = {_kept(p.dtype) for p in params}
        devices = {p.device for p in params}
        if len(dtypes) == 1 and len(devices) == 1:
            flat = torch.zeros(sum(p.numel() for p in params), dtype=dtypes.pop(), device=devices.pop())
            self.views = [view.view(p.shape) for p, view in zip(params, flat.split([p.numel() for p in params]))]
            whole = [flat]
        else:
            self.views = whole = [torch.zeros_like(p, dtype=_kept(p.dtype)) for p in params]
        self.chunks = [piece for tensor in whole
                       for piece in tensor.view(-1).split(CPU_CHUNK if tensor.device.type == "cpu" else CHUNK)]

    def copy_(self, grads: Sequence[torch.Tensor]) -> None:
        torch._foreach_copy_(self.views, list(grads))

    def add_(self, grads: Sequence[torch.Tensor], alpha: float = 1.0) -> None:
        torch._foreach_add_(self.views, list(grads), alpha=alpha)

    def sub_(self, grads: Sequence[torch.Tensor]) -> None:
        torch._foreach_sub_(self.views, list(grads))

    def zero_(self) -> None:
        torch._foreach_zero_(self.chunks)

    def squared_norm(self) -> torch.Tensor:
        """``|buffer|²`` as a float64 0-d tensor, without a host sync."""
        device = self.chunks[0].device
        sums = [(torch.dot(c, c) if c.device.type == "cpu" else c.square().sum()).to(device, torch.float64)
                for c in self.chunks]
        return sums[0] if len(sums) == 1 else torch.stack(sums).sum()


def _kept(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
