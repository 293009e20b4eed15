"""Bad input fails at once with a message a user can act on; odd but valid input just works.

Every wrong argument of the public API raises ``TypeError`` or ``ValueError``
when the object is made (or the method called), naming the parameter and the
value received, before any pass over the data: the loader cases are built
with ``normalize=True`` and ``check_nan=True`` while both passes are replaced
by a tripwire.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import fastbatch as fb
from helpers_resume import as_numpy, assert_same_batches
from reference import assert_batches_equal, reference_batches, reference_count, series


def windows(data=None, **kw) -> fb.SlidingWindows:
    return fb.SlidingWindows(series(50, 3) if data is None else data, **{"window": 4, **kw})


def loader(w=None, **kw) -> fb.WindowLoader:
    """A loader whose construction would read the data (both passes) once its arguments pass."""
    options = {"batch_size": 4, "normalize": True, "check_nan": True, **kw}
    return fb.WindowLoader(windows() if w is None else w, **options)


def plain_loader(**kw) -> fb.WindowLoader:
    return fb.WindowLoader(windows(), batch_size=4, seed=1, **kw)


def state(**changes) -> dict:
    s = plain_loader().state_dict()
    for key, value in changes.items():
        if value is KeyError:
            del s[key]
        else:
            s[key] = value
    return s


def set_epoch(value):
    plain_loader().set_epoch(value)


def load(s):
    plain_loader().load_state_dict(s)


def npy(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    return path


def window_batch():
    return windows().__getitems__([0, 1])


def gather(**kw):
    """``SlidingWindows.gather`` of two windows of 3 features, with the keywords given."""
    return windows().gather(np.array([0, 1]), **kw)


def outputs(dtype, n=2):
    return {"out_x": np.empty((n, 4, 3), dtype), "out_y": np.empty((n, 1, 3), dtype)}


def masked():
    return np.ma.masked_array(np.arange(9.0), mask=np.arange(9) % 2 == 0)


BIG = 10**30
HAS_CUDA = torch.cuda.is_available()

# (id, call(tmp_path), error, parameter, value as shown)
CASES = [
    # -- SlidingWindows(data=...)
    ("data-str", lambda p: windows("abc"), TypeError, "data", "'abc'"),
    ("data-none", lambda p: fb.SlidingWindows(None, window=4), TypeError, "data", "None"),
    ("data-object", lambda p: windows(object()), TypeError, "data", "<object object at"),
    ("data-list-of-floats", lambda p: windows([1.0, 2.0]), TypeError, "data[0]", "1.0"),
    ("data-3d", lambda p: windows(np.zeros((4, 3, 2))), ValueError, "data", "(4, 3, 2)"),
    ("data-empty", lambda p: windows(np.zeros(0)), ValueError, "data", "(0,)"),
    ("data-complex", lambda p: windows(np.ones(9, np.complex128)), TypeError, "data", "complex128"),
    ("data-bool", lambda p: windows(np.ones(9, bool)), TypeError, "data", "bool"),
    ("data-big-endian", lambda p: windows(np.arange(9.0, dtype=">f8")), TypeError, "data", ">f8"),
    ("data-long-double", lambda p: windows(np.ones(9, np.longdouble)), TypeError, "data", str(np.dtype(np.longdouble))),
    ("data-off-cpu", lambda p: windows(torch.zeros(9, device="meta")), ValueError, "data", "meta"),
    ("data-empty-list", lambda p: windows([]), ValueError, "data", "empty list"),
    ("data-list-mixed-dtypes", lambda p: windows([np.zeros(9), np.zeros(9, np.float32)]), TypeError, "data",
     "float32 in data[1]"),
    ("data-list-mixed-ndim", lambda p: windows([np.zeros(9), np.zeros((9, 2))]), ValueError, "data[1]", "(9, 2)"),
    ("data-masked", lambda p: windows(masked()), TypeError, "data", "masked array"),
    ("data-list-masked", lambda p: windows([np.zeros(9), masked()]), TypeError, "data[1]", "masked array"),
    ("data-float8", lambda p: windows(torch.zeros(9, dtype=torch.float8_e4m3fn)), TypeError, "data",
     "float8_e4m3fn"),
    ("data-sparse", lambda p: windows(torch.ones(9).to_sparse()), TypeError, "data", "sparse_coo"),
    ("data-nested", lambda p: windows(torch.nested.nested_tensor([torch.zeros(9), torch.zeros(7)],
                                                                  layout=torch.jagged)), TypeError, "data",
     "nested tensor"),
    # -- window, horizon, stride, dilation
    ("window-zero", lambda p: windows(window=0), ValueError, "window", "window=0"),
    ("window-float", lambda p: windows(window=2.5), TypeError, "window", "2.5"),
    ("window-bool", lambda p: windows(window=True), TypeError, "window", "True"),
    ("window-too-long", lambda p: windows(window=50), ValueError, "50 steps", "window=50"),
    ("window-huge-many-series", lambda p: windows([np.zeros(9), np.zeros(5)], window=2**62), ValueError, "9 steps",
     f"window={2**62}"),
    ("window-past-int64", lambda p: windows([np.zeros(9), np.zeros(5)], window=BIG), ValueError, "window",
     f"window={BIG}"),
    ("horizon-negative", lambda p: windows(horizon=-1), ValueError, "horizon", "horizon=-1"),
    ("horizon-none", lambda p: windows(horizon=None), TypeError, "horizon", "None"),
    ("stride-zero", lambda p: windows(stride=0), ValueError, "stride", "stride=0"),
    ("stride-str", lambda p: windows(stride="2"), TypeError, "stride", "'2'"),
    ("dilation-zero", lambda p: windows(dilation=0), ValueError, "dilation", "dilation=0"),
    ("dilation-float", lambda p: windows(dilation=1.5), TypeError, "dilation", "1.5"),
    ("dilation-huge-lengths", lambda p: windows(lengths=[25, 25], dilation=2**62), ValueError, "25 steps",
     f"dilation={2**62}"),
    ("dilation-past-int64", lambda p: windows(window=1, dilation=2**63), ValueError, "dilation",
     f"dilation={2**63}"),
    ("stride-past-int64", lambda p: windows(stride=2**63), ValueError, "stride", f"stride={2**63}"),
    # -- target_columns, dtype
    ("target_columns-out-of-range", lambda p: windows(target_columns=[3]), ValueError, "target_columns", "[3]"),
    ("target_columns-empty", lambda p: windows(target_columns=[]), TypeError, "target_columns", "[]"),
    ("target_columns-float", lambda p: windows(target_columns=[0.5]), TypeError, "target_columns", "[0.5]"),
    ("target_columns-on-1d", lambda p: windows(series(20, None), target_columns=[0]), ValueError, "target_columns",
     "[0]"),
    ("dtype-complex", lambda p: windows(dtype="complex64"), TypeError, "dtype", "complex64"),
    ("dtype-unknown", lambda p: windows(dtype="nonsense"), TypeError, "dtype", "'nonsense'"),
    ("dtype-float16-cast", lambda p: windows(dtype="float16"), TypeError, "dtype", "float16"),
    ("dtype-long-double", lambda p: windows(dtype=np.longdouble), TypeError, "dtype", str(np.dtype(np.longdouble))),
    # -- lengths, return_series_id
    ("lengths-wrong-sum", lambda p: windows(lengths=[20, 20]), ValueError, "lengths", "[20, 20]"),
    ("lengths-negative", lambda p: windows(lengths=[60, -10]), ValueError, "lengths", "[60, -10]"),
    ("lengths-float", lambda p: windows(lengths=[25.0, 25.0]), TypeError, "lengths", "[25.0, 25.0]"),
    ("lengths-scalar", lambda p: windows(lengths=50), TypeError, "lengths", "50"),
    ("lengths-with-a-list", lambda p: windows([np.zeros(9)], lengths=[9]), ValueError, "lengths", "lengths=[9]"),
    ("lengths-past-int64", lambda p: windows(lengths=np.array([2**64 - 1, 51], np.uint64)), ValueError, "lengths=",
     f"adding up to {2**64 - 1 + 51}"),
    ("return_series_id-int", lambda p: windows(return_series_id=1), TypeError, "return_series_id", "1"),
    # -- SlidingWindows.from_npy(path)
    ("path-none", lambda p: fb.SlidingWindows.from_npy(None, window=2), TypeError, "path", "None"),
    ("path-text-file", lambda p: fb.SlidingWindows.from_npy(npy(p, "a.txt", lambda f: f.write_text("1 2 3")),
                                                             window=2), ValueError, "path", "a.txt"),
    ("path-npz", lambda p: fb.SlidingWindows.from_npy(npy(p, "a.npz", lambda f: np.savez(f, a=np.zeros(9))),
                                                       window=2), ValueError, "path", "a.npz"),
    ("path-object-dtype", lambda p: fb.SlidingWindows.from_npy(
        npy(p, "o.npy", lambda f: np.save(f, np.array([1, None], object), allow_pickle=True)), window=1),
     ValueError, "path", "o.npy"),
    # -- WindowLoader
    ("windows-array", lambda p: fb.WindowLoader(series(50, 3), batch_size=4), TypeError, "windows", "ndarray"),
    ("batch_size-zero", lambda p: loader(batch_size=0), ValueError, "batch_size", "batch_size=0"),
    ("batch_size-float", lambda p: loader(batch_size=2.0), TypeError, "batch_size", "2.0"),
    ("batch_size-past-int64", lambda p: loader(batch_size=2**63), ValueError, "batch_size", f"batch_size={2**63}"),
    ("shuffle-int", lambda p: loader(shuffle=1), TypeError, "shuffle", "1"),
    ("shuffle-against-order", lambda p: loader(shuffle=True, order="sequential"), ValueError, "shuffle=True",
     "order='sequential'"),
    ("seed-negative", lambda p: loader(seed=-1), ValueError, "seed", "seed=-1"),
    ("seed-too-big", lambda p: loader(seed=2**64), ValueError, "seed", str(2**64)),
    ("seed-str", lambda p: loader(seed="1"), TypeError, "seed", "'1'"),
    ("drop_last-str", lambda p: loader(drop_last="no"), TypeError, "drop_last", "'no'"),
    ("device-int", lambda p: loader(device=0), TypeError, "device", "0 of type int"),
    ("device-unknown", lambda p: loader(device="gpu"), ValueError, "device", "'gpu'"),
    ("device-missing-cuda", lambda p: loader(device="cuda:99"), ValueError, "device", "'cuda:99'"),
    ("device-mps", lambda p: loader(device="mps"), ValueError, "device", "'mps'"),
    ("prefetch-negative", lambda p: loader(prefetch=-1), ValueError, "prefetch", "prefetch=-1"),
    ("prefetch-none", lambda p: loader(prefetch=None), TypeError, "prefetch", "None"),
    ("dtype-complex-batches", lambda p: loader(dtype=torch.complex64), TypeError, "dtype", "complex64"),
    ("dtype-bfloat16-of-float16", lambda p: loader(windows(series(50, 3, np.float16)), dtype=torch.bfloat16),
     TypeError, "dtype=torch.bfloat16", "float16"),
    ("normalize-str", lambda p: loader(normalize="yes"), TypeError, "normalize", "'yes'"),
    ("normalize-zero-std", lambda p: loader(normalize=(0.0, 0.0)), ValueError, "normalize", "(0.0, 0.0)"),
    ("normalize-per-feature-mismatch", lambda p: loader(normalize=([0, 0], [1, 1])), TypeError, "normalize",
     "([0, 0], [1, 1])"),
    ("normalize-integer-batches", lambda p: loader(windows(series(50, 3, np.int64))), TypeError, "normalize",
     "dtype=int64"),
    ("placement-unknown", lambda p: loader(placement="gpu"), ValueError, "placement", "'gpu'"),
    ("placement-device-on-cpu", lambda p: loader(placement="device"), ValueError, "placement='device'",
     "device='cpu'"),
    ("order-unknown", lambda p: loader(order="random"), ValueError, "order", "'random'"),
    ("order-int", lambda p: loader(order=1), ValueError, "order", "got 1"),
    ("order-empty-blocks", lambda p: loader(order=fb.BlockShuffle(0)), ValueError, "block_windows", "block_windows=0"),
    ("order-blocks-past-int64", lambda p: fb.BlockShuffle(2**70), ValueError, "block_windows",
     f"block_windows={2**70}"),
    ("rank-without-world_size", lambda p: loader(rank=0), ValueError, "world_size", "rank=0"),
    ("world_size-zero", lambda p: loader(rank=0, world_size=0), ValueError, "world_size", "world_size=0"),
    ("world_size-past-int64", lambda p: loader(rank=0, world_size=2**63), ValueError, "world_size",
     f"world_size={2**63}"),
    ("rank-past-world_size", lambda p: loader(rank=2, world_size=2), ValueError, "rank", "rank=2"),
    ("rank-float", lambda p: loader(rank=1.0, world_size=2), TypeError, "rank", "1.0"),
    ("num_threads-zero", lambda p: loader(num_threads=0), ValueError, "num_threads", "num_threads=0"),
    ("check_nan-str", lambda p: loader(check_nan="yes"), TypeError, "check_nan", "'yes'"),
    ("unknown-keyword", lambda p: loader(shufle=True), TypeError, "unexpected keyword", "'shufle'"),
    # -- load_state_dict, set_epoch
    ("state-none", lambda p: load(None), ValueError, "state", "None"),
    ("state-missing-seed", lambda p: load(state(seed=KeyError)), ValueError, "state lacks", "['seed']"),
    ("state-fingerprint-str", lambda p: load(state(fingerprint="abc")), ValueError, "fingerprint", "'abc'"),
    ("state-other-batch-size", lambda p: load({**state(), "fingerprint": {**state()["fingerprint"], "batch_size": 8}}),
     ValueError, "batch_size", "saved 8"),
    ("state-position-past-end", lambda p: load(state(position=99)), ValueError, "position", "position=99"),
    ("state-epoch-negative", lambda p: load(state(epoch=-1)), ValueError, "epoch", "epoch=-1"),
    ("state-seed-str", lambda p: load(state(seed="1")), TypeError, "seed", "'1'"),
    ("set_epoch-negative", lambda p: set_epoch(-1), ValueError, "epoch", "epoch=-1"),
    ("set_epoch-float", lambda p: set_epoch(1.5), TypeError, "epoch", "1.5"),
    ("set_epoch-none", lambda p: set_epoch(None), TypeError, "epoch", "None"),
    ("set_epoch-past-int64", lambda p: set_epoch(2**64), ValueError, "epoch", f"epoch={2**64}"),
    ("state-epoch-past-int64", lambda p: load(state(epoch=2**64)), ValueError, "epoch", f"epoch={2**64}"),
    # -- SlidingWindows.gather: every array the kernel reads
    ("gather-mean-short", lambda p: gather(mean=np.zeros(1), std=np.ones(3)), ValueError, "mean", "shape (1,)"),
    ("gather-std-long", lambda p: gather(mean=np.zeros(3), std=np.ones(300)), ValueError, "std", "shape (300,)"),
    ("gather-mean-2d", lambda p: gather(mean=np.zeros((1, 3)), std=np.ones(3)), ValueError, "mean", "shape (1, 3)"),
    ("gather-mean-scalar", lambda p: gather(mean=0.0, std=np.ones(3)), ValueError, "mean", "shape ()"),
    ("gather-mean-str", lambda p: gather(mean="0", std=np.ones(3)), TypeError, "mean", "'0'"),
    ("gather-mean-nan", lambda p: gather(mean=[0, np.nan, 0], std=np.ones(3)), ValueError, "mean", "mean[1]=nan"),
    ("gather-std-zero", lambda p: gather(mean=np.zeros(3), std=[1, 1, 0]), ValueError, "std", "std[2]=0.0"),
    ("gather-std-inf", lambda p: gather(mean=np.zeros(3), std=[np.inf, 1, 1]), ValueError, "std", "std[0]=inf"),
    ("gather-mean-alone", lambda p: gather(mean=np.zeros(3)), TypeError, "mean and std", "std=None"),
    ("gather-mean-into-integers", lambda p: gather(mean=np.zeros(3), std=np.ones(3), **outputs(np.int32)),
     TypeError, "mean and std", "int32"),
    ("gather-out-float16", lambda p: gather(**outputs(np.float16)), TypeError, "out_x", "float16"),
    ("gather-out-float32-of-float16", lambda p: windows(series(50, 3, np.float16)).gather(
        np.array([0, 1]), **outputs(np.float32)), TypeError, "out_x", "float16"),
    ("gather-out-big-endian", lambda p: gather(**outputs(">f8")), ValueError, "out_x", ">f8"),
    ("gather-series_out-float", lambda p: gather(series_out=np.empty(2)), TypeError, "series_out", "float64"),
    # -- collate
    ("collate-none", lambda p: fb.collate(None), TypeError, "batch", "None"),
    ("collate-empty", lambda p: fb.collate([]), TypeError, "batch", "[]"),
    ("collate-list-of-batches", lambda p: fb.collate([window_batch(), window_batch()]), TypeError, "batch",
     "WindowBatch(2 windows"),
    ("collate-ragged-windows", lambda p: fb.collate([(np.zeros(3), np.zeros(1)), (np.zeros(4), np.zeros(1))]),
     ValueError, "batch", "array([0., 0., 0., 0.])"),
]


class WorkStarted(AssertionError):
    pass


@pytest.fixture
def tripwire(monkeypatch):
    """Make every pass over the data at construction fail loudly."""

    def refuse(*args, **kwargs):
        raise WorkStarted("a pass over the data started before every argument was checked")

    monkeypatch.setattr(fb.normalize, "feature_stats", refuse)
    monkeypatch.setattr(fb.SlidingWindows, "find_nan", refuse)


@pytest.mark.parametrize("call, error, name, shown", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_is_refused_before_any_work(tmp_path, tripwire, call, error, name, shown):
    with pytest.raises(error, match=f"{re.escape(name)}.*{re.escape(shown)}") as info:
        call(tmp_path)
    assert type(info.value) is error, f"{type(info.value).__name__} is a subclass, not {error.__name__} itself"


def test_there_are_enough_bad_input_cases_and_their_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


def test_a_missing_file_names_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npy"):
        fb.SlidingWindows.from_npy(tmp_path / "nothing.npy", window=2)


def test_a_refused_state_leaves_the_loader_as_it_was():
    lo = plain_loader(shuffle=True)
    it = iter(lo)
    next(it)
    before = lo.state_dict()
    with pytest.raises(ValueError, match="position"):
        lo.load_state_dict(state(position=99))
    assert lo.state_dict() == before


def test_the_nan_check_runs_only_after_every_argument_passed(monkeypatch):
    # With valid arguments the tripwire goes off: the table's cases really were stopped before it.
    monkeypatch.setattr(fb.SlidingWindows, "find_nan", lambda self: (_ for _ in ()).throw(WorkStarted()))
    with pytest.raises(WorkStarted):
        loader()


# -- odd but valid ------------------------------------------------------------------------


def epoch_of(data, geometry, prefetch=2, **options):
    """Batches of one epoch of ``data`` and the reference's for the same values."""
    values = data.numpy() if isinstance(data, torch.Tensor) else np.array(data)
    batches = list(fb.WindowLoader(fb.SlidingWindows(data, **geometry), prefetch=prefetch, **options))
    return batches, reference_batches(values, **options, **geometry)


