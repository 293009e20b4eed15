"""Every compiled kernel of fastbatch, with the plain-numpy meaning of each.

The kernels are the hot path: they run without the GIL (the prefetch thread
relies on that), never allocate, and write only into the output arrays they
are given.  Each one has a reference implementation in the tests written with
plain numpy slicing.
"""

from __future__ import annotations

import os
import sys
import threading
import types

import numba
import numba.np.ufunc.parallel as _numba_parallel
import numpy as np

from fastbatch._jit import jit, prange

# Numba's "workqueue" threading layer aborts the process when two threads
# launch parallel kernels at once; "omp" and "tbb" are safe.  The layer is
# only known after the first parallel launch, so launches are serialised
# until then, and for good if it turns out to be workqueue.
_launch_lock = threading.Lock()
_layer_is_threadsafe = False

# GNU OpenMP cannot run a parallel region in a process forked after its
# threads started: Numba's "omp" layer then prints "fork() called from a
# process already using GNU OpenMP" and kills the process (DataLoader workers
# after any gather in the parent).  Each parallel kernel has a serial twin,
# compiled without parallel=True, which never touches the threading layer;
# run_parallel takes it in such a child and in DataLoader worker processes,
# where one thread per worker is also what avoids oversubscribing the cores.
_SERIAL: dict = {}
_forked_after_launch = False


def _note_fork() -> None:
    global _forked_after_launch
    # Numba's own flag for "threads launched"; assume launched if it ever moves.
    if getattr(_numba_parallel, "_is_initialized", True):
        _forked_after_launch = True


os.register_at_fork(after_in_child=_note_fork)


def parallel_kernel(fn):
    """``jit(parallel=True)`` of ``fn``, and its serial twin for :func:`run_parallel`.

    The twin is a copy of ``fn`` under another name: Numba's cache keys a
    compiled kernel by the function's name and bytecode, not its options, so
    under the same name the two would load each other's machine code.
    """
    kernel = jit(parallel=True)(fn)
    name = fn.__name__ + "_serial"
    twin = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    twin.__qualname__, twin.__doc__ = name, fn.__doc__
    _SERIAL[kernel] = jit()(twin)
    return kernel


def _serial_only() -> bool:
    """True in a DataLoader worker process, or in a process forked after Numba's threads started."""
    if _forked_after_launch:
        return True
    data = sys.modules.get("torch.utils.data")
    return data is not None and data.get_worker_info() is not None


def run_parallel(kernel, *args):
    """Call a :func:`parallel_kernel`, serially where OpenMP must not start, else serialised as the layer needs."""
    global _layer_is_threadsafe
    if _serial_only():
        return _SERIAL[kernel](*args)
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
    versions.  Reference: ``tests/reference.py::reference_shuffled_order``.
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


@parallel_kernel
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
    # The same loop as _copy_window, written out: calling it from this parfor
    # measured ~10 % slower (16.3 against 18.8 GB/s, wide setting).
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




@parallel_kernel
def gather_runs(flat, ids, step, run_x, run_y, out_x, out_y):
    """The contiguous case of :func:`gather_windows`, as runs of elements.

    When the data is C-contiguous, ``dilation == 1`` and the target is every
    feature in order, window ``b``'s input is the ``run_x = T * F`` elements of
    the flat data from ``s = ids[b] * step`` (``step = stride * F``) and its
    target the next ``run_y = H * F``::

        out_x[b] = flat[s : s + run_x]
        out_y[b] = flat[s + run_x : s + run_x + run_y]

    One unit-stride loop per window instead of one per step: LLVM turns it into
    wide loads and stores.  ``out_x``/``out_y`` are ``(n, run_x)`` and
    ``(n, run_y)``; the cast to their dtype happens in the same pass.
    """
    n = ids.shape[0]
    for b in prange(n):
        s = np.int64(ids[b]) * step
        # Slice assignment compiles to one strided-copy loop that LLVM
        # vectorises better than an explicit index loop (measured: ~1.4x).
        out_x[b, :] = flat[s : s + run_x]
        out_y[b, :] = flat[s + run_x : s + run_x + run_y]


