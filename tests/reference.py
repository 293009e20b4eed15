"""Plain-numpy / plain-Python meanings of what fastbatch computes, and the test inputs.

Every reference here is written the slow, obvious way (one window at a time,
Python integers for the random stream) so it can be read against the contract
in docs/windows.md rather than against the kernels it checks.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st

MASK64 = 2**64 - 1
GOLDEN64 = 0x9E3779B97F4A7C15


# -- windows -----------------------------------------------------------------


def span(window: int, horizon: int, dilation: int) -> int:
    """Steps one window covers: its inputs, the gaps between them, and its target."""
    return (window - 1) * dilation + 1 + horizon


def reference_count(n_steps: int, *, window: int, horizon: int = 1, stride: int = 1, dilation: int = 1) -> int:
    """The number of windows, by counting starts that fit (not by the closed formula)."""
    count = 0
    while count * stride + span(window, horizon, dilation) <= n_steps:
        count += 1
    return count


def as_array(data) -> np.ndarray:
    """The data as numpy, the way a user would look at it."""
    return data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)


def reference_window(data, i: int, *, window: int, horizon: int = 1, stride: int = 1, dilation: int = 1,
                     target_columns=None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of window ``i``: input steps one by one, then the next ``horizon`` steps."""
    a = as_array(data)
    first = i * stride
    steps = [first + t * dilation for t in range(window)]
    after = steps[-1] + 1
    x = a[steps]
    y = a[list(range(after, after + horizon))]
    if a.ndim == 2 and target_columns is not None:
        y = y[:, list(target_columns)]
    return x, y


def reference_gather(data, ids, *, dtype=None, **geometry) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``ids`` stacked into ``(n, T[, F])`` and ``(n, H[, n_targets])``, cast to ``dtype``."""
    a = as_array(data)
    dtype = np.dtype(dtype) if dtype is not None else a.dtype
    pairs = [reference_window(a, int(i), **geometry) for i in ids]
    x_shape, y_shape = pairs[0][0].shape if pairs else (), pairs[0][1].shape if pairs else ()
    x = np.array([p[0] for p in pairs]).reshape(len(pairs), *x_shape).astype(dtype)
    y = np.array([p[1] for p in pairs]).reshape(len(pairs), *y_shape).astype(dtype)
    return x, y


# -- epoch orders --------------------------------------------------------------


def mix64(z: int) -> int:
    """The splitmix64 finaliser on Python integers."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def splitmix64(x: int) -> int:
    """One step of splitmix64: advance by the golden gamma, then mix."""
    return mix64((x + GOLDEN64) & MASK64)


def reference_epoch_key(seed: int, epoch: int) -> int:
    """The key of an epoch's permutation: the seed mixed, xor the epoch, mixed again."""
    return splitmix64(splitmix64(seed) ^ (epoch & MASK64))


def reference_shuffled_order(n: int, key: int) -> np.ndarray:
    """Fisher-Yates from the last position down; position ``i`` swaps with ``mix(key + k*gamma) % (i+1)``."""
    out = list(range(n))
    state = key
    for i in range(n - 1, 0, -1):
        state = (state + GOLDEN64) & MASK64
        j = mix64(state) % (i + 1)
        out[i], out[j] = out[j], out[i]
    return np.array(out, dtype=np.int64)


def reference_epoch_ids(n: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The window ids of one epoch, in the order the loader hands them out."""
    if not shuffle:
        return np.arange(n)
    return reference_shuffled_order(n, reference_epoch_key(seed, epoch))


def reference_batches(data, *, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                      drop_last: bool = False, dtype=None, **geometry) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batches of one epoch: consecutive ``batch_size`` ids of the epoch order."""
    shape_only = {k: v for k, v in geometry.items() if k != "target_columns"}
    n = reference_count(len(as_array(data)), **shape_only)
    ids = reference_epoch_ids(n, shuffle=shuffle, seed=seed, epoch=epoch)
    groups = [ids[k:k + batch_size] for k in range(0, n, batch_size)]
    if drop_last and groups and len(groups[-1]) < batch_size:
        groups.pop()
    return [reference_gather(data, g, dtype=dtype, **geometry) for g in groups]


def assert_batches_equal(got, expected) -> None:
    """``got``: (x, y) torch tensors as handed out; ``expected``: reference numpy pairs."""
    assert len(got) == len(expected)
    for k, ((x, y), (ex, ey)) in enumerate(zip(got, expected)):
        assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), k
        assert tuple(x.shape) == ex.shape and tuple(y.shape) == ey.shape, (k, x.shape, ex.shape, y.shape, ey.shape)
        np.testing.assert_array_equal(x.numpy(), ex, err_msg=f"x of batch {k}")
        np.testing.assert_array_equal(y.numpy(), ey, err_msg=f"y of batch {k}")


