"""Devices: parsing ``device=``, choosing the placement, and the device-resident gather."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastbatch._checks import _show
from fastbatch.windows import SlidingWindows

# placement="auto" keeps the series on the GPU when it takes at most this
# fraction of the free device memory: the rest stays for the model, its
# activations and the allocator's slack.
DEVICE_RESIDENT_FRACTION = 0.25
PLACEMENTS = ("auto", "host", "device")
# Rows uploaded per host-to-device copy when a series moves to the GPU, so a
# strided or memory-mapped series never needs a second full copy in RAM.
_UPLOAD_ROWS_BYTES = 64 << 20


def resolve_device(device: Any) -> torch.device:
    """``None``/"cpu"/"cuda"/"cuda:1"/``torch.device`` -> ``torch.device``, checked."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"device must be None, 'cpu', 'cuda', 'cuda:N' or a torch.device, got {_show(device)}"
            ) from None
    if not isinstance(device, torch.device):
        raise TypeError(
            f"device must be None, 'cpu', 'cuda', 'cuda:N' or a torch.device, "
            f"got {_show(device)} of type {type(device).__name__}"
        )
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device must be a CPU or CUDA device, got device={str(device)!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but torch sees no CUDA device here")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device={str(device)!r} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


def choose_placement(placement: str, device: torch.device, windows: SlidingWindows) -> str:
    """'host' or 'device' for ``placement`` in :data:`PLACEMENTS` (validated by the caller)."""
    if device.type != "cuda":
        if placement == "device":
            raise ValueError("placement='device' needs a CUDA device; got device='cpu'")
        return "host"
    if placement != "auto":
        return placement
    return "device" if windows.data.nbytes <= DEVICE_RESIDENT_FRACTION * usable_memory(device) else "host"


def usable_memory(device: torch.device) -> int:
    """Bytes this process can still allocate on ``device``.

    Not the card's free memory alone: what the caching allocator holds but
    does not use is available to us, and ``torch.cuda.set_per_process_memory_fraction``
    caps what we may reserve in all.
    """
    free, total = torch.cuda.mem_get_info(device)
    fraction = torch.cuda.get_per_process_memory_fraction(device) \
        if hasattr(torch.cuda, "get_per_process_memory_fraction") else 1.0
    return usable_bytes(free, total, fraction, torch.cuda.memory_reserved(device),
                        torch.cuda.memory_allocated(device))


def usable_bytes(free: int, total: int, fraction: float, reserved: int, allocated: int) -> int:
    """``usable_memory``'s arithmetic: cached-but-unused memory plus what may still be reserved."""
    may_reserve = max(0, int(fraction * total) - reserved)
    return max(0, reserved - allocated) + min(free, may_reserve)


def upload(array: np.ndarray, device: torch.device, out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy an ``(N, F)`` array of any strides to ``device`` (into ``out`` if given) in row blocks.

    Blocks keep a strided or memory-mapped series from ever needing a second
    full copy in RAM.
    """
    if out is None:
        torch_dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype
        out = torch.empty(array.shape, dtype=torch_dtype, device=device)
    rows = max(1, _UPLOAD_ROWS_BYTES // max(1, array.strides[0] if array.strides[0] > 0 else array.itemsize))
    for start in range(0, array.shape[0], rows):
        block = np.ascontiguousarray(array[start : start + rows])
        out[start : start + block.shape[0]].copy_(torch.from_numpy(block))
    return out


class DeviceWindows:
    """The series on the device and each chunk built there by index arithmetic.

    ``x = data[starts[:, None] + arange(T) * dilation]`` and likewise ``y``: one
    indexing kernel per chunk, no host work per window and no per-batch copy
    over PCIe.  Many series are laid end to end on the device (a list of
    series is uploaded series by series); a window's first row is its
    series' first row plus its place in the series times the stride.  The
    cast and the standardisation use the same IEEE operations as the host
    kernel, so both paths give the same bits.  Plain torch code: on a CPU
    ``device`` it runs the same arithmetic (the placement parity test does).
    """

    def __init__(self, windows: SlidingWindows, device: torch.device, out_dtype: torch.dtype,
                 mean: np.ndarray | None, std: np.ndarray | None) -> None:
        self.windows = windows
        self.device = device
        self.out_dtype = out_dtype
        w = windows
        self.data = upload_rows(w.layout.arrays(), device)
        self.stride = w.geometry.stride
        if w.many_series:
            self.row_starts = torch.as_tensor(w.layout.row_starts.astype(np.int64), device=device)
            self.offsets = torch.as_tensor(w.series_offsets[:-1].astype(np.int64), device=device)
        self.x_offsets = torch.arange(w.window, device=device) * w.dilation
        self.y_offsets = torch.arange(w.horizon, device=device) + (w.window - 1) * w.dilation + 1
        all_columns = w.n_targets == w.n_features and np.array_equal(w.target_columns, np.arange(w.n_features))
        self.columns = None if all_columns else torch.as_tensor(w.target_columns, device=device)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float64, device=device)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float64, device=device)

    def chunk(self, ids: torch.Tensor, series: torch.Tensor | None, series_ids: bool) -> tuple:
        """The chunk's fields, as the host gather makes them: ``(x, y[, series])``."""
        x, y = self.gather(ids, series if self.windows.many_series else None)
        return (x, y, series) if series_ids else (x, y)

    def gather(self, ids: torch.Tensor, series: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of windows ``ids`` as ``(n, T, F)`` and ``(n, H, n_targets)``; ``series`` with many series."""
        ids = ids.to(torch.int64)
        if series is None:
            starts = ids * self.stride
        else:
            starts = self.row_starts[series] + (ids - self.offsets[series]) * self.stride
        x = self.data[starts[:, None] + self.x_offsets]
        y = self.data[starts[:, None] + self.y_offsets]
        if self.columns is not None:
            y = y.index_select(2, self.columns)
        return self._transform(x, None), self._transform(y, self.columns)

    def _transform(self, values: torch.Tensor, columns) -> torch.Tensor:
        if self.mean is None:
            return values.to(self.out_dtype)
        mean = self.mean if columns is None else self.mean[columns]
        std = self.std if columns is None else self.std[columns]
        return ((values.to(torch.float64) - mean) / std).to(self.out_dtype)


def upload_rows(arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """``(N_s, F)`` arrays laid end to end in one device tensor, uploaded in row blocks."""
    first = arrays[0]
    torch_dtype = torch.from_numpy(np.empty(0, first.dtype)).dtype
    out = torch.empty((sum(a.shape[0] for a in arrays), first.shape[1]), dtype=torch_dtype, device=device)
    at = 0
    for a in arrays:
        upload(a, device, out[at : at + a.shape[0]])
        at += a.shape[0]
    return out
