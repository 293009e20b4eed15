"""Windows from a table through the loader's machinery: batches, paths, orders, resume, adapter, split, scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

pd = pytest.importorskip("pandas")

import fastbatch as fb  # noqa: E402
from fastbatch.frame_windows import PanelBatch  # noqa: E402
from helpers_resume import as_numpy, assert_same_batches  # noqa: E402
from reference_frames import frames, reference_windows  # noqa: E402

FIELDS = ("past", "future", "static", "target")


def _table(n_series: int = 6, seed: int = 0, shuffled: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for s in range(n_series):
        n = 120 + 17 * s
        parts.append(pd.DataFrame({
            "unique_id": f"id-{s}", "ds": pd.date_range("2024-01-01", periods=n, freq="h"),
            "y": rng.standard_normal(n).cumsum() + 10 * s, "load": rng.standard_normal(n),
            "hour": np.arange(n) % 24, "holiday": (np.arange(n) % 7 == 0).astype(float), "region": s % 3,
        }))
    df = pd.concat(parts, ignore_index=True)
    return df.sample(frac=1, random_state=seed) if shuffled else df


OPTIONS = dict(id="unique_id", time="ds", target="y", past=["load"], future=["hour", "holiday"], static=["region"],
               window=12, horizon=3)


def _windows(**extra) -> fb.SlidingWindows:
    return fb.SlidingWindows.from_frame(_table(), **{**OPTIONS, **extra})


def _order_ids(loader: fb.WindowLoader, epoch: int) -> np.ndarray:
    from fastbatch.order import EpochOrder

    spec = loader.order
    order = EpochOrder(len(loader.windows), kind=spec.kind, seed=loader.seed, epoch=epoch,
                       block=(spec.block_windows, spec.pool_blocks), rank=loader.rank,
                       world_size=loader.world_size, drop_last=loader.drop_last)
    return order.ids(0, loader.n_samples)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_are_the_windows_of_the_pandas_reference_in_the_epochs_order(prefetch):
    w = _windows()
    loader = fb.WindowLoader(w, batch_size=40, shuffle=True, seed=3, prefetch=prefetch)
    batches = list(loader)
    assert all(isinstance(b, PanelBatch) for b in batches)
    _, want = reference_windows(_table(), **OPTIONS)
    ids = _order_ids(loader, 0)
    got = {f: np.concatenate([getattr(b, f).numpy() for b in batches]) for f in (*FIELDS, "series")}
    assert len(got["past"]) == len(ids) == len(want)
    for k, i in enumerate(ids):
        for f in FIELDS:
            np.testing.assert_array_equal(got[f][k], want[i][f], err_msg=f"{f} of window {i}")
        assert got["series"][k] == want[i]["series"]


@settings(max_examples=10, deadline=None)
@given(case=frames())
def test_random_tables_through_the_loader_equal_the_reference(case):
    df, options = case
    ids, want = reference_windows(df, **options)
    if not want:
        return
    options = {k: v for k, v in options.items() if k != "dtype"}
    w = fb.SlidingWindows.from_frame(df, **options, return_series_id=True)
    batches = list(fb.WindowLoader(w, batch_size=7, prefetch=0))
    covariates = bool(w.covariates)
    for k, rec in enumerate(want):
        b, r = batches[k // 7], k % 7
        if covariates:
            for f in FIELDS:
                np.testing.assert_array_equal(getattr(b, f)[r].numpy(), rec[f])
            assert int(b.series[r]) == rec["series"]
        else:
            np.testing.assert_array_equal(b[0][r].numpy(), rec["past"])
            np.testing.assert_array_equal(b[1][r].numpy(), rec["target"])
            assert int(b[2][r]) == rec["series"]


@pytest.mark.parametrize("path", ["pinned", "resident"])
@pytest.mark.parametrize("scale", [None, "standard"])
@pytest.mark.parametrize("dtype", ["float32", torch.bfloat16])
def test_every_path_gives_the_same_batches(path, scale, dtype):
    """The pinned copy and the device-resident gather (torch, here on CPU tensors) give the host gather's bits."""
    def run(p, prefetch):
        loader = fb.WindowLoader(_windows(scale=scale), batch_size=32, shuffle=True, seed=1, prefetch=prefetch,
                                 dtype=dtype)
        loader._path = p
        return as_numpy(tuple(t.float() if t.dtype == torch.bfloat16 else t for t in b) for b in loader)

    assert_same_batches(run(path, 2), run("cpu", 0), f"{path} path")


def test_the_resident_path_resumes_and_keeps_split_windows():
    train, valid = _windows(scale="robust").split(last=20)
    expected = as_numpy(fb.WindowLoader(valid, batch_size=16, order="feistel", seed=2, prefetch=0))
    loader = fb.WindowLoader(valid, batch_size=16, order="feistel", seed=2)
    loader._path = "resident"
    it = iter(loader)
    head = as_numpy(next(it) for _ in range(2))
    state = loader.state_dict()
    del it
    again = fb.WindowLoader(valid, batch_size=16, order="feistel", seed=2)
    again._path = "resident"
    again.load_state_dict(state)
    assert_same_batches(head + as_numpy(again), expected, "resident, resumed at batch 2")


