"""Per-feature standardisation statistics for ``WindowLoader(normalize=...)``."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastbatch._checks import _show

# Rows per pass when computing statistics, so a memory-mapped series is read
# in blocks and never held twice in RAM.
_BLOCK_ROWS = 1 << 20


def feature_stats(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each column of ``(N, F)`` ``data``, in float64, NaNs ignored.

    Blocks are merged with Chan's parallel update, which stays accurate where
    ``E[x^2] - E[x]^2`` would cancel.  A constant column gets ``std = 1`` so it
    maps to zero instead of dividing by zero.
    """
    n_features = data.shape[1]
    count = np.zeros(n_features)
    mean = np.zeros(n_features)
    m2 = np.zeros(n_features)
    for start in range(0, data.shape[0], _BLOCK_ROWS):
        block = np.asarray(data[start : start + _BLOCK_ROWS], dtype=np.float64)
        n_b = np.sum(~np.isnan(block), axis=0).astype(np.float64)
        if not n_b.any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(n_b > 0, np.nansum(block, axis=0) / np.maximum(n_b, 1), 0.0)
            m2_b = np.nansum((block - mean_b) ** 2, axis=0)
        total = count + n_b
        delta = mean_b - mean
        safe = np.maximum(total, 1)
        mean = mean + delta * n_b / safe
        m2 = m2 + m2_b + delta**2 * count * n_b / safe
        count = total
    if not count.all():
        raise ValueError("normalize=True needs at least one non-NaN value in every feature")
    std = np.sqrt(m2 / count)
    std[std == 0] = 1.0
    return mean, std


def resolve_normalize(normalize: Any, data: np.ndarray, out_dtype: np.dtype):
    """``None``/``False`` -> no standardisation; ``True`` -> statistics of ``data``; ``(mean, std)`` -> those."""
    checked = check_normalize(normalize, data.shape[1], out_dtype)
    if checked is True:
        return feature_stats(data)
    return (None, None) if checked is None else checked


def check_normalize(normalize: Any, n_features: int, out_dtype: np.dtype):
    """``normalize`` checked without reading any data: ``None``, ``True`` or ``(mean, std)`` as float64 arrays."""
    if normalize is None or normalize is False:
        return None
    if out_dtype.kind != "f" or out_dtype.itemsize < 4:
        raise TypeError(
            f"normalize needs a float32 or float64 batch dtype, got normalize={_show(normalize)} with dtype={out_dtype}"
        )
    if normalize is True:
        return True
    try:
        mean, std = normalize
        mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (n_features,)).copy()
        std = np.broadcast_to(np.asarray(std, dtype=np.float64), (n_features,)).copy()
    except (TypeError, ValueError):
        raise TypeError(
            f"normalize must be None, True (statistics of the data) or (mean, std) with one value "
            f"per feature ({n_features}), got {_show(normalize)}"
        ) from None
    if not (np.all(np.isfinite(std)) and np.all(std > 0) and np.all(np.isfinite(mean))):
        raise ValueError(f"normalize=(mean, std) needs finite means and positive finite stds, got {_show(normalize)}")
    return mean, std