@pytest.mark.parametrize("layout", ["fortran", "every-other-row", "every-other-column", "reversed", "torch-strided"])
def test_strided_and_fortran_views_give_the_reference_batches(layout):
    base = series(120, 4)
    data = {
        "fortran": np.asfortranarray(base),
        "every-other-row": base[::2],
        "every-other-column": base[:, ::2],
        "reversed": base[::-1],
        "torch-strided": torch.from_numpy(base)[::3, 1:],
    }[layout]
    geometry = dict(window=5, horizon=2, stride=2, dilation=2, target_columns=[1, 0])
    batches, expected = epoch_of(data, geometry, batch_size=7, shuffle=True, seed=3, prefetch=0)
    assert_batches_equal(batches, expected)


def test_read_only_data_is_read_and_never_written():
    data = series(200, 2)
    data.flags.writeable = False
    copy = data.copy()
    w = fb.SlidingWindows(data, window=6, horizon=3)
    lo = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=0, normalize=True, check_nan=True)
    for x, y in lo:
        x.add_(1.0)  # batches are the user's to modify; the data is not
        y.mul_(0.0)
    assert not data.flags.writeable
    np.testing.assert_array_equal(data, copy)
    assert w.find_nan() is None


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64])
def test_integer_data_gives_integer_batches_or_the_cast_asked_for(dtype):
    data = (series(90, 3) % 100).astype(dtype)
    geometry = dict(window=4, horizon=2, stride=3, target_columns=[2])
    batches, expected = epoch_of(data, geometry, batch_size=5)
    assert batches[0][0].dtype == torch.from_numpy(data[:0]).dtype
    assert_batches_equal(batches, expected)
    w = fb.SlidingWindows(data, dtype="float32", **geometry)
    x, y = next(iter(fb.WindowLoader(w, batch_size=5)))
    np.testing.assert_array_equal(x.numpy(), expected[0][0].astype(np.float32))
    assert w.find_nan() is None  # integers have no NaN, nothing to read


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_values_pass_through_unchanged(dtype):
    data = series(60, 3, dtype)
    data[[5, 17, 40], [0, 2, 1]] = np.nan
    data[30] = np.inf  # not a NaN: never reported
    geometry = dict(window=4, horizon=2, dilation=2)
    batches, expected = epoch_of(data, geometry, batch_size=8, shuffle=True, seed=2)
    assert sum(int(torch.isnan(x).sum()) for x, _ in batches) > 0
    assert_batches_equal(batches, expected)  # NaN equals NaN here, at the same places
    w = fb.SlidingWindows(data, **geometry)
    assert w.find_nan() == 1  # window 0 reads rows 0, 2, 4, 6 and targets 7, 8; window 1 reads row 5
    with pytest.raises(ValueError, match=r"window 1 of 52 \(its input starts at step 1 of the data\)"):
        fb.WindowLoader(w, batch_size=8, check_nan=True)


