"""Windows from a table: the build of a panel, and its gather kernel alone (random windows, preallocated outputs).

Issue 11's columns (the target, 2 observed, 3 known and 1 static covariate,
float32) and geometry (T=64, H=16) on a smaller frame; the full-size
comparison with pytorch-forecasting is ``python -m bench.frames_speed``.
"""

from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from bench.frames_speed import fastbatch_windows, make_frame  # noqa: E402
from fastbatch import panel  # noqa: E402

N_SERIES, N_STEPS, WINDOW, HORIZON, CHUNK = 200, 1000, 64, 16, 4096


@pytest.fixture(scope="module")
def frame():
    return make_frame(N_SERIES, N_STEPS)


def test_build_from_frame(benchmark, record_rate, frame):
    w = benchmark.pedantic(fastbatch_windows, args=(frame, WINDOW, HORIZON), rounds=10, warmup_rounds=1)
    assert w.panel.values.flags.c_contiguous and w.panel.future.flags.c_contiguous
    record_rate(len(frame), frame.memory_usage(index=False).sum())


@pytest.mark.parametrize("layout", ["row-major", "column-major"])
def test_panel_gather_random_windows(benchmark, record_rate, frame, layout):
    """Row-major panels (as tables are built) take the runs kernel; column-major ones the strided kernel."""
    from dataclasses import replace

    w = fastbatch_windows(frame, WINDOW, HORIZON)
    p = w.panel
    if layout == "column-major":
        p = replace(p, values=np.asfortranarray(p.values), future=np.asfortranarray(p.future))
    assert panel.runs(p) == (layout == "row-major")
    ids = np.random.default_rng(0).integers(0, len(w), CHUNK).astype(np.int32)
    out = panel.empty_arrays(p, CHUNK)

    got = benchmark.pedantic(panel.gather, args=(p, w.index, ids), kwargs=dict(out=out, check=False), rounds=20,
                             warmup_rounds=2)

    want = panel.gather(w.panel, w.index, ids[:64])
    for name in panel.PanelArrays._fields:
        np.testing.assert_array_equal(getattr(got, name)[:64], getattr(want, name), err_msg=name)
    record_rate(CHUNK, 2 * CHUNK * w.window_nbytes)
