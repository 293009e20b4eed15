"""torch.utils.data adapters: SlidingWindows as a map-style Dataset with whole-batch reads.

``DataLoader(windows, batch_size=B, shuffle=True, collate_fn=fastbatch.collate)``
asks ``windows.__getitems__(indices)`` for each batch (torch >= 2.1 does so
whenever a dataset has that method), which gathers the ``B`` windows in one
Numba kernel call into a :class:`WindowBatch`; ``collate`` hands its tensors
through untouched.  A WindowBatch is also a sequence of its windows, so with
torch's ``default_collate`` (no ``collate_fn``) the batch is still right,
only restacked window by window.

The per-window path (``windows[i]``, then ``default_collate``) still works,
for samplers or wrappers that ask one index at a time; ``collate`` then falls
back to ``default_collate``.  See docs/integration.md for when to use this
adapter and when :class:`fastbatch.WindowLoader` is the better tool.
"""

from __future__ import annotations

from collections.abc import Sequence as _Sequence
from typing import Any, Sequence

import numpy as np
import torch

from fastbatch._checks import _show


class WindowBatch(_Sequence):
    """A batch gathered by ``SlidingWindows.__getitems__``: ``tensors`` is ``(x, y[, series_ids])``.

    As a sequence it holds one ``(x_i, y_i[, s_i])`` per window, which is
    what torch's ``default_collate`` expects from a dataset; :func:`collate`
    skips that and returns ``tensors`` as they are.
    """

    __slots__ = ("tensors",)

    def __init__(self, tensors: tuple) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return tuple(t[i] for t in self.tensors)

    def __repr__(self) -> str:
        return f"WindowBatch({len(self)} windows, shapes={[tuple(t.shape) for t in self.tensors]})"


def get_batch(windows, indices: Sequence[int]) -> WindowBatch:
    """The windows ``indices`` as one :class:`WindowBatch` of torch tensors (``SlidingWindows.__getitems__``).

    Negative indices count from the end.  The data's files are checked
    before the read, so a memmap truncated under a DataLoader is an error,
    not SIGBUS.
    """
    ids = windows._checked_ids(indices, allow_negative=True)
    ids = ids.astype(np.int32) if len(windows) < 2**31 else ids
    windows.check_source()
    out = windows.gather(ids, check=False)
    return WindowBatch(tuple(torch.from_numpy(a) for a in out))


def collate(batch: Any) -> Any:
    """``collate_fn`` for ``DataLoader`` over :class:`~fastbatch.SlidingWindows`.

    A :class:`WindowBatch` from ``SlidingWindows.__getitems__`` becomes its
    tuple ``(x, y[, series_ids])`` of tensors, with no copy; a tuple of
    tensors passes as it is; one window ``(x, y[, series])`` as
    ``windows[i]`` gives it (``DataLoader(batch_size=None)``) becomes a tuple
    of tensors holding a copy (the window is a view of the data); a list of
    single windows (the per-window path) goes through
    ``torch.utils.data.default_collate``.
    """
    if isinstance(batch, WindowBatch):
        return batch.tensors
    if isinstance(batch, tuple) and batch and all(isinstance(t, torch.Tensor) for t in batch):
        return batch
    if _is_one_window(batch):
        return tuple(torch.from_numpy(np.array(part)) for part in batch)
    if not isinstance(batch, (list, tuple)) or not batch or any(isinstance(b, WindowBatch) for b in batch):
        # A list of WindowBatches would be restacked window by window into a
        # wrong structure: each DataLoader batch is already one WindowBatch.
        raise TypeError(
            "batch must be a WindowBatch from SlidingWindows.__getitems__, a tuple of tensors or a non-empty "
            f"list of windows (x, y[, series]), got {_show(batch)} of type {type(batch).__name__}"
        )
    from torch.utils.data import default_collate

    try:
        return default_collate(batch)
    except (TypeError, RuntimeError) as error:
        kind = TypeError if isinstance(error, TypeError) else ValueError
        raise kind(
            f"batch must be a list of windows (x, y[, series]) of one shape, got {_show(batch)}: {error}"
        ) from error


def _is_one_window(batch: Any) -> bool:
    """``(x, y[, series])`` as ``SlidingWindows.__getitem__`` returns it: two arrays and maybe a series index."""
    return (
        isinstance(batch, tuple)
        and len(batch) in (2, 3)
        and all(isinstance(part, np.ndarray) for part in batch[:2])
        and all(isinstance(part, (int, np.integer)) and not isinstance(part, bool) for part in batch[2:])
    )
