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
    ``E[x^2] - E[x]^2`` would cancel.  The sums run on values divided by a
    power of two at least the largest magnitude seen so far (exact, so the
    statistics are those of the unscaled values), so float64 data up to its
    largest value neither overflows when squared nor loses its spread.  A
    constant column gets ``std = 1`` so it maps to zero instead of dividing
    by zero.  An infinite value, or a spread beyond float64, is refused
    naming its feature: it would make every standardised value NaN.
    """
    n_features = data.shape[1]
    count = np.zeros(n_features)
    mean = np.zeros(n_features)  # in units of `scale`, like m2 in units of scale**2
    m2 = np.zeros(n_features)
    scale = np.ones(n_features)
    for start in range(0, data.shape[0], _BLOCK_ROWS):
        block = np.asarray(data[start : start + _BLOCK_ROWS], dtype=np.float64)
        _refuse_infinite(block, start)
        n_b = np.sum(~np.isnan(block), axis=0).astype(np.float64)
        if not n_b.any():
            continue
        # Rescaling the running sums by a power of two is exact: only the scale's exponent moves.
        new_scale = np.maximum(scale, _power_of_two_above(np.fmax.reduce(np.abs(block), axis=0, initial=0.0)))
        mean, m2, scale = mean * (scale / new_scale), m2 * (scale / new_scale) ** 2, new_scale
        block = block / scale
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
        raise ValueError(
            "normalize=True needs at least one non-NaN value in every feature, "
            f"but feature {int(np.argmin(count))} holds only NaN"
        )
    with np.errstate(over="ignore"):
        mean, std = mean * scale, np.sqrt(m2 / count) * scale
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        f = int(np.argmax(bad))
        raise ValueError(
            f"normalize=True: feature {f} has mean {mean[f]} and std {std[f]}, beyond float64; "
            "rescale that feature or pass normalize=(mean, std)"
        )
    std[std == 0] = 1.0
    return mean, std


def _power_of_two_above(values: np.ndarray) -> np.ndarray:
    """The smallest power of two ``>= values`` (1 for zero), element-wise, at most ``2**1023``.

    Above ``2**1023`` (float64's largest power of two) a value divided by the
    cap is below 2, which still squares and sums without overflow.
    """
    mantissa, exponent = np.frexp(values)
    exponent = np.minimum(exponent - (mantissa == 0.5), 1023)
    return np.where(values > 0, np.ldexp(1.0, exponent), 1.0)


def _refuse_infinite(block: np.ndarray, first_row: int) -> None:
    """Raise naming the feature and row of the first infinite value of ``block``."""
    infinite = np.isinf(block)
    if infinite.any():
        row, f = np.argwhere(infinite)[0]
        raise ValueError(
            f"normalize=True needs finite values, but feature {int(f)} holds {block[row, f]} at row "
            f"{first_row + int(row)}: its mean and std would not be finite; replace infinite values "
            "(NaN is skipped) or pass normalize=(mean, std)"
        )


def resolve_normalize(checked: Any, data: np.ndarray):
    """``(mean, std)``, or ``(None, None)``, from what :func:`check_normalize` returned: ``True`` reads ``data``."""
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


def check_stats(mean: Any, std: Any, n_features: int, out_dtype: np.dtype):
    """``SlidingWindows.gather``'s ``mean``/``std``: ``(None, None)`` or float64 arrays a kernel can read.

    The kernel reads ``mean[f]`` and ``std[f]`` for every feature without
    bounds checks, so each must be exactly ``n_features`` long.
    """
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise TypeError(f"mean and std go together: give both or neither, got mean={_show(mean)}, std={_show(std)}")
    if out_dtype.kind != "f" or out_dtype.itemsize < 4:
        raise TypeError(f"mean and std standardise into float32 or float64 outputs, got outputs of dtype {out_dtype}")
    return _check_stat("mean", mean, n_features), _check_stat("std", std, n_features)


def _check_stat(name: str, value: Any, n_features: int) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a 1-D array of real numbers (cast to float64), got {_show(value)}")
    if array.shape != (n_features,):
        raise ValueError(
            f"{name} must be a 1-D array of {n_features} values (one per feature), got shape {array.shape}"
        )
    array = np.ascontiguousarray(array, dtype=np.float64)
    bad = ~np.isfinite(array) if name == "mean" else ~(np.isfinite(array) & (array > 0))
    if bad.any():
        allowed = "finite" if name == "mean" else "finite and > 0"
        f = int(np.argmax(bad))
        raise ValueError(f"{name} must be {allowed} for every feature, got {name}[{f}]={array[f]} in {_show(value)}")
    return array
