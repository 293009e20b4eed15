"""A Parquet dataset through from_parquet's cache and one epoch, in bounded anonymous memory (bench.frames_memory, small).

The full check (2 GiB, issue 11's 300 MB goal) is ``python -m bench.frames_memory``;
its figures are in docs/performance.md.  Here: a dataset a few times larger
than the conversion's block, so a conversion that held the whole table, or an
epoch that copied the mapped cache, would show.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from bench.frames_memory import run_child, write_dataset  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_cache_is_written_once_then_mapped_and_an_epoch_stays_small(tmp_path: Path):
    data = write_dataset(tmp_path / "data", 0.15, steps=5_000, series_per_file=200)
    table_mib = data["rows"] * (2 * 8 + 7 * 4) / 2**20  # the whole table in Arrow: 2 int64 and 7 float32 columns
    (tmp_path / "cache").mkdir()
    argv = ["--batch-rows", "200000"]
    first, again = run_child(tmp_path, argv), run_child(tmp_path, argv)  # each in a fresh process
    assert first["converts"] and not again["converts"]
    assert first["delivered"] == first["windows"] == again["delivered"]
    assert first["windows"] == data["series"] * ((5_000 - 80) // 16 + 1)
    assert again["cache_bytes"] == first["cache_bytes"] > 0.9 * data["rows"] * 6 * 4
    # The conversion reads block by block: Arrow never holds more than a fraction of the table.
    assert first["arrow_pool_peak_mib"] < table_mib / 3, (first, table_mib)
    # Mapping the cache reads nothing into the process; an epoch over it holds only the loader's buffers.
    assert again["load_peak_mib"] < 20 and again["arrow_pool_peak_mib"] < 1  # (the warm-up on a tiny table)
    assert again["epoch_peak_mib"] < 50, again