# -- many series ----------------------------------------------------------------


@jit()
def _copy_window(src, row, b, dilation, window, horizon, target_columns, out_x, out_y, mean, std):
    """``out_x[b]``/``out_y[b]`` <- the window of ``src`` whose first input step is ``row``."""
    n_features = src.shape[1]
    for t in range(window):
        r = row + t * dilation
        for f in range(n_features):
            if mean is None:
                out_x[b, t, f] = src[r, f]
            else:
                out_x[b, t, f] = (np.float64(src[r, f]) - mean[f]) / std[f]
    e = row + (window - 1) * dilation + 1
    for h in range(horizon):
        for c in range(target_columns.shape[0]):
            col = target_columns[c]
            if mean is None:
                out_y[b, h, c] = src[e + h, col]
            else:
                out_y[b, h, c] = (np.float64(src[e + h, col]) - mean[col]) / std[col]


@parallel_kernel
def gather_concatenated(data, row_starts, offsets, ids, stride, dilation, window, horizon, target_columns,
                        out_x, out_y, series_out=None, mean=None, std=None):
    """:func:`gather_windows` for series laid end to end in one ``(N, F)`` array.

    Series ``s`` starts at row ``row_starts[s]`` and owns window ids
    ``offsets[s] <= i < offsets[s + 1]``; its local window ``i - offsets[s]``
    starts at ``row_starts[s] + (i - offsets[s]) * stride``, so no window
    crosses into the next series.  ``series_out[b]`` receives the series of
    ``ids[b]`` when given.
    """
    for b in prange(ids.shape[0]):
        i = np.int64(ids[b])
        s = np.searchsorted(offsets, i, side="right") - 1
        row = row_starts[s] + (i - offsets[s]) * stride
        _copy_window(data, row, b, dilation, window, horizon, target_columns, out_x, out_y, mean, std)
        if series_out is not None:
            series_out[b] = s


@parallel_kernel
def gather_series_list(arrays, offsets, ids, stride, dilation, window, horizon, target_columns,
                       out_x, out_y, series_out=None, mean=None, std=None):
    """:func:`gather_windows` over a ``numba.typed.List`` of ``(N_s, F)`` arrays, one per series.

    Window ``i`` of series ``s`` (``offsets[s] <= i < offsets[s + 1]``) starts
    at row ``(i - offsets[s]) * stride`` of ``arrays[s]``.
    """
    for b in prange(ids.shape[0]):
        i = np.int64(ids[b])
        s = np.searchsorted(offsets, i, side="right") - 1
        src = arrays[s]
        _copy_window(src, (i - offsets[s]) * stride, b, dilation, window, horizon, target_columns,
                     out_x, out_y, mean, std)
        if series_out is not None:
            series_out[b] = s


# -- computed epoch orders ---------------------------------------------------------

# Rounds of the Feistel network.  Four rounds make a strong pseudo-random
# permutation of a large domain (Luby & Rackoff, 1988), but over small domains
# (a few bits a half) measurably favour some orders; six rounds bring a
# 64-element domain to within noise of a random permutation (see
# tests/test_permutation.py).
FEISTEL_ROUNDS = 6
_ONE = np.uint64(1)
_ROTATE = np.uint64(0xD1B54A32D192ED03)


@jit()
def domain_bits(n):
    """The smallest ``k`` with ``2**k >= n``."""
    bits = 0
    while (_ONE << np.uint64(bits)) < np.uint64(n):
        bits += 1
    return bits


