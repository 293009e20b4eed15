"""Every loader option gives the same batches, bit for bit, on every placement path.

The three producers (fastbatch/pipeline.py) are run on every machine:
``cpu`` (gather into host memory the chunk owns), ``pinned`` (gather into a
ring slot, copy to the device; on a machine without CUDA the slot is not
pinned and the copy is to CPU memory, the same code otherwise) and
``resident`` (the series uploaded once, batches gathered by torch index
arithmetic; here on CPU tensors).  The ``cpu`` path with ``prefetch=0`` is
itself checked against plain numpy slicing (``tests/reference.py``), and each
path is checked against it, at the start of an epoch and resumed mid-epoch.
On a GPU, tests/test_transfer.py (marked gpu) runs the real CUDA paths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastbatch as fb
from fastbatch.order import EpochOrder
from helpers_resume import as_numpy, assert_same_batches

PATHS = ("cpu", "pinned", "resident")

_RNG = np.random.default_rng(2024)
_DATA_2D = _RNG.standard_normal((400, 3))
_DATA_1D = _RNG.standard_normal(350).astype(np.float32)

# (windows arguments, loader arguments): each case moves one or two options away from the base.
CASES = {
    "base-2d": (dict(data=_DATA_2D, window=7, horizon=2), dict(batch_size=16)),
    "1d": (dict(data=_DATA_1D, window=9, horizon=3), dict(batch_size=20, shuffle=True)),
    "list-of-series": (dict(data=[_DATA_2D[:90], _DATA_2D[90:95], _DATA_2D[95:300]], window=6, horizon=2),
                       dict(batch_size=12, shuffle=True)),
    "series-end-to-end": (dict(data=_DATA_1D, lengths=[100, 50, 200], window=5, horizon=1), dict(batch_size=9)),
    "horizon-0": (dict(data=_DATA_2D, window=4, horizon=0), dict(batch_size=33)),
    "stride-dilation": (dict(data=_DATA_2D, window=5, horizon=2, stride=3, dilation=2), dict(batch_size=7)),
    "target-columns": (dict(data=_DATA_2D, window=6, horizon=3, target_columns=[2, 0]), dict(batch_size=16)),
    "dtype-cast": (dict(data=_DATA_2D, window=6, horizon=2), dict(batch_size=16, dtype="float32")),
    "bfloat16": (dict(data=_DATA_2D.astype(np.float32), window=6, horizon=2),
                 dict(batch_size=16, dtype=torch.bfloat16)),
    "normalize": (dict(data=_DATA_2D, window=6, horizon=2), dict(batch_size=16, normalize=True, dtype="float32")),
    "series-ids-one-array": (dict(data=_DATA_2D, window=6, horizon=2, return_series_id=True), dict(batch_size=16)),
    "series-ids-many": (dict(data=[_DATA_1D[:120], _DATA_1D[120:]], window=6, horizon=2, return_series_id=True),
                        dict(batch_size=16, order="feistel")),
    "feistel": (dict(data=_DATA_2D, window=6, horizon=2), dict(batch_size=16, order="feistel", seed=7)),
    "block": (dict(data=_DATA_2D, window=6, horizon=2), dict(batch_size=16, order=fb.BlockShuffle(8, 3))),
    "rank-1-of-3": (dict(data=_DATA_2D, window=6, horizon=2), dict(batch_size=16, shuffle=True, rank=1,
                                                                      world_size=3)),
    "drop-last": (dict(data=_DATA_2D, window=6, horizon=2), dict(batch_size=25, shuffle=True, drop_last=True)),
    "integers": (dict(data=np.arange(600, dtype=np.int16).reshape(200, 3), window=4, horizon=2),
                 dict(batch_size=10, dtype="int32")),
}


def _loader(case: str, path: str, prefetch: int, **extra) -> fb.WindowLoader:
    windows_args, loader_args = CASES[case]
    windows_args = dict(windows_args)
    w = fb.SlidingWindows(windows_args.pop("data"), **windows_args)
    loader = fb.WindowLoader(w, prefetch=prefetch, **{"seed": 3, **loader_args, **extra})
    loader._path = path  # the placement path under test, on this machine's devices
    return loader


def _epoch(loader: fb.WindowLoader, epoch: int) -> list:
    loader.set_epoch(epoch)
    return as_numpy((t.float() if t.dtype == torch.bfloat16 else t for t in batch) for batch in loader)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_cpu_path_equals_numpy_slicing(case):
    """The baseline of the parity tests is itself the reference: each window is ``windows[i]`` (numpy views)."""
    loader = _loader(case, "cpu", 0)
    w = loader.windows
    got = _epoch(loader, 1)
    spec = loader.order
    ids = EpochOrder(len(w), kind=spec.kind, seed=loader.seed, epoch=1,
                     block=(spec.block_windows, spec.pool_blocks), rank=loader.rank, world_size=loader.world_size,
                     drop_last=loader.drop_last).ids(0, loader.n_samples)
    xs = np.concatenate([b[0] for b in got])
    ys = np.concatenate([b[1] for b in got])
    assert len(xs) == len(ids) == loader.n_samples
    stats = loader.normalize_stats
    for k, i in enumerate(ids):
        x, y = w[int(i)][:2]
        if stats is not None:
            mean, std = stats
            x, y = (x - mean) / std, (y - mean[w.target_columns]) / std[w.target_columns]
        cast = torch.float32 if loader.dtype == torch.bfloat16 else loader.dtype
        expect_x = torch.from_numpy(np.ascontiguousarray(x)).to(loader.dtype).to(cast).numpy()
        expect_y = torch.from_numpy(np.ascontiguousarray(y)).to(loader.dtype).to(cast).numpy()
        np.testing.assert_array_equal(xs[k], expect_x, err_msg=f"{case}: input of window {int(i)}")
        np.testing.assert_array_equal(ys[k], expect_y, err_msg=f"{case}: target of window {int(i)}")


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("path", ["pinned", "resident"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_path_gives_the_cpu_paths_bits(case, path, prefetch):
    expected = _epoch(_loader(case, "cpu", 0), 2)
    got = _epoch(_loader(case, path, prefetch), 2)
    assert_same_batches(got, expected, f"{case} on {path} with prefetch={prefetch}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["list-of-series", "series-ids-many", "rank-1-of-3", "block", "bfloat16"])
def test_every_path_resumes_mid_epoch_exactly(case, path):
    full = _epoch(_loader(case, "cpu", 0), 4)
    stop = len(full) // 2
    first = _loader(case, path, 2)
    first.set_epoch(4)
    it = iter(first)
    for _ in range(stop):
        next(it)
    state = first.state_dict()
    del it
    second = _loader(case, path, 2)
    second.load_state_dict(state)
    rest = as_numpy((t.float() if t.dtype == torch.bfloat16 else t for t in batch) for batch in second)
    assert_same_batches(rest, full[stop:], f"{case} resumed at batch {stop} on {path}")


@pytest.mark.parametrize("path", PATHS)
def test_series_ids_come_back_on_every_path(path):
    """One series with return_series_id gives (x, y, ids) on every placement, never (x, y)."""
    loader = _loader("series-ids-one-array", path, 2)
    batches = list(loader)
    assert all(len(b) == 3 for b in batches)
    assert all(b[2].dtype == torch.int64 and not b[2].any() for b in batches)