def epoch_digest(seed: int, epoch: int, **loader_options) -> str:
    """A hash of every batch of one shuffled epoch, to compare runs in other processes."""
    import hashlib

    import fastbatch as fb

    data = (np.arange(6000 * 3, dtype=np.float64).reshape(6000, 3) * 0.37) % 11
    windows = fb.SlidingWindows(data, window=16, horizon=3, stride=2, dilation=2, target_columns=[2, 0],
                                dtype="float32")
    loader = fb.WindowLoader(windows, batch_size=64, shuffle=True, seed=seed, **loader_options)
    loader.set_epoch(epoch)
    h = hashlib.sha256()
    for x, y in loader:
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


# -- test inputs ---------------------------------------------------------------

# How the data is laid out in memory; the values are the same in every case.
LAYOUTS_2D = ("C", "F", "rows", "cols", "readonly", "memmap", "torch", "torch_strided")
LAYOUTS_1D = ("C", "rows", "readonly", "memmap", "torch", "torch_strided")


def series(n_steps: int, n_features: int | None, dtype=np.float64) -> np.ndarray:
    """Distinct values everywhere, so a window taken from the wrong place cannot pass."""
    shape = (n_steps,) if n_features is None else (n_steps, n_features)
    return (np.arange(int(np.prod(shape))).reshape(shape) + 1).astype(dtype)


def lay_out(values: np.ndarray, layout: str, directory: Path):
    """``values`` in the given memory layout (same contents, different strides, flags or type)."""
    if layout == "C":
        return np.ascontiguousarray(values)
    if layout == "F":
        return np.asfortranarray(values)
    if layout == "rows":  # every third row of a longer array
        big = np.zeros((3 * len(values), *values.shape[1:]), values.dtype)
        big[::3] = values
        return big[::3]
    if layout == "cols":  # every other column of a wider array
        big = np.zeros((len(values), 2 * values.shape[1]), values.dtype)
        big[:, ::2] = values
        return big[:, ::2]
    if layout == "readonly":
        a = values.copy()
        a.flags.writeable = False
        return a
    if layout == "memmap":
        path = directory / f"{uuid.uuid4().hex}.bin"
        w = np.memmap(path, dtype=values.dtype, mode="w+", shape=values.shape)
        w[:] = values
        w.flush()
        del w
        return np.memmap(path, dtype=values.dtype, mode="r", shape=values.shape)
    if layout == "torch":
        return torch.from_numpy(values.copy())
    if layout == "torch_strided":
        big = torch.zeros((2 * len(values), *values.shape[1:]), dtype=torch.from_numpy(values[:0]).dtype)
        big[::2] = torch.from_numpy(values)
        return big[::2]
    raise AssertionError(layout)


@st.composite
def geometries(draw, *, max_extra: int = 30):
    """A random window geometry and a series long enough for at least one window.

    Returns ``(n_steps, n_features, geometry)`` where ``n_features`` is None for
    1-D data and ``geometry`` holds the SlidingWindows keywords.
    """
    window = draw(st.integers(1, 6))
    horizon = draw(st.integers(0, 4))
    stride = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 3))
    n_steps = span(window, horizon, dilation) + draw(st.integers(0, max_extra))
    n_features = draw(st.one_of(st.none(), st.integers(1, 4)))
    geometry = dict(window=window, horizon=horizon, stride=stride, dilation=dilation)
    if n_features is not None and draw(st.booleans()):
        # Any non-empty list of in-range indices: uneven, negative, repeated, permuted.
        geometry["target_columns"] = draw(st.lists(st.integers(-n_features, n_features - 1), min_size=1, max_size=5))
    return n_steps, n_features, geometry
