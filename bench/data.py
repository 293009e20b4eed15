"""The series a harness run trains on: the user's ``.npy`` file or table, or a synthetic one.

Either way the trials read ``.npy`` files with ``np.load(mmap_mode="r")``: the
series lives once in the page cache, not once per trial process, and a user's
file is never unpickled.  A table (Parquet, or Arrow IPC/Feather, in long
format: ``--id``, ``--time``, ``--target`` and optionally ``--past`` columns) is
converted once, by the harness, into fastbatch's cache of memory-mapped
``.npy`` files (``SlidingWindows.from_parquet(cache=True)``) in
:data:`TABLE_CACHE`, and every trial opens that cache.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
TABLE_SUFFIXES = (".parquet", ".pq", ".feather", ".arrow", ".ipc")
# Where tables are converted: keyed by the files and the options, so runs on
# the same table reuse it, and outside the user's data folder.
TABLE_CACHE = os.path.join(tempfile.gettempdir(), "fastbatch-bench-tables")
ZIP_MAGIC = b"PK\x03\x04"  # np.savez


def synthetic_series(length: int, features: int, seed: int = 0) -> np.ndarray:
    """A ``(length, features)`` float32 series: per feature, two sines of its own periods and phases, plus noise.

    Learnable (the next steps follow from the window) yet not trivial; the
    values stay within about [-2, 2], as after standardisation.
    """
    rng = np.random.default_rng(seed)
    periods = rng.uniform(16, 256, size=(2, features))
    phases = rng.uniform(0, 2 * np.pi, size=(2, features))
    out = np.empty((length, features), dtype=np.float32)
    rows = 1 << 16  # in blocks, so a long series never needs float64 copies of itself
    for start in range(0, length, rows):
        t = np.arange(start, min(start + rows, length), dtype=np.float64)[:, None]
        block = np.sin(2 * np.pi * t / periods[0] + phases[0]) + 0.5 * np.sin(2 * np.pi * t / periods[1] + phases[1])
        block += 0.1 * rng.standard_normal(block.shape)
        out[start : start + block.shape[0]] = block
    return out


def write_synthetic(path: str, length: int, features: int, seed: int = 0) -> str:
    """Write :func:`synthetic_series` to ``path`` (``.npy``) and return the path."""
    np.save(path, synthetic_series(length, features, seed))
    return path


def load_series(path: str) -> np.ndarray:
    """The ``(N, F)`` array in the ``.npy`` file ``path``, memory-mapped read-only.

    A 1-D series becomes ``(N, 1)`` (a view).  Raises ``ValueError`` with a
    one-line message for anything that is not a plain numeric ``.npy`` array;
    pickled object arrays are refused, never loaded.
    """
    if os.path.isdir(path):
        raise ValueError(f"--data {path!r} is a folder; give the .npy file of one series")
    if not os.path.isfile(path):
        raise ValueError(f"--data {path!r}: no such file")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as error:
        raise ValueError(f"--data {path!r} cannot be read: {error.strerror}") from None
    if magic.startswith(ZIP_MAGIC):
        raise ValueError(f"--data {path!r} is a .npz archive; save the one series as .npy (np.save)")
    if magic != NPY_MAGIC:
        # Checked here: np.load takes any other file for a pickle and says so.
        raise ValueError(f"--data {path!r} is not a .npy file (no .npy header); save the series with np.save")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error) or "Python objects" in str(error):
            raise ValueError(f"--data {path!r} holds Python objects (pickled); only numeric arrays are read") from None
        raise ValueError(f"--data {path!r} is not a readable .npy array: {_first_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is one message
        raise ValueError(f"--data {path!r} is not a readable .npy array: {_first_line(error)}") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"--data {path!r} is a .npz archive; save the one series as .npy (np.save)")
    if array.size == 0:
        raise ValueError(f"--data {path!r} holds an empty array of shape {array.shape}")
    if array.ndim not in (1, 2):
        raise ValueError(f"--data {path!r} must hold a series of shape (N,) or (N, F), got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"--data {path!r} must hold real numbers (int, uint or float), got dtype {array.dtype}")
    return array[:, None] if array.ndim == 1 else array


def gather_dtype(array: np.ndarray) -> np.dtype:
    """The dtype the harness gathers ``array`` as: float16 as itself (fastbatch casts it to nothing), else float32."""
    return array.dtype if array.dtype == np.float16 else np.dtype(np.float32)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def is_table(path: str) -> bool:
    """A Parquet file or folder, or an Arrow IPC/Feather file (read as a long-format table)."""
    if os.path.isdir(path):
        return any(name.endswith((".parquet", ".pq")) for _, _, names in os.walk(path) for name in names)
    return path.lower().endswith(TABLE_SUFFIXES)


def open_windows(data_path: str, config: Any):
    """The windows a trial reads: over the ``.npy`` series, or over the converted table."""
    import fastbatch as fb

    if config.table is None:
        data = load_series(data_path)
        return fb.SlidingWindows(data, window=config.window, horizon=config.horizon, dtype=gather_dtype(data))
    t = config.table
    options = dict(id=t["id"], time=t["time"], target=t["target"], past=t["past"], scale="standard",
                   window=config.window, horizon=config.horizon)
    try:
        try:
            return fb.SlidingWindows.from_parquet(data_path, cache=True, cache_dir=TABLE_CACHE, **options)
        except ValueError as error:
            if "two separate places" not in str(error):
                raise
            # Rows of a series are not together in the file: no out-of-core
            # conversion; each trial reads the table into memory instead.
            return fb.SlidingWindows.from_parquet(data_path, cache=False, **options)
    except (ImportError, ModuleNotFoundError) as error:
        raise ValueError(f"--data {data_path!r} is a table, which needs pandas and pyarrow "
                         f"(pip install 'fastbatch[frames]'): {error}") from None