def test_nan_in_a_dilation_gap_or_a_column_outside_the_target_is_not_reported():
    data = series(40, 2)
    data[1, :] = np.nan  # between window 0's input steps 0 and 2
    data[7, 1] = np.nan  # a target step of windows 0-2, but column 1 is not a target
    w = fb.SlidingWindows(data, window=3, horizon=2, dilation=2, stride=2, target_columns=[0])
    # Window i starts at 2i and reads rows 2i, 2i+2, 2i+4: row 1 and row 7 (column 0 only counts) are never read.
    assert w.find_nan() is None
    data[7, 0] = np.nan  # window i's targets are rows 2i+5 and 2i+6: window 1's first target
    assert w.find_nan() == 1


def test_many_series_name_the_series_and_step_of_the_first_nan_window():
    parts = [series(12, 2), series(3, 2), series(30, 2)]
    parts[2][9, 1] = np.nan
    w = fb.SlidingWindows(parts, window=4, horizon=1)
    # Series 0 has 8 windows, series 1 none; row 9 of series 2 is the target of its window 5 (rows 5-8 -> 9).
    assert w.find_nan() == 8 + 5
    with pytest.raises(ValueError, match=r"window 13 of 34 \(its input starts at step 5 of series 2\)"):
        fb.WindowLoader(w, batch_size=4, check_nan=True)


