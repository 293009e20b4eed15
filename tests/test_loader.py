"""WindowLoader: the batches of every epoch against the reference, their lifetime, and its arguments."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastbatch as fb
from reference import (
    LAYOUTS_1D,
    LAYOUTS_2D,
    as_array,
    assert_batches_equal,
    geometries,
    lay_out,
    reference_batches,
    reference_count,
    reference_epoch_ids,
    series,
)


def test_textbook_case():
    series_1_to_1000 = np.arange(1, 1001, dtype=np.float32)
    loader = fb.WindowLoader(fb.SlidingWindows(series_1_to_1000, window=10), batch_size=32)
    batches = list(loader)
    assert len(loader.windows) == 990
    assert len(loader) == len(batches) == 31
    assert all(tuple(x.shape) == (32, 10) and tuple(y.shape) == (32, 1) for x, y in batches[:-1])
    assert tuple(batches[-1][0].shape) == (30, 10)  # 990 = 30 * 32 + 30
    x, y = batches[0]
    assert x.dtype == torch.float32
    assert torch.equal(x[0], torch.arange(1, 11, dtype=torch.float32)) and y[0].tolist() == [11.0]
    x, y = batches[-1]
    assert torch.equal(x[-1], torch.arange(990, 1000, dtype=torch.float32)) and y[-1].tolist() == [1000.0]

    dropping = fb.WindowLoader(fb.SlidingWindows(series_1_to_1000, window=10), batch_size=32, drop_last=True)
    kept = list(dropping)
    assert len(dropping) == len(kept) == 30
    assert all(tuple(x.shape) == (32, 10) for x, _ in kept)
    assert kept[-1][0][-1, 0].item() == 960.0  # window 959 (960..969) is the last one delivered


def test_multivariate_batch_shapes():
    w = fb.SlidingWindows(series(100, 5), window=8, horizon=3, target_columns=[4, 1])
    x, y = next(iter(fb.WindowLoader(w, batch_size=16)))
    assert tuple(x.shape) == (16, 8, 5) and tuple(y.shape) == (16, 3, 2)


@st.composite
def loader_cases(draw):
    n_steps, n_features, geometry = draw(geometries(max_extra=60))
    layout = draw(st.sampled_from(LAYOUTS_1D if n_features is None else LAYOUTS_2D))
    count = reference_count(n_steps, **{k: v for k, v in geometry.items() if k != "target_columns"})
    options = dict(
        batch_size=draw(st.integers(1, count + 3)),
        shuffle=draw(st.booleans()),
        seed=draw(st.integers(0, 2**64 - 1)),
        drop_last=draw(st.booleans()),
    )
    epoch = draw(st.integers(0, 5))
    return series(n_steps, n_features), layout, geometry, options, epoch


@given(loader_cases())
def test_every_epoch_is_the_reference_epoch(scratch, case):
    values, layout, geometry, options, epoch = case
    data = lay_out(values, layout, scratch)
    writeable = as_array(data).flags.writeable
    loader = fb.WindowLoader(fb.SlidingWindows(data, **geometry), **options)
    loader.set_epoch(epoch)
    for e in (epoch, epoch + 1):  # the second iter() runs the next epoch on its own
        batches = list(loader)
        assert len(batches) == len(loader)
        assert_batches_equal(batches, reference_batches(values, epoch=e, **options, **geometry))
    assert loader.epoch == epoch + 2
    assert as_array(data).flags.writeable == writeable
    np.testing.assert_array_equal(as_array(data), values)


def window_ids(batches, stride: int = 1) -> np.ndarray:
    """Window ids of batches over ``np.arange`` data: the first input step is ``id * stride``."""
    return np.concatenate([x[:, 0].numpy() for x, _ in batches]).astype(np.int64) // stride


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_window_at_most_once_per_epoch_and_all_of_them_without_drop_last(shuffle, drop_last):
    w = fb.SlidingWindows(np.arange(3000, dtype=np.float64), window=5, horizon=2, stride=3)
    loader = fb.WindowLoader(w, batch_size=64, shuffle=shuffle, seed=11, drop_last=drop_last)
    for _ in range(2):
        ids = window_ids(list(loader), stride=3)
        assert len(ids) == len(np.unique(ids)) == ((len(w) // 64) * 64 if drop_last else len(w))
        if not drop_last:
            np.testing.assert_array_equal(np.sort(ids), np.arange(len(w)))
        if not shuffle:
            np.testing.assert_array_equal(ids, np.arange(len(ids)))


def test_epochs_are_shuffled_differently_and_set_epoch_replays_one():
    w = fb.SlidingWindows(np.arange(500, dtype=np.float64), window=4)
    loader = fb.WindowLoader(w, batch_size=50, shuffle=True, seed=5)
    assert loader.epoch == 0
    first, second = window_ids(list(loader)), window_ids(list(loader))
    assert loader.epoch == 2
    assert not np.array_equal(first, second)
    loader.set_epoch(0)
    np.testing.assert_array_equal(window_ids(list(loader)), first)
    assert loader.epoch == 1
    loader.set_epoch(17)
    np.testing.assert_array_equal(window_ids(list(loader)), reference_epoch_ids(len(w), shuffle=True, seed=5, epoch=17))


def test_an_abandoned_epoch_still_advances_the_epoch():
    w = fb.SlidingWindows(np.arange(500, dtype=np.float64), window=4)
    loader = fb.WindowLoader(w, batch_size=10, shuffle=True, seed=5)
    for x, _ in loader:
        break
    assert loader.epoch == 1
    np.testing.assert_array_equal(window_ids(list(loader)), reference_epoch_ids(len(w), shuffle=True, seed=5, epoch=1))


def test_same_seed_same_batches_and_seed_none_draws_a_usable_seed():
    w = fb.SlidingWindows(series(300, 2), window=6, horizon=2)
    a, b = (fb.WindowLoader(w, batch_size=32, shuffle=True, seed=99) for _ in range(2))
    assert_batches_equal(list(a), [(x.numpy(), y.numpy()) for x, y in b])

    drawn = [fb.WindowLoader(w, batch_size=32, shuffle=True) for _ in range(3)]
    seeds = [d.seed for d in drawn]
    assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds)
    assert len(set(seeds)) == 3
    # The drawn seed is the whole story: a loader made with it repeats the batches.
    again = fb.WindowLoader(w, batch_size=32, shuffle=True, seed=seeds[0])
    assert_batches_equal(list(again), [(x.numpy(), y.numpy()) for x, y in drawn[0]])


def test_a_batch_size_above_the_number_of_windows_gives_one_batch():
    w = fb.SlidingWindows(series(12, 3), window=4, horizon=2)
    loader = fb.WindowLoader(w, batch_size=10**9, shuffle=True, seed=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 1
    assert tuple(batches[0][0].shape) == (len(w), 4, 3)
    assert_batches_equal(batches, reference_batches(series(12, 3), batch_size=10**9, shuffle=True, seed=1,
                                                    window=4, horizon=2))


@pytest.mark.parametrize(
    "source, dtype, expected",
    [
        (np.float64, None, torch.float64),
        (np.float32, None, torch.float32),
        (np.float64, "float32", torch.float32),
        (np.int64, np.float32, torch.float32),
        (np.int32, torch.float32, torch.float32),
    ],
)
def test_batches_have_the_data_dtype_unless_a_cast_is_asked(source, dtype, expected):
    values = series(200, 3, source) * 7 - 300  # negative values too
    w = fb.SlidingWindows(values, window=5, horizon=2, stride=2, target_columns=[2], dtype=dtype)
    batches = list(fb.WindowLoader(w, batch_size=16, shuffle=True, seed=4))
    assert all(x.dtype == expected and y.dtype == expected for x, y in batches)
    assert_batches_equal(batches, reference_batches(values, batch_size=16, shuffle=True, seed=4, dtype=w.dtype,
                                                    window=5, horizon=2, stride=2, target_columns=[2]))


def test_float16_data_gives_float16_batches():
    values = (series(300, 2) / 8).astype(np.float16)
    w = fb.SlidingWindows(values, window=6, horizon=2)
    batches = list(fb.WindowLoader(w, batch_size=32, shuffle=True, seed=2))
    assert batches[0][0].dtype == torch.float16
    assert_batches_equal(batches, reference_batches(values, batch_size=32, shuffle=True, seed=2, window=6, horizon=2))


# -- batches handed out are never overwritten ---------------------------------

# Several staging chunks' worth of windows (a chunk is a few MiB), so buffers
# would have to be reused within one epoch.
BIG = dict(window=16, horizon=2, target_columns=[0, 5])


def big_data() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((40_000, 8)).astype(np.float32)


def test_all_batches_of_an_epoch_kept_stay_intact_through_the_next_epoch():
    data = big_data()
    loader = fb.WindowLoader(fb.SlidingWindows(data, **BIG), batch_size=100, shuffle=True, seed=8)
    epoch0 = list(loader)
    expected = reference_batches(data, batch_size=100, shuffle=True, seed=8, epoch=0, **BIG)
    assert_batches_equal(epoch0, expected)
    epoch1 = reference_batches(data, batch_size=100, shuffle=True, seed=8, epoch=1, **BIG)
    for k, (x, y) in enumerate(loader):
        np.testing.assert_array_equal(x.numpy(), epoch1[k][0])
    assert_batches_equal(epoch0, expected)


def test_batches_kept_in_part_stay_intact_while_dropped_ones_are_recycled():
    data = big_data()
    loader = fb.WindowLoader(fb.SlidingWindows(data, **BIG), batch_size=64, shuffle=True, seed=3)
    kept = {}
    for k, (x, y) in enumerate(loader):
        if k % 5 == 0:
            kept[k] = (x, y)
        elif k % 5 == 1:
            kept[k] = (x[3:4], None)  # a view of a batch keeps it alive too
        elif k % 5 == 2:
            kept[k] = (None, y.numpy())  # so does a numpy view of it
        else:
            x.mul_(0)  # a user may scribble on a batch in place and drop it
    expected = reference_batches(data, batch_size=64, shuffle=True, seed=3, **BIG)
    for k, (x, y) in kept.items():
        if k % 5 == 1:
            np.testing.assert_array_equal(x.numpy(), expected[k][0][3:4], err_msg=f"batch {k}")
        if x is not None and k % 5 == 0:
            np.testing.assert_array_equal(x.numpy(), expected[k][0], err_msg=f"batch {k}")
        if y is not None:
            np.testing.assert_array_equal(np.asarray(y), expected[k][1], err_msg=f"batch {k}")


def test_writing_into_batches_changes_neither_the_data_nor_later_batches(scratch):
    values = big_data()[:5000]
    path = scratch / "written.bin"
    m = np.memmap(path, dtype=np.float32, mode="w+", shape=values.shape)
    m[:] = values
    m.flush()
    del m
    before = path.read_bytes()
    data = np.memmap(path, dtype=np.float32, mode="r", shape=values.shape)
    loader = fb.WindowLoader(fb.SlidingWindows(data, window=16, horizon=2), batch_size=32, seed=0)
    for x, y in loader:
        x.fill_(-1.0)
        y.fill_(-1.0)
    assert_batches_equal(list(loader), reference_batches(values, batch_size=32, window=16, horizon=2))
    assert not data.flags.writeable
    assert path.read_bytes() == before


# -- arguments ------------------------------------------------------------------


def small_windows():
    return fb.SlidingWindows(series(50, None), window=4)


@pytest.mark.parametrize(
    "value, error, shown",
    [(0, ValueError, "batch_size=0"), (-8, ValueError, "batch_size=-8"), (2.5, TypeError, "2.5"),
     (True, TypeError, "True"), ("32", TypeError, "'32'"), (None, TypeError, "None")],
)
def test_batch_size_is_checked(value, error, shown):
    with pytest.raises(error, match=f"batch_size.*{re.escape(shown)}"):
        fb.WindowLoader(small_windows(), batch_size=value)


@pytest.mark.parametrize(
    "value, error, shown",
    [(-1, ValueError, "seed=-1"), (2**64, ValueError, f"seed={2**64}"), (1.5, TypeError, "1.5"),
     ("7", TypeError, "'7'"), (True, TypeError, "True"), (np.float64(3), TypeError, "3.0")],
)
def test_seed_is_checked(value, error, shown):
    with pytest.raises(error, match=f"seed.*{re.escape(shown)}"):
        fb.WindowLoader(small_windows(), batch_size=4, shuffle=True, seed=value)


def test_numpy_integer_seed_and_batch_size_are_accepted():
    loader = fb.WindowLoader(small_windows(), batch_size=np.int64(4), shuffle=True, seed=np.uint64(2**64 - 1))
    assert loader.seed == 2**64 - 1 and len(loader) == 12


@pytest.mark.parametrize("name, value", [("shuffle", "yes"), ("shuffle", 1), ("drop_last", None), ("drop_last", 0)])
def test_flags_must_be_bools(name, value):
    with pytest.raises(TypeError, match=f"{name}.*{re.escape(repr(value))}"):
        fb.WindowLoader(small_windows(), batch_size=4, **{name: value})


@pytest.mark.parametrize(
    "windows, shown",
    [(np.arange(50.0), "ndarray"), (torch.arange(50.0), "Tensor"), (None, "NoneType"), ([1.0, 2.0], "list")],
)
def test_the_first_argument_must_be_sliding_windows(windows, shown):
    with pytest.raises(TypeError, match=f"windows.*SlidingWindows.*{shown}"):
        fb.WindowLoader(windows, batch_size=4)


@pytest.mark.parametrize("value, error, shown", [(-1, ValueError, "epoch=-1"), (1.5, TypeError, "1.5"),
                                                  (True, TypeError, "True")])
def test_set_epoch_is_checked(value, error, shown):
    loader = fb.WindowLoader(small_windows(), batch_size=4)
    with pytest.raises(error, match=f"epoch.*{re.escape(shown)}"):
        loader.set_epoch(value)
    assert loader.epoch == 0