@jit()
def feistel(x, bits, key):
    """A keyed bijection of ``[0, 2**bits)``: an unbalanced Feistel network.

    ``x`` splits into a left half of ``bits // 2`` bits and a right half of
    the rest; each round maps ``(L, R)`` to ``(R, L ^ F(R))``, which is
    invertible whatever ``F`` is, so the whole network is a bijection.  The
    halves trade widths every round; with an even number of rounds they end
    where they started.  ``F`` is splitmix64's finaliser of ``R`` xor a round
    key, truncated to the width of ``L``.
    """
    la = np.uint64(bits // 2)
    lb = np.uint64(bits) - la
    left = x >> lb
    right = x & ((_ONE << lb) - _ONE)
    for i in range(FEISTEL_ROUNDS):
        f = mix64(right ^ (key + np.uint64(i + 1) * _GOLDEN))
        new_right = (left ^ f) & ((_ONE << la) - _ONE)
        left = right
        right = new_right
        la, lb = lb, la
    return (left << lb) | right


@jit()
def rotation(n, key):
    """The keyed offset that :func:`permute_index` adds: uniform in ``[0, n)``."""
    return mix64(key ^ _ROTATE) % n


@jit()
def permute_index(x, n, bits, key, shift):
    """Where ``x`` goes under the keyed bijection of ``[0, n)``.

    ``bits = domain_bits(n)`` and ``shift = rotation(n, key)``, passed in so a
    caller evaluating many positions computes them once.  Cycle-walking:
    apply :func:`feistel` on ``[0, 2**bits)`` until the value falls inside
    ``[0, n)``; the values of ``x``'s cycle outside ``[0, n)`` are skipped, so
    the result is again a bijection, and ``2**bits < 2n`` keeps the expected
    number of steps below two.  The final rotation by ``shift`` makes every
    id equally likely at every position, whatever the size.
    """
    y = feistel(x, bits, key)
    while y >= n:
        y = feistel(y, bits, key)
    y = y + shift
    return y - n if y >= n else y


@jit()
def block_index(p, n, key, block_windows, pool_blocks, n_blocks, block_bits, block_shift, offset):
    """Window id at position ``p`` of the block-shuffled order of ``n`` windows.

    Windows form blocks of ``block_windows`` consecutive ids; blocks are
    permuted and taken ``pool_blocks`` at a time into a pool whose windows are
    permuted again.  So each stretch of ``pool_blocks * block_windows``
    positions reads a few runs of neighbouring windows, and every window
    still appears exactly once.  The ``n % block_windows`` windows of the
    partial block join the last pool, and all ids are rotated by the keyed
    ``offset``, so the partial block is a different run each epoch.
    ``n_blocks = n // block_windows``, ``block_bits``/``block_shift`` its
    :func:`domain_bits`/:func:`rotation`: per-epoch constants.  Reference:
    ``tests/test_permutation.py::reference_block_order``.
    """
    k = np.uint64(block_windows)
    per_pool = np.uint64(pool_blocks)
    pool = k * per_pool
    n_pools = max(_ONE, (n_blocks + per_pool - _ONE) // per_pool)
    q = min(p // pool, n_pools - _ONE)
    j = p - q * pool
    first_block = q * per_pool
    blocks_here = min(per_pool, n_blocks - first_block) if n_blocks > first_block else np.uint64(0)
    size = blocks_here * k + (n - n_blocks * k if q == n_pools - _ONE else np.uint64(0))
    pool_key = mix64(key ^ (q * _GOLDEN + _MIX1))
    jp = permute_index(j, size, domain_bits(size), pool_key, rotation(size, pool_key))
    if jp < blocks_here * k:
        block = permute_index(first_block + jp // k, n_blocks, block_bits, key, block_shift)
        v = block * k + jp % k
    else:
        v = n_blocks * k + (jp - blocks_here * k)
    v = v + offset
    return v - n if v >= n else v


@parallel_kernel
def epoch_ids(out, start, n, rank, world_size, kind, key, block_windows, pool_blocks):
    """Fill ``out`` with the window ids at positions ``start ...`` of one rank's share of an epoch.

    Position ``j`` of rank ``r`` is position ``g = (j * world_size + r) % n``
    of the epoch (``DistributedSampler``'s interleaving; the modulo wraps the
    padding round to the start).  ``kind`` 0: ``g`` itself; 1:
    :func:`permute_index` of ``g``; 2: :func:`block_index` of ``g``.
    """
    un = np.uint64(n)
    bits = domain_bits(un)
    shift = rotation(un, key)
    n_blocks = un // np.uint64(max(1, block_windows))
    block_bits = domain_bits(n_blocks)
    block_shift = rotation(n_blocks, key) if n_blocks > 0 else np.uint64(0)
    offset = rotation(un, mix64(key))
    for j in prange(out.shape[0]):
        g = np.uint64(start + j) * np.uint64(world_size) + np.uint64(rank)
        if g >= un:  # only in the padding round: spare the division everywhere else
            g = g % un
        if kind == 0:
            v = g
        elif kind == 1:
            v = permute_index(g, un, bits, key, shift)
        else:
            v = block_index(g, un, key, block_windows, pool_blocks, n_blocks, block_bits, block_shift, offset)
        out[j] = v


# -- NaN check ---------------------------------------------------------------------


@jit()
def _first_nan_in_series(src, n_windows, stride, dilation, window, horizon, is_target, nan_mask, inf_bits):
    """The first of the ``n_windows`` windows of one series holding a NaN, or ``n_windows`` if none.

    ``src`` is the series' ``(L, F)`` rows read as unsigned integers of the
    float's width, so one kernel serves float16, 32 and 64: a value is NaN
    when ``bits & nan_mask > inf_bits`` (exponent all ones, fraction not zero).
    Rows are read once, in order: a NaN in row ``r`` is input step ``t`` of
    the window starting at ``r - t * dilation`` (when that is a window start)
    and a target step of the windows whose target ``[e, e + horizon)`` covers
    ``r`` (target columns only).  Rows past the end of the best window found
    cannot give an earlier one, so the scan stops there.
    """
    reach = (window - 1) * dilation
    best = n_windows
    last_row = min(src.shape[0], (n_windows - 1) * stride + reach + horizon + 1)
    for r in range(last_row):
        if best < n_windows and r > best * stride + reach + horizon:
            break
        in_x = False
        in_y = False
        for f in range(src.shape[1]):
            if (np.uint64(src[r, f]) & nan_mask) > inf_bits:
                in_x = True
                if is_target[f]:
                    in_y = True
                    break
        if in_x:
            # The largest step t gives the earliest window start.
            for t in range(min(window - 1, r // dilation), -1, -1):
                s = r - t * dilation
                if s % stride == 0:
                    best = min(best, s // stride)
                    break
        if in_y and r >= reach + 1:
            lo = max(0, r - reach - horizon)
            i = (lo + stride - 1) // stride
            if i * stride <= r - reach - 1:
                best = min(best, i)
    return best


@jit()
def first_nan_window(data, row_bounds, offsets, stride, dilation, window, horizon, is_target, nan_mask, inf_bits):
    """The first window id whose input or target holds a NaN, or -1.

    ``data`` is ``(N, F)`` unsigned-integer bits (see :func:`_first_nan_in_series`);
    series ``s`` is rows ``row_bounds[s]:row_bounds[s + 1]`` and owns window
    ids ``offsets[s]:offsets[s + 1]`` (one series: ``[0, N]`` and ``[0, n]``).
    Reference: ``tests/test_properties.py::reference_find_nan``.
    """
    for s in range(row_bounds.shape[0] - 1):
        n_windows = offsets[s + 1] - offsets[s]
        if n_windows > 0:
            i = _first_nan_in_series(data[row_bounds[s] : row_bounds[s + 1]], n_windows, stride, dilation, window,
                                     horizon, is_target, nan_mask, inf_bits)
            if i < n_windows:
                return offsets[s] + i
    return -1


@jit()
def first_nan_window_list(arrays, offsets, stride, dilation, window, horizon, is_target, nan_mask, inf_bits):
    """:func:`first_nan_window` over a ``numba.typed.List`` of ``(N_s, F)`` series."""
    for s in range(len(arrays)):
        n_windows = offsets[s + 1] - offsets[s]
        if n_windows > 0:
            i = _first_nan_in_series(arrays[s], n_windows, stride, dilation, window, horizon, is_target,
                                     nan_mask, inf_bits)
            if i < n_windows:
                return offsets[s] + i
    return -1
