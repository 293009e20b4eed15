"""Loader checkpoints: a small JSON-serialisable state and the geometry it belongs to.

An epoch's order is a pure function of ``(seed, epoch, rank, world_size)``, so
a checkpoint needs only the seed, the epoch and the number of batches already
delivered; resuming computes the remaining ids from that position, it never
replays the batches before it.  The fingerprint guards against resuming
with a loader whose batches would be different ones.
"""

from __future__ import annotations

import zlib
from typing import Any

from fastbatch._checks import _show, check_int, check_seed

FORMAT = "fastbatch.WindowLoader/2"
# Format 1 had no "windows" or "batch_size": its position was in batches of
# the fingerprint's batch size, which could not change.
_FORMAT_1 = "fastbatch.WindowLoader/1"


def fingerprint(loader) -> dict[str, Any]:
    """What fixes the batches of an epoch apart from ``(seed, epoch)``: geometry, batching, order, world size.

    The rank is left out on purpose: every rank is at the same position, so a
    state saved by rank 0 (as Lightning and most DDP scripts do) resumes any rank.
    """
    w = loader.windows
    spec = loader.order
    return {
        "n_windows": len(w),
        "window": w.window,
        "horizon": w.horizon,
        "stride": w.stride,
        "dilation": w.dilation,
        "n_features": w.n_features,
        "target_columns": [int(c) for c in w.target_columns],
        "n_series": w.n_series,
        # A checksum, not the lengths: the state stays small for millions of series.
        "series_lengths_crc32": zlib.crc32(w.series_lengths.astype("<i8").tobytes()),
        "drop_last": loader.drop_last,
        "order": spec.kind if spec.kind != "block" else f"block({spec.block_windows},{spec.pool_blocks})",
        "world_size": loader.world_size,
    }


def make_state(loader, epoch: int, position: int, windows: int) -> dict[str, Any]:
    return {"format": FORMAT, "seed": loader.seed, "epoch": epoch, "position": position, "windows": windows,
            "batch_size": loader.batch_size, "fingerprint": fingerprint(loader)}


def check_state(loader, state: Any) -> tuple[int, int, int, int, int]:
    """``(seed, epoch, position, windows, batch_size)`` of ``state``, or a ValueError saying why it does not fit."""
    if isinstance(state, dict) and state.get("format") == _FORMAT_1:
        state = _from_format_1(state)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"state is not a WindowLoader state (expected a dict with format={FORMAT!r}), got {_show(state)}"
        )
    missing = [k for k in ("seed", "epoch", "position", "windows", "batch_size", "fingerprint") if k not in state]
    if missing:
        raise ValueError(f"WindowLoader state lacks {missing}, got state={_show(state)}")
    saved, here = state["fingerprint"], fingerprint(loader)
    if not isinstance(saved, dict):
        raise ValueError(f"state['fingerprint'] must be the dict that state_dict() saved, got {_show(saved)}")
    if saved != here:
        keys = sorted(set(saved) | set(here))
        diffs = [f"{k}: saved {saved.get(k)!r}, this loader {here.get(k)!r}" for k in keys if saved.get(k) != here.get(k)]
        raise ValueError(
            "this state was saved by a loader with different windows or batching, so its position means other "
            "batches here; build the loader with the same arguments. Differences: " + "; ".join(diffs)
        )
    seed = check_seed(state["seed"])
    epoch = check_int("epoch", state["epoch"], minimum=0)
    batch_size = check_int("batch_size", state["batch_size"], minimum=1)
    windows = check_int("windows", state["windows"], minimum=0, maximum=loader._shard)
    position = check_int("position", state["position"], minimum=0, maximum=windows)
    return seed, epoch, position, windows, batch_size


def _from_format_1(state: dict) -> dict:
    """A state saved before the batch size could change: its position was in batches of a fixed size."""
    saved = state.get("fingerprint")
    if not isinstance(saved, dict) or not isinstance(state.get("position"), int):
        return state
    saved = dict(saved)
    batch_size = saved.pop("batch_size", None)
    if not isinstance(batch_size, int):
        return state
    return {**state, "format": FORMAT, "batch_size": batch_size, "fingerprint": saved,
            "windows": state["position"] * batch_size}
