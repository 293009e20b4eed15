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
    free, _total = torch.cuda.mem_get_info(device)
    return "device" if windows.data.nbytes <= DEVICE_RESIDENT_FRACTION * free else "host"


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy an ``(N, F)`` array of any strides to ``device`` in row blocks (no full host copy)."""
    torch_dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype
    out = torch.empty(array.shape, dtype=torch_dtype, device=device)
    rows = max(1, _UPLOAD_ROWS_BYTES // max(1, array.strides[0] if array.strides[0] > 0 else array.itemsize))
    for start in range(0, array.shape[0], rows):
        block = np.ascontiguousarray(array[start : start + rows])
        out[start : start + block.shape[0]].copy_(torch.from_numpy(block))
    return out


class DeviceWindows:
    """The series on the GPU and each batch built there by index arithmetic.

    ``x = data[starts[:, None] + arange(T) * dilation]`` and likewise ``y``: one
    gather kernel per chunk, no host work per batch and no per-batch copy over
    PCIe.  The cast and the standardisation use the same IEEE operations as the
    host kernel, so both paths give the same bits.
    """

    def __init__(self, windows: SlidingWindows, device: torch.device, out_dtype: torch.dtype,
                 mean: np.ndarray | None, std: np.ndarray | None) -> None:
        self.windows = windows
        self.device = device
        self.out_dtype = out_dtype
        self.data = upload(windows.data, device)
        w = windows
        self.x_offsets = torch.arange(w.window, device=device) * w.dilation
        self.y_offsets = torch.arange(w.horizon, device=device) + (w.window - 1) * w.dilation + 1
        all_columns = w.n_targets == w.n_features and np.array_equal(w.target_columns, np.arange(w.n_features))
        self.columns = None if all_columns else torch.as_tensor(w.target_columns, device=device)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float64, device=device)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float64, device=device)

    def ids_tensor(self, ids: np.ndarray) -> torch.Tensor:
        """Window ids to the device (one upload per epoch or chunk)."""
        return torch.from_numpy(np.ascontiguousarray(ids)).to(self.device, non_blocking=False)

    def gather(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows
        starts = ids.to(torch.int64) * w._kernel_stride
        x = self.data[starts[:, None] + self.x_offsets]
        y = self.data[starts[:, None] + self.y_offsets]
        if self.columns is not None:
            y = y.index_select(2, self.columns)
        x, y = self._transform(x, slice(None)), self._transform(y, self.columns)
        if w.univariate:
            x, y = x.reshape(x.shape[0], w.window), y.reshape(y.shape[0], w.horizon)
        return x, y

    def _transform(self, values: torch.Tensor, columns) -> torch.Tensor:
        if self.mean is None:
            return values.to(self.out_dtype)
        mean = self.mean if columns is None or isinstance(columns, slice) else self.mean[columns]
        std = self.std if columns is None or isinstance(columns, slice) else self.std[columns]
        return ((values.to(torch.float64) - mean) / std).to(self.out_dtype)
