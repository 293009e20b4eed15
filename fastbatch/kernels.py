"""Every compiled kernel of fastbatch, with the plain-numpy meaning of each.

The kernels are the hot path: they run without the GIL (the prefetch thread
relies on that), never allocate, and write only into the output arrays they
are given.  Each one has a reference implementation in the tests written with
plain numpy slicing.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from fastbatch._jit import jit, prange

# Numba's "workqueue" threading layer aborts the process when two threads
# launch parallel kernels at once; "omp" and "tbb" are safe.  The layer is
# only known after the first parallel launch, so launches are serialised
# until then, and for good if it turns out to be workqueue.
_launch_lock = threading.Lock()
_layer_is_threadsafe = False


def run_parallel(kernel, *args):
    """Call a ``parallel=True`` kernel, serialised where Numba's threading layer needs it."""
    global _layer_is_threadsafe
    if _layer_is_threadsafe:
        return kernel(*args)
    with _launch_lock:
        result = kernel(*args)
        try:
            _layer_is_threadsafe = numba.threading_layer() in ("omp", "tbb")
        except ValueError:  # no parallel launch yet (FASTBATCH_DISABLE_JIT)
            pass
        return result

# splitmix64 constants (Steele, Lea & Flood, 2014).  Every operand is uint64 so
# that Numba never promotes the arithmetic to float64.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@jit()
def mix64(z):
    """The splitmix64 finaliser: a bijection of uint64 with good avalanche."""
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@jit()
def shuffled_order(out, key):
    """Fill ``out`` with a permutation of ``range(len(out))`` drawn from ``key``.

    Fisher-Yates driven by the splitmix64 stream of ``key``: the result depends
    on ``key`` and ``len(out)`` only, never on threads, machine or library
    versions.  Reference: ``tests/test_kernels.py::reference_shuffled_order``.
    """
    n = out.shape[0]
    for i in range(n):
        out[i] = i
    state = key
    for i in range(n - 1, 0, -1):
        state = state + _GOLDEN
        # The modulo bias is below n / 2**64: invisible to any training run.
        j = np.int64(mix64(state) % np.uint64(i + 1))
        tmp = out[i]
        out[i] = out[j]
        out[j] = tmp


@jit(parallel=True)
def gather_windows(data, ids, stride, dilation, window, horizon, target_columns, out_x, out_y, mean=None, std=None):
    """Copy windows ``ids`` of ``data`` into ``out_x`` and ``out_y``, casting on the way.

    For ``b`` in ``range(len(ids))`` with ``s = ids[b] * stride`` and
    ``e = s + (window - 1) * dilation + 1``::

        out_x[b] = data[s : e : dilation]
        out_y[b] = data[e : e + horizon][:, target_columns]

    ``data`` is ``(N, F)`` with any strides; ``out_x`` is ``(n, window, F)``
    and ``out_y`` is ``(n, horizon, len(target_columns))``, both contiguous.
    The dtype conversion to the outputs' dtype happens in the same pass.

    With per-feature ``mean`` and ``std`` (float64 arrays of length ``F``),
    every value becomes ``(float64(v) - mean[f]) / std[f]`` before the cast:
    the same IEEE operations as the device path, so both give equal bits.
    Numba compiles the ``None`` case separately, with the branch removed.
    """
    n = ids.shape[0]
    n_features = data.shape[1]
    n_targets = target_columns.shape[0]
    for b in prange(n):
        s = np.int64(ids[b]) * stride
        for t in range(window):
            row = s + t * dilation
            for f in range(n_features):
                if mean is None:
                    out_x[b, t, f] = data[row, f]
                else:
                    out_x[b, t, f] = (np.float64(data[row, f]) - mean[f]) / std[f]
        e = s + (window - 1) * dilation + 1
        for h in range(horizon):
            for c in range(n_targets):
                col = target_columns[c]
                if mean is None:
                    out_y[b, h, c] = data[e + h, col]
                else:
                    out_y[b, h, c] = (np.float64(data[e + h, col]) - mean[col]) / std[col]
