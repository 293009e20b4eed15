"""Resumable epochs: state_dict / load_state_dict continue with exactly the remaining batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastbatch as fb
from fastbatch.resume import FORMAT
from helpers_resume import as_numpy, assert_same_batches, check_resume, take
from reference import series


def windows_1d(n_steps=203, **kw):
    return fb.SlidingWindows(series(n_steps, None, np.float32), window=5, horizon=2, **kw)


@pytest.mark.parametrize("order", ["sequential", "shuffle", "feistel", "block", fb.BlockShuffle(3, 2)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_at_start_middle_and_end_of_an_epoch(order, drop_last):
    w = windows_1d()
    check_resume(lambda: fb.WindowLoader(w, batch_size=16, order=order, seed=7, drop_last=drop_last))


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_with_small_chunks_and_any_prefetch(monkeypatch, prefetch):
    # Chunks of two batches, so the saved position falls inside and between chunks.
    monkeypatch.setattr(fb.loader, "CHUNK_BYTES", 2 * 8 * 7 * 4)
    w = windows_1d()
    check_resume(lambda: fb.WindowLoader(w, batch_size=8, shuffle=True, seed=3, prefetch=prefetch),
                 positions=[0, 1, 2, 3, 5, 12])


def test_resume_many_series_with_series_ids():
    data = [series(40 + 13 * k, 3, np.float64) + 1000 * k for k in range(6)]
    w = fb.SlidingWindows(data, window=4, horizon=1, stride=2, return_series_id=True)
    check_resume(lambda: fb.WindowLoader(w, batch_size=5, shuffle=True, seed=11))


@pytest.mark.parametrize("world_size,rank", [(2, 0), (2, 1), (3, 2)])
def test_resume_one_rank_of_many(world_size, rank):
    w = windows_1d()
    check_resume(lambda: fb.WindowLoader(w, batch_size=8, shuffle=True, seed=1, rank=rank, world_size=world_size))


def test_a_state_saved_by_rank_0_resumes_every_rank():
    w = windows_1d()
    saver = fb.WindowLoader(w, batch_size=8, shuffle=True, seed=1, rank=0, world_size=2)
    it, _ = take(saver, 4)
    state = saver.state_dict()
    other = fb.WindowLoader(w, batch_size=8, shuffle=True, seed=1, rank=1, world_size=2)
    other.load_state_dict(state)
    expected = as_numpy(fb.WindowLoader(w, batch_size=8, shuffle=True, seed=1, rank=1, world_size=2))[4:]
    assert_same_batches(as_numpy(other), expected, "rank 1 from rank 0's state")


def test_state_is_small_json_and_says_where_the_next_batch_comes_from():
    w = windows_1d()
    loader = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=2**64 - 1)
    state = loader.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert state["format"] == FORMAT and (state["seed"], state["epoch"], state["position"]) == (2**64 - 1, 0, 0)
    it, _ = take(loader, 3)
    assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (0, 3)
    list(it)
    assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (1, 0)
    # A million series still make a small state: the lengths travel as a checksum.
    many = fb.SlidingWindows(np.zeros(2_000_000, np.float32), lengths=np.full(1_000_000, 2), window=1)
    assert len(json.dumps(fb.WindowLoader(many, batch_size=64).state_dict())) < 600


def test_an_epoch_left_early_is_resumed_where_it_stopped():
    w = windows_1d()
    loader = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=4)
    full = as_numpy(fb.WindowLoader(w, batch_size=16, shuffle=True, seed=4))
    for k, _ in enumerate(loader):
        if k == 4:
            break  # the iterator is dropped here; its position is not
    resumed = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=4)
    resumed.load_state_dict(loader.state_dict())
    assert_same_batches(as_numpy(resumed), full[5:], "after break")


def test_resume_is_computed_not_replayed(monkeypatch):
    # Resuming at the last batch gathers only that batch's windows, never those before it.
    w = fb.SlidingWindows(np.arange(1_000_000, dtype=np.float32), window=4)
    loader = fb.WindowLoader(w, batch_size=1000, order="feistel", seed=0, prefetch=0)
    state = dict(loader.state_dict(), position=len(loader) - 1, windows=(len(loader) - 1) * 1000)
    gathered = []
    original = fb.SlidingWindows.gather

    def counting(self, ids, *args, **kwargs):
        gathered.append(len(ids))
        return original(self, ids, *args, **kwargs)

    monkeypatch.setattr(fb.SlidingWindows, "gather", counting)
    resumed = fb.WindowLoader(w, batch_size=1000, order="feistel", seed=0, prefetch=0)
    resumed.load_state_dict(state)
    (x, _), = list(resumed)
    assert sum(gathered) == len(w) - (len(loader) - 1) * 1000 == x.shape[0]


def test_set_epoch_keeps_a_loaded_position_of_the_same_epoch_only():
    w = windows_1d()
    full = as_numpy(fb.WindowLoader(w, batch_size=16, shuffle=True, seed=9))
    loader = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=9)
    loader.load_state_dict(dict(loader.state_dict(), position=5, windows=80))
    loader.set_epoch(0)  # a training loop's usual call: the resumed position stays
    assert_same_batches(as_numpy(loader), full[5:], "set_epoch(same) after load")
    loader.load_state_dict(dict(loader.state_dict(), epoch=0, position=5, windows=80))
    loader.set_epoch(1)
    assert loader.state_dict()["position"] == 0


def test_seed_comes_from_the_state():
    w = windows_1d()
    saver = fb.WindowLoader(w, batch_size=16, shuffle=True)  # a drawn seed
    it, _ = take(saver, 2)
    resumed = fb.WindowLoader(w, batch_size=16, shuffle=True)
    resumed.load_state_dict(saver.state_dict())
    assert resumed.seed == saver.seed
    assert_same_batches(as_numpy(resumed), as_numpy(it), "drawn seed")


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(windows=dict(window=6)), "window"),
        (dict(windows=dict(stride=2)), "stride"),
        (dict(windows=dict(n_steps=300)), "n_windows"),
        (dict(loader=dict(drop_last=True)), "drop_last"),
        (dict(loader=dict(order="block")), "order"),
        (dict(loader=dict(rank=0, world_size=2)), "world_size"),
    ],
)
def test_a_state_from_another_geometry_is_refused_naming_the_difference(change, field):
    def make(windows=None, loader=None):
        wk = dict(window=5, horizon=2, stride=1, n_steps=203)
        wk.update(windows or {})
        n_steps = wk.pop("n_steps")
        lk = dict(batch_size=16, shuffle=True, seed=1)
        lk.update(loader or {})
        return fb.WindowLoader(fb.SlidingWindows(series(n_steps, None, np.float32), **wk), **lk)

    state = make().state_dict()
    with pytest.raises(ValueError, match=rf"different windows or batching.*{field}: saved"):
        make(**change).load_state_dict(state)


def test_series_lengths_are_part_of_the_geometry():
    data = series(100, None, np.float32)
    a = fb.SlidingWindows(data, lengths=[50, 50], window=3)
    b = fb.SlidingWindows(data, lengths=[40, 60], window=3)
    assert len(a) == len(b)
    with pytest.raises(ValueError, match="series_lengths_crc32"):
        fb.WindowLoader(b, batch_size=4).load_state_dict(fb.WindowLoader(a, batch_size=4).state_dict())


@pytest.mark.parametrize(
    "state,error,match",
    [
        ({"epoch": 0}, ValueError, "not a WindowLoader state"),
        ("position=3", ValueError, "not a WindowLoader state"),
        ({"format": FORMAT, "seed": 1}, ValueError, "lacks"),
    ],
)
def test_malformed_states_are_refused(state, error, match):
    with pytest.raises(error, match=match):
        fb.WindowLoader(windows_1d(), batch_size=16).load_state_dict(state)


def test_a_position_past_the_epoch_is_refused():
    loader = fb.WindowLoader(windows_1d(), batch_size=16)
    with pytest.raises(ValueError, match=rf"windows must be an integer <= {loader.n_samples}"):
        loader.load_state_dict(dict(loader.state_dict(), windows=loader.n_samples + 1))
    with pytest.raises(ValueError, match=r"position must be an integer <= 32"):  # more batches than windows
        loader.load_state_dict(dict(loader.state_dict(), position=33, windows=32))


def test_a_state_with_another_batch_size_sets_the_batch_size():
    """The batch size is run state (set_batch_size changes it): a loader built with another adopts the saved one."""
    w = fb.SlidingWindows(series(300, None, np.float32), window=5)
    saver = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=1)
    take(saver, 3)
    resumed = fb.WindowLoader(w, batch_size=64, shuffle=True, seed=1)
    resumed.load_state_dict(saver.state_dict())
    assert resumed.batch_size == 16 and len(resumed) == len(saver)
    full = as_numpy(fb.WindowLoader(w, batch_size=16, shuffle=True, seed=1))
    assert_same_batches(as_numpy(resumed), full[3:], "resumed with the saved batch size")


def test_a_state_saved_in_the_first_format_still_resumes():
    """Format 1 counted batches of the fingerprint's batch size; such checkpoints keep working."""
    w = fb.SlidingWindows(series(300, None, np.float32), window=5)
    loader = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=1)
    state = loader.state_dict()
    old = {"format": "fastbatch.WindowLoader/1", "seed": state["seed"], "epoch": 0, "position": 5,
           "fingerprint": {**state["fingerprint"], "batch_size": 16}}
    resumed = fb.WindowLoader(w, batch_size=16, shuffle=True, seed=1)
    resumed.load_state_dict(old)
    full = as_numpy(fb.WindowLoader(w, batch_size=16, shuffle=True, seed=1))
    assert_same_batches(as_numpy(resumed), full[5:], "resumed from a format-1 state")