def test_a_batch_size_larger_than_the_data_gives_one_batch_or_none():
    data = series(30, None)
    geometry = dict(window=5, horizon=1)
    n = reference_count(30, **geometry)
    batches, expected = epoch_of(data, geometry, batch_size=10**9, shuffle=True, seed=1)
    assert len(batches) == 1 and batches[0][0].shape[0] == n
    assert_batches_equal(batches, expected)
    assert list(fb.WindowLoader(fb.SlidingWindows(data, **geometry), batch_size=n + 1, drop_last=True)) == []


@pytest.mark.parametrize("order", ["sequential", "shuffle", "feistel", "block"])
def test_a_single_window(order):
    data = series(9, 2)
    w = fb.SlidingWindows(data, window=3, horizon=2, dilation=3)  # span 9: exactly one window
    assert len(w) == 1
    lo = fb.WindowLoader(w, batch_size=4, order=order, seed=5, rank=1, world_size=2)
    (x, y), = list(lo)  # rank 1 of 2 gets the padding: the same single window
    np.testing.assert_array_equal(x.numpy(), data[[[0, 3, 6]]])
    np.testing.assert_array_equal(y.numpy(), data[[[7, 8]]])


@pytest.mark.parametrize("as_list", [True, False])
def test_a_series_shorter_than_a_window_among_many_has_no_windows(as_list):
    parts = [series(10, None) + 100 * k for k in range(5)]
    parts[2] = parts[2][:3]  # shorter than the window
    lengths = [len(p) for p in parts]
    data = parts if as_list else np.concatenate(parts)
    extra = {} if as_list else {"lengths": lengths}
    w = fb.SlidingWindows(data, window=5, horizon=1, return_series_id=True, **extra)
    assert len(w) == 4 * (10 - 6 + 1)
    batches = as_numpy(fb.WindowLoader(w, batch_size=3, shuffle=True, seed=9))
    got_series = np.concatenate([b[2] for b in batches])
    assert sorted(set(got_series.tolist())) == [0, 1, 3, 4]
    firsts = np.concatenate([b[0][:, 0] for b in batches])
    assert sorted(firsts.tolist()) == sorted(float(p[i]) for k, p in enumerate(parts) if k != 2 for i in range(5))
    assert_same_batches(batches, as_numpy(fb.WindowLoader(w, batch_size=3, shuffle=True, seed=9, prefetch=0)))