@pytest.mark.parametrize("order", ["shuffle", "feistel", "block"])
def test_resume_mid_epoch_and_a_batch_size_change(order):
    w = _windows()
    full = as_numpy(fb.WindowLoader(w, batch_size=25, order=order, seed=2))
    first = fb.WindowLoader(w, batch_size=25, order=order, seed=2)
    it = iter(first)
    got = as_numpy(next(it) for _ in range(5))
    state = first.state_dict()
    del it
    resumed = fb.WindowLoader(w, batch_size=25, order=order, seed=2)
    resumed.load_state_dict(state)
    assert_same_batches(got + as_numpy(resumed), full, f"{order}: resumed at batch 5")
    changed = fb.WindowLoader(w, batch_size=25, order=order, seed=2)
    it = iter(changed)
    head = [next(it) for _ in range(3)]
    changed.set_batch_size(64)
    rows = torch.cat([b.past for b in head + list(it)])
    np.testing.assert_array_equal(rows.numpy(), np.concatenate([b[0] for b in full]))


def test_ranks_share_the_windows_out():
    w = _windows()
    seen = []
    for rank in range(3):
        loader = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=4, rank=rank, world_size=3, drop_last=True)
        ids = _order_ids(loader, 0)
        got = torch.cat([b.past for b in loader]).numpy()
        np.testing.assert_array_equal(got, w.gather(ids).past)  # this rank's shard, in its order
        seen.append(ids)
    everything = np.concatenate(seen)
    assert len(np.unique(everything)) == len(everything) == 3 * ((len(w) // 3) // 16 * 16)


def test_without_covariates_batches_are_plain_tuples():
    df = _table()
    w = fb.SlidingWindows.from_frame(df, id="unique_id", time="ds", target="y", window=8, horizon=2)
    x, y = next(iter(fb.WindowLoader(w, batch_size=5)))
    assert x.shape == (5, 8, 1) and y.shape == (5, 2, 1)
    w = fb.SlidingWindows.from_frame(df, id="unique_id", time="ds", target="y", window=8, horizon=2,
                                     return_series_id=True)
    x, y, series = next(iter(fb.WindowLoader(w, batch_size=5)))
    assert series.dtype == torch.int64 and series.shape == (5,)


def test_a_batch_is_a_pytree_and_goes_through_the_dataloader_adapter():
    from torch.utils._pytree import tree_flatten
    from torch.utils.data import DataLoader

    w = _windows()
    batch = next(iter(fb.WindowLoader(w, batch_size=8)))
    leaves, _ = tree_flatten(batch)
    assert len(leaves) == 5 and all(isinstance(t, torch.Tensor) for t in leaves)
    adapter = next(iter(DataLoader(w, batch_size=8, collate_fn=fb.collate)))
    assert isinstance(adapter, PanelBatch)
    for f in PanelBatch._fields:
        assert torch.equal(getattr(adapter, f), getattr(batch, f))


def test_split_trains_before_the_cutoff_and_scales_with_training_statistics_only():
    df = _table(shuffled=False)
    w = fb.SlidingWindows.from_frame(df, **OPTIONS, scale="standard")
    cutoff = pd.Timestamp("2024-01-05 12:00")
    train, valid = w.split(at=cutoff)
    assert len(train) and len(valid)
    step = pd.Timedelta("1h")
    for windows, before in ((train, True), (valid, False)):
        for i in range(len(windows)):
            s, start = windows.locate(i)
            first_target = pd.Timestamp("2024-01-01") + (start + OPTIONS["window"]) * step
            last_target = first_target + (OPTIONS["horizon"] - 1) * step
            assert (last_target < cutoff) if before else (first_target >= cutoff), (before, i)
    assert train.scaler is valid.scaler
    # The target's statistics: those of each series' rows before the cutoff.
    s0 = df[(df.unique_id == "id-0") & (df.ds < cutoff)].y
    assert train.scaler.center[0, 0] == pytest.approx(s0.mean())
    b = next(iter(fb.WindowLoader(valid, batch_size=16)))
    back = train.scaler.inverse(b.target, b.series)
    raw = fb.SlidingWindows.from_frame(df, **OPTIONS).split(at=cutoff)[1]
    rb = next(iter(fb.WindowLoader(raw, batch_size=16)))
    np.testing.assert_allclose(np.asarray(back), rb.target.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(normalize=True), ValueError, "scale='standard'"),
        (dict(dtype="int32"), TypeError, "dtype must be float32, float64 or torch.bfloat16"),
    ],
)
def test_loader_options_a_table_cannot_take_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        fb.WindowLoader(_windows(), batch_size=8, **kwargs)


def test_bfloat16_batches():
    b = next(iter(fb.WindowLoader(_windows(), batch_size=8, dtype=torch.bfloat16)))
    assert b.past.dtype == b.future.dtype == b.static.dtype == b.target.dtype == torch.bfloat16
    assert b.series.dtype == torch.int64


def test_repr_counts_skipped_series_and_the_fields():
    df = _table()
    df = pd.concat([df, pd.DataFrame({"unique_id": "short", "ds": pd.date_range("2024-01-01", periods=5, freq="h"),
                                      "y": 0.0, "load": 0.0, "hour": 0, "holiday": 0.0, "region": 0})])
    text = repr(fb.SlidingWindows.from_frame(df, **OPTIONS))
    assert "skipped_series=1" in text and "past=['load']" in text
