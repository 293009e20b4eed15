"""fastbatch's windows equal pytorch-forecasting's on the same frame (skipped without pytorch-forecasting).

Same encoder and prediction lengths, the same known and unknown reals and
static real, no normalisation on either side: every value of every compared
window is identical.  The helpers live in bench/frames_speed.py, which runs
the same check on the benchmark's frame.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("pytorch_forecasting")

from bench.frames_speed import compare, fastbatch_windows, make_frame, ptf_dataset  # noqa: E402

WINDOW, HORIZON = 12, 4


@pytest.fixture(scope="module")
def both():
    frame = make_frame(n_series=7, n_steps=90, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ptf_dataset(frame, WINDOW, HORIZON)
    return ds, fastbatch_windows(frame, WINDOW, HORIZON)


def test_both_libraries_have_the_same_windows(both):
    ds, w = both
    assert len(ds) == len(w) == 7 * (90 - WINDOW - HORIZON + 1)


def test_every_window_is_identical_field_by_field(both):
    ds, w = both
    assert compare(ds, w, np.arange(len(ds))) == len(ds)


def test_an_unsorted_frame_gives_the_same_windows(both):
    ds, _ = both
    shuffled = make_frame(n_series=7, n_steps=90, seed=3).sample(frac=1, random_state=0)
    assert compare(ds, fastbatch_windows(shuffled, WINDOW, HORIZON), np.arange(0, len(ds), 5)) > 0


def test_the_comparison_sees_a_window_one_step_off(both):
    ds, w = both

    class Shifted:
        """fastbatch's windows, each read one step later: what an off-by-one would deliver."""

        def __getattr__(self, name):
            return getattr(w, name)

        def gather(self, ids):
            return w.gather(np.asarray(ids) + 1)

    with pytest.raises(AssertionError, match="differs"):
        compare(ds, Shifted(), np.arange(10))