# -- statistics and outputs the kernels read ---------------------------------------------


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
@pytest.mark.parametrize("as_list", [False, True])
def test_normalize_refuses_an_infinite_value_naming_its_feature_and_row(bad, as_list):
    data = series(300, 3)
    data[123, 2] = bad
    w = fb.SlidingWindows([data[:100], data[100:]] if as_list else data, window=4)
    with pytest.raises(ValueError, match=rf"normalize=True needs finite values, but feature 2 holds {bad} at row 123"):
        fb.WindowLoader(w, batch_size=8, normalize=True)


@pytest.mark.parametrize("scale", [1e200, 1e300, 2.0**1020])
def test_normalize_of_float64_near_its_largest_values_gives_the_standardised_batches(scale):
    base = np.random.default_rng(4).standard_normal((500, 2))
    data = base * scale
    lo = fb.WindowLoader(fb.SlidingWindows(data, window=5, horizon=2), batch_size=50, normalize=True)
    mean, std = lo.normalize_stats
    np.testing.assert_allclose(mean / scale, base.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std / scale, base.std(axis=0), rtol=1e-12)
    x = torch.cat([b[0] for b in lo]).numpy()
    assert np.isfinite(x).all()
    expected = (base - base.mean(axis=0)) / base.std(axis=0)
    np.testing.assert_allclose(x[:, 0], expected[: len(x)], rtol=1e-9, atol=1e-12)


