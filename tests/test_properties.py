"""Properties of whole epochs, for every order, geometry, layout of series, batch size and rank.

The data encodes its own row numbers (row ``g`` of the series laid end to end
holds ``g * F + f``), so the first value of each ``x`` names the window it
came from.  Every test draws small cases so that hypothesis can try many:
four times the profile's count (160 each by default, 4000 with
``HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastbatch as fb
from fastbatch.threads import max_threads
from helpers_orders import reference_block_order, reference_permute
from helpers_resume import as_numpy, assert_same_batches, check_resume
from reference import reference_epoch_key, reference_shuffled_order, reference_window, span

# -- cases ----------------------------------------------------------------------------------


@dataclass
class Case:
    """Series (one array, a list, or one array with ``lengths``) and a window geometry."""

    layout: str
    lengths: list[int]
    n_features: int | None
    geometry: dict
    dtype: str = "float64"
    values: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        width = self.n_features or 1
        rows = np.arange(sum(self.lengths) * width).reshape(-1, width)
        self.values = (rows[:, 0] if self.n_features is None else rows).astype(self.dtype)

    @property
    def width(self) -> int:
        return self.n_features or 1

    def windows(self, **kwargs) -> fb.SlidingWindows:
        if self.layout == "list":
            return fb.SlidingWindows(np.split(self.values, np.cumsum(self.lengths)[:-1]), **self.geometry, **kwargs)
        if self.layout == "lengths":
            return fb.SlidingWindows(self.values, lengths=self.lengths, **self.geometry, **kwargs)
        return fb.SlidingWindows(self.values, **self.geometry, **kwargs)

    def reference(self) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
        """``(x, y, series, start_row)`` of each window id, series by series, by plain numpy."""
        out, row0 = [], 0
        shape = {k: v for k, v in self.geometry.items() if k != "target_columns"}
        for s, length in enumerate(self.lengths):
            rows = self.values[row0 : row0 + length]
            i = 0
            while i * shape["stride"] + span(shape["window"], shape["horizon"], shape["dilation"]) <= length:
                x, y = reference_window(rows, i, **self.geometry)
                out.append((x, y, s, row0 + i * shape["stride"]))
                i += 1
            row0 += length
        return out

    def ids_of(self, batches) -> np.ndarray:
        """The window id of every row of ``batches``, read from the first value of each ``x``."""
        by_start = {start: i for i, (_, _, _, start) in enumerate(self.reference())}
        firsts = [b[0].reshape(b[0].shape[0], -1)[:, 0].numpy() for b in batches]
        starts = np.concatenate(firsts).astype(np.int64) // self.width if firsts else np.empty(0, np.int64)
        return np.array([by_start[int(s)] for s in starts], dtype=np.int64)


@st.composite
def cases(draw, dtypes=("float64",)):
    window = draw(st.integers(1, 4))
    horizon = draw(st.integers(0, 3))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 3))
    need = span(window, horizon, dilation)
    layout = draw(st.sampled_from(["one", "list", "lengths"]))
    if layout == "one":
        lengths = [need + draw(st.integers(0, 25))]
    else:
        # Some series too short for a window (even empty), at least one long enough.
        lengths = draw(st.lists(st.integers(0, need + 12), min_size=1, max_size=4))
        lengths[draw(st.integers(0, len(lengths) - 1))] = need + draw(st.integers(0, 12))
    n_features = draw(st.one_of(st.none(), st.integers(1, 3)))
    geometry = dict(window=window, horizon=horizon, stride=stride, dilation=dilation)
    if n_features is not None and draw(st.booleans()):
        geometry["target_columns"] = draw(st.lists(st.integers(-n_features, n_features - 1), min_size=1, max_size=4))
    return Case(layout, lengths, n_features, geometry, draw(st.sampled_from(dtypes)))


ORDERS = st.one_of(
    st.sampled_from(["sequential", "shuffle", "feistel", "block"]),
    st.builds(fb.BlockShuffle, block_windows=st.integers(1, 5), pool_blocks=st.integers(1, 4)),
)
SEEDS = st.integers(0, 2**64 - 1)
# Each example takes milliseconds: four times the profile's count (160 in "ci", 4000 in "thorough").
MANY = settings(max_examples=4 * settings.default.max_examples)


def reference_order(loader: fb.WindowLoader, epoch: int) -> np.ndarray:
    """The window ids of a whole epoch (one process), from the plain-Python orders."""
    n, spec = len(loader.windows), loader.order
    key = reference_epoch_key(loader.seed, epoch)
    if spec.kind == "sequential":
        return np.arange(n)
    if spec.kind == "shuffle":
        return reference_shuffled_order(n, key)
    if spec.kind == "feistel":
        return np.array([reference_permute(j, n, key) for j in range(n)], dtype=np.int64)
    return np.array(reference_block_order(n, key, spec.block_windows, spec.pool_blocks), dtype=np.int64)


def expected_batches(case: Case, loader: fb.WindowLoader, epoch: int, dtype=None) -> list[tuple[np.ndarray, ...]]:
    """This rank's batches of ``epoch``: DistributedSampler's positions of the reference order, gathered by numpy."""
    order = reference_order(loader, epoch)
    n, ws, b = len(order), loader.world_size, loader.batch_size
    per_rank = n // ws if loader.drop_last else -(-n // ws)
    kept = (per_rank // b) * b if loader.drop_last else per_rank
    ids = [int(order[(j * ws + loader.rank) % n]) for j in range(kept)]
    windows = case.reference()
    out = []
    for k in range(0, kept, b):
        group = ids[k : k + b]
        x = np.stack([windows[i][0] for i in group]).astype(dtype or case.dtype)
        y = np.stack([windows[i][1] for i in group]).astype(dtype or case.dtype)
        s = np.array([windows[i][2] for i in group], dtype=np.int64)
        out.append((x, y, s) if loader.windows.return_series_id else (x, y))
    return out


# -- each window exactly once ------------------------------------------------------------


@MANY
@given(cases(), ORDERS, SEEDS, st.integers(0, 3), st.booleans(), st.data())
def test_every_epoch_yields_each_window_exactly_once(case, order, seed, epoch, drop_last, data):
    windows = case.windows(return_series_id=len(case.lengths) > 1)
    n = len(windows)
    batch_size = data.draw(st.integers(1, n + 4), label="batch_size")
    loader = fb.WindowLoader(windows, batch_size=batch_size, order=order, seed=seed, drop_last=drop_last,
                             prefetch=data.draw(st.integers(0, 3), label="prefetch"))
    loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader) == (n // batch_size if drop_last else -(-n // batch_size))
    assert all(b[0].shape[0] == batch_size for b in batches[:-1])
    ids = case.ids_of(batches)
    assert len(np.unique(ids)) == len(ids), "a window came twice in one epoch"
    if drop_last:
        assert len(ids) == (n // batch_size) * batch_size and n - len(ids) < batch_size
    else:
        np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    if loader.order.kind == "sequential":
        np.testing.assert_array_equal(ids, np.arange(len(ids)))
    if windows.return_series_id:
        reference = case.reference()
        got = np.concatenate([b[2].numpy() for b in batches]) if batches else np.empty(0)
        np.testing.assert_array_equal(got, [reference[i][2] for i in ids])


@MANY
@given(cases(), ORDERS, SEEDS, st.integers(1, 5), st.booleans(), st.data())
def test_ranks_are_disjoint_equal_and_complete_like_distributed_sampler(case, order, seed, world_size, drop_last,
                                                                         data):
    windows = case.windows()
    n = len(windows)
    batch_size = data.draw(st.integers(1, n + 2), label="batch_size")
    loaders = [fb.WindowLoader(windows, batch_size=batch_size, order=order, seed=seed, drop_last=drop_last,
                               rank=r, world_size=world_size, prefetch=0) for r in range(world_size)]
    per_rank = [case.ids_of(list(lo)) for lo in loaders]
    assert len({len(lo) for lo in loaders}) == 1, "ranks must run the same number of batches"
    assert len({len(ids) for ids in per_rank}) == 1
    every = np.concatenate(per_rank)
    if drop_last:
        # The epoch's tail is dropped to a multiple of world_size, then each shard to whole batches.
        assert len(per_rank[0]) == (n // world_size // batch_size) * batch_size
        assert len(np.unique(every)) == len(every), "shards overlap"
    else:
        shard = -(-n // world_size)
        assert len(per_rank[0]) == shard
        np.testing.assert_array_equal(np.unique(every), np.arange(n))
        # Only the padding repeats windows: exactly world_size * shard - n of them.
        assert len(every) - n == world_size * shard - n
    # Rank r's position j is position j * world_size + r of the one-process epoch, wrapped round for the padding.
    whole = case.ids_of(list(fb.WindowLoader(windows, batch_size=batch_size, order=order, seed=seed, prefetch=0)))
    for r, ids in enumerate(per_rank):
        np.testing.assert_array_equal(ids, whole[(np.arange(len(ids)) * world_size + r) % n], err_msg=f"rank {r}")


# -- the batches themselves ----------------------------------------------------------------


@MANY
@given(cases(dtypes=("float64", "float32", "int32", "int64")), ORDERS, SEEDS, st.integers(0, 3), st.booleans(),
       st.integers(1, 3), st.data())
def test_batches_are_bit_identical_to_the_numpy_reference_with_and_without_prefetch(case, order, seed, epoch,
                                                                                   drop_last, world_size, data):
    windows = case.windows(return_series_id=data.draw(st.booleans(), label="return_series_id"))
    batch_size = data.draw(st.integers(1, len(windows) + 3), label="batch_size")
    dtype = data.draw(st.sampled_from([None, "float32", "float64"]), label="dtype")
    rank = data.draw(st.integers(0, world_size - 1), label="rank")
    runs = []
    for prefetch in (0, 2):
        loader = fb.WindowLoader(windows, batch_size=batch_size, order=order, seed=seed, drop_last=drop_last,
                                 dtype=dtype, prefetch=prefetch, rank=rank, world_size=world_size)
        loader.set_epoch(epoch)
        got, expected = as_numpy(loader), expected_batches(case, loader, epoch, dtype)
        assert_same_batches(got, expected, f"prefetch={prefetch}")
        assert [[part.dtype for part in b] for b in got] == [[part.dtype for part in b] for b in expected]
        runs.append(got)
    assert_same_batches(runs[0], runs[1], "prefetch 0 against 2")


# -- determinism -----------------------------------------------------------------------------


@MANY
@given(cases(), ORDERS, SEEDS, st.integers(0, 2**40), st.data())
def test_same_seed_and_epoch_give_the_same_batches_with_one_thread_or_all(case, order, seed, epoch, data):
    windows = case.windows()
    batch_size = data.draw(st.integers(1, len(windows) + 2), label="batch_size")

    def run(num_threads):
        loader = fb.WindowLoader(windows, batch_size=batch_size, order=order, seed=seed, num_threads=num_threads,
                                 prefetch=data.draw(st.integers(0, 2), label="prefetch"))
        loader.set_epoch(epoch)
        return as_numpy(loader)

    assert_same_batches(run(1), run(max_threads()), "1 thread against all")


# Configurations hashed in this process and in a fresh one with one Numba thread.
DIGEST_CASES = [
    dict(layout=layout, order=order, world_size=ws, rank=ws - 1, drop_last=ws == 2)
    for layout in ("one", "list", "lengths")
    for order in ("sequential", "shuffle", "feistel", "block")
    for ws in (1, 2)
]


def epoch_digests() -> list[str]:
    """A hash of every batch of epoch 3 for each of :data:`DIGEST_CASES`."""
    out = []
    for spec in DIGEST_CASES:
        case = Case(spec["layout"], [57, 8, 131] if spec["layout"] != "one" else [196], 3,
                    dict(window=5, horizon=2, stride=2, dilation=2, target_columns=[2, 0]))
        order = fb.BlockShuffle(4, 3) if spec["order"] == "block" else spec["order"]
        loader = fb.WindowLoader(case.windows(return_series_id=spec["layout"] != "one"), batch_size=7, order=order,
                                 seed=2**64 - 3, drop_last=spec["drop_last"], rank=spec["rank"],
                                 world_size=spec["world_size"])
        loader.set_epoch(3)
        h = hashlib.sha256()
        for batch in loader:
            for t in batch:
                h.update(t.numpy().tobytes())
        out.append(h.hexdigest())
    return out


def test_same_seed_and_epoch_give_the_same_batches_in_a_fresh_process():
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from test_properties import epoch_digests; "
            "print(json.dumps(epoch_digests()))")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "PYTHONHASHSEED": "777"}
    child = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env, capture_output=True,
                           text=True, timeout=180)
    assert child.returncode == 0, child.stderr[-3000:]
    here = epoch_digests()
    assert json.loads(child.stdout.strip().splitlines()[-1]) == here
    # The hashes see the batches: a list of series and the same series with lengths= agree,
    # any other change of configuration changes them.
    by_layout = {layout: [h for h, spec in zip(here, DIGEST_CASES) if spec["layout"] == layout]
                 for layout in ("one", "list", "lengths")}
    assert by_layout["list"] == by_layout["lengths"]
    assert len(set(by_layout["one"] + by_layout["list"])) == 2 * len(by_layout["one"])


# -- resume ------------------------------------------------------------------------------------


@MANY
@given(cases(), ORDERS, SEEDS, st.booleans(), st.integers(1, 3), st.data())
def test_resume_from_any_position_equals_the_uninterrupted_run(case, order, seed, drop_last, world_size, data):
    windows = case.windows(return_series_id=len(case.lengths) > 1)
    batch_size = data.draw(st.integers(1, len(windows) + 2), label="batch_size")
    rank = data.draw(st.integers(0, world_size - 1), label="rank")
    prefetch = data.draw(st.integers(0, 3), label="prefetch")

    def make():
        return fb.WindowLoader(windows, batch_size=batch_size, order=order, seed=seed, drop_last=drop_last,
                               rank=rank, world_size=world_size, prefetch=prefetch)

    n_batches = len(make())
    check_resume(make, positions=[data.draw(st.integers(0, n_batches), label="position")])


# -- NaN check -----------------------------------------------------------------------------------


def reference_find_nan(case: Case) -> int | None:
    """The first window id whose x or y (as the reference gathers them) holds a NaN."""
    for i, (x, y, _, _) in enumerate(case.reference()):
        if np.isnan(x).any() or np.isnan(y).any():
            return i
    return None


@MANY
@given(cases(dtypes=("float64", "float32", "float16")), st.data())
def test_find_nan_is_the_first_window_holding_a_nan(case, data):
    rows, width = case.values.reshape(len(case.values), -1).shape
    cells = data.draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, width - 1)), max_size=3),
                      label="nan cells")
    values = case.values.reshape(rows, width)  # a view: the NaNs land in case.values
    for r, f in cells:
        values[r, f] = np.nan
    windows = case.windows()
    expected = reference_find_nan(case)
    assert windows.find_nan() == expected
    loader_args = dict(batch_size=4, check_nan=True)
    if expected is None:
        fb.WindowLoader(windows, **loader_args)
    else:
        series, step = windows.locate(expected)
        with pytest.raises(ValueError, match=rf"check_nan=True: window {expected} of {len(windows)} .*step {step} "):
            fb.WindowLoader(windows, **loader_args)