def test_normalize_of_values_at_float64s_limits_is_finite():
    largest = np.finfo(np.float64).max
    data = np.array([[-largest, 1.0], [largest, 1.0]] * 20)
    lo = fb.WindowLoader(fb.SlidingWindows(data, window=3), batch_size=8, normalize=True)
    np.testing.assert_array_equal(lo.normalize_stats[0], [0.0, 1.0])
    np.testing.assert_array_equal(lo.normalize_stats[1], [largest, 1.0])  # a constant feature gets std 1
    x = torch.cat([b[0] for b in lo]).numpy()
    np.testing.assert_array_equal(x[:, :, 0], np.where(data[: len(x) + 2, 0] > 0, 1.0, -1.0)[
        np.arange(len(x))[:, None] + np.arange(3)])
    assert (x[:, :, 1] == 0).all()


def test_mean_and_std_of_the_right_length_standardise_and_nothing_past_them_is_read():
    w = fb.SlidingWindows(np.ones((4, 3), np.float32), window=1, horizon=0)
    with pytest.raises(ValueError, match=r"mean must be a 1-D array of 3 values \(one per feature\), got shape \(1,\)"):
        w.gather(np.array([0]), mean=np.zeros(1), std=np.ones(1))
    x, _ = w.gather(np.array([0, 3]), mean=[0.5, 1, 0], std=np.array([0.5, 2, 4], np.float32))
    np.testing.assert_array_equal(x, [[[1.0, 0.0, 0.25]]] * 2)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_outputs_of_the_data_width_or_a_real_cast_are_filled(dtype):
    data = series(50, 3, np.float16 if dtype == np.float16 else np.float32)
    w = fb.SlidingWindows(data, window=4)
    out = outputs(dtype if dtype == np.float16 else np.float64)
    x, y = w.gather(np.array([0, 7]), **out)
    np.testing.assert_array_equal(x, data[[[0, 1, 2, 3], [7, 8, 9, 10]]].astype(x.dtype))
    assert x.base is out["out_x"] or x is out["out_x"]
