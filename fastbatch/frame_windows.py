"""Windows over a panel from a table: past, future, static, target and series, through the loader's machinery.

``SlidingWindows.from_frame`` / ``from_parquet`` build a :class:`fastbatch.panel.Panel`
(fastbatch/frames.py) and return :class:`FrameWindows` over it.  To the loader
these are windows like any other: their chunks hold five fields gathered in
one pass of the panel kernel (per-series scaling fused), and a batch is a
:class:`PanelBatch` — or the plain ``(x, y[, series])`` when the table has no
covariates.  Orders, ranks, resume, prefetch, the pinned transfer and the
DataLoader adapter need nothing else.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from fastbatch import panel as pn
from fastbatch._checks import _show
from fastbatch.windows import SlidingWindows


class PanelBatch(NamedTuple):
    """A batch of windows from a table (a NamedTuple: a pytree for ``torch.compile``, DDP and Lightning).

    ``past`` ``(B, T, n_targets + n_past)``: the targets' history, then the
    observed covariates; ``future`` ``(B, T + H, n_future)``: known covariates
    over the window and the horizon; ``static`` ``(B, n_static)``; ``target``
    ``(B, H, n_targets)``; ``series`` ``(B,)`` int64: the position of each
    window's series in ``windows.series_ids``.
    """

    past: Any
    future: Any
    static: Any
    target: Any
    series: Any


class FrameWindows(SlidingWindows):
    """Sliding windows over a :class:`fastbatch.panel.Panel`; made by ``SlidingWindows.from_frame``.

    Attributes
    ----------
    panel:
        The arrays the table became (targets and past covariates, future
        covariates, static features, series lengths, ids and times).
    series_ids:
        The original id of each series, in order: ``batch.series`` indexes it.
    scaler:
        The per-series statistics fused into the gather (``None`` without
        ``scale=``), with ``scaler.inverse(pred, series)`` to bring
        predictions back to the data's units.
    """

    def __init__(self, panel: pn.Panel, index: pn.WindowIndex, *, return_series_id: bool = False) -> None:
        o = panel.options
        self.panel, self.index = panel, index
        self.covariates = bool(o.past or o.future or o.static)
        # The geometry, layout and dtype of plain windows over the targets
        # and past covariates, series laid end to end: what the loader's
        # checks and the resume fingerprint read.  Which windows exist and how
        # they are gathered is the index's and the panel kernel's.
        super().__init__(panel.values, window=o.window, horizon=o.horizon, stride=index.stride,
                         lengths=panel.lengths, target_columns=list(range(panel.n_targets)), dtype=o.dtype,
                         return_series_id=return_series_id)
        self._len = len(index)

    # -- what the table adds --------------------------------------------------------
    @property
    def series_ids(self) -> np.ndarray:
        """The original id of each series (``batch.series`` indexes this)."""
        return self.panel.series_ids

    @property
    def scaler(self) -> pn.Scaler | None:
        """Per-series scaling statistics, with ``inverse(pred, series)``; ``None`` without ``scale=``."""
        return self.index.scaler

    def split(self, *, at: Any = None, last: int | None = None) -> tuple["FrameWindows", "FrameWindows"]:
        """``(train, valid)`` windows split by time, with no validation target in any training window.

        ``at``: a time (timestamp or integer, in the time column's units):
        validation targets start at or after it.  ``last=k``: the last ``k``
        steps of each series.  Validation inputs may reach back into the
        training part; ``scale`` statistics come from the training part only,
        and both sides use them.
        """
        train, valid = pn.split(self.panel, at=at, last=last)
        return (FrameWindows(self.panel, train, return_series_id=self.return_series_id),
                FrameWindows(self.panel, valid, return_series_id=self.return_series_id))

    # -- which windows ----------------------------------------------------------------
    @property
    def many_series(self) -> bool:
        return True

    @property
    def series_offsets(self) -> np.ndarray:
        return self.index.offsets

    def series_of(self, ids: Any) -> np.ndarray:
        return self.index.series_of(ids)

    def locate(self, i: int) -> tuple[int, int]:
        """``(series, step)``: window ``i``'s series and the step of its first input within that series."""
        i = self._index(i)
        s, row = self.index.locate(i)
        return s, row - int(self.panel.row_starts[s])

    @property
    def window_nbytes(self) -> int:
        o, p = self.panel.options, self.panel
        floats = (o.window * p.values.shape[1] + (o.window + o.horizon) * p.future.shape[1]
                  + p.static.shape[1] + o.horizon * p.n_targets)
        return floats * self.dtype.itemsize + 8

    # -- gather -------------------------------------------------------------------------
    def gather(self, ids: Any, **kwargs: Any) -> pn.PanelArrays:
        """Windows ``ids`` as numpy arrays ``(past, future, static, target, series)`` in the batch dtype."""
        if kwargs:
            raise TypeError(f"gather of windows from a table takes only ids, got {sorted(kwargs)}")
        ids = self._checked_ids(np.asarray(ids)) if not np.isscalar(ids) else ids
        return pn.gather(self.panel, self.index, ids)

    def __getitem__(self, i: int):
        """Window ``i``'s fields as numpy arrays (a copy: scaling and the cast happen in the gather)."""
        arrays = pn.gather(self.panel, self.index, np.array([self._index(i)], dtype=np.int64), check=False)
        fields = self._pick(tuple(a[0] if a.ndim > 1 else int(a[0]) for a in arrays))
        return PanelBatch(*fields) if self.covariates else fields

    def __getitems__(self, indices):
        from fastbatch.compat import WindowBatch

        n = len(self)
        ids = self._checked_ids(np.asarray(indices), allow_negative=True)
        ids = np.where(ids < 0, ids + n, ids)
        self.check_source()
        arrays = pn.gather(self.panel, self.index, ids, check=False)
        fields = self._pick(tuple(torch.from_numpy(a) for a in arrays))
        return WindowBatch(PanelBatch(*fields) if self.covariates else fields)

    def find_nan(self) -> int | None:
        """The first window holding a NaN in any field, or ``None`` (gathered chunk by chunk)."""
        step = max(1, (8 << 20) // max(1, self.window_nbytes))
        for start in range(0, len(self), step):
            ids = np.arange(start, min(start + step, len(self)), dtype=np.int64)
            arrays = pn.gather(self.panel, self.index, ids, check=False)
            bad = np.zeros(ids.shape[0], dtype=bool)
            for a in arrays[:4]:
                bad |= np.isnan(a.reshape(a.shape[0], -1)).any(axis=1)
            if bad.any():
                return int(start + np.argmax(bad))
        return None

    # -- what the loader's producer asks -------------------------------------------------
    def _check_loader(self, *, normalize: Any, placement: str, gather_dtype: np.dtype) -> str:
        if normalize is not None and normalize is not False:
            raise ValueError(
                f"normalize={_show(normalize)} standardises arrays per feature; windows from a table are scaled "
                "per series: use SlidingWindows.from_frame(..., scale='standard' or 'robust') instead"
            )
        if gather_dtype.kind != "f" or gather_dtype.itemsize < 4:
            raise TypeError(f"dtype must be float32, float64 or torch.bfloat16 for windows from a table, "
                            f"got {gather_dtype}")
        return placement

    def _chunk_fields(self, gather_dtype: np.dtype):
        from fastbatch.staging import FieldSpec

        o, p = self.panel.options, self.panel
        return (FieldSpec((o.window, p.values.shape[1]), gather_dtype),
                FieldSpec((o.window + o.horizon, p.future.shape[1]), gather_dtype),
                FieldSpec((p.static.shape[1],), gather_dtype),
                FieldSpec((o.horizon, p.n_targets), gather_dtype),
                FieldSpec((), np.int64))

    def _gather_chunk(self, ids: np.ndarray, arrays: tuple, mean, std) -> None:
        pn.gather(self.panel, self.index, ids, out=pn.PanelArrays(*arrays), check=False)

    def _finish_chunk(self, fields: tuple, dtype) -> tuple:
        floats = tuple(f if f.dtype == dtype else f.to(dtype) for f in fields[:4])
        return self._pick((*floats, fields[4]))

    def _pick(self, fields: tuple) -> tuple:
        """The batch's fields: all five with covariates, else ``(x, y[, series])``."""
        if self.covariates:
            return fields
        past, _future, _static, target, series = fields
        return (past, target, series) if self.return_series_id else (past, target)

    def _device_windows(self, device: torch.device, out_dtype: torch.dtype, mean, std) -> "DevicePanel":
        return DevicePanel(self, device, out_dtype)

    @property
    def _batch_type(self):
        return PanelBatch if self.covariates else None

    def __repr__(self) -> str:
        o = self.panel.options
        skipped = f", skipped_series={self.panel.skipped}" if self.panel.skipped else ""
        return (f"SlidingWindows.from_frame(n_windows={len(self)}, n_series={self.n_series}{skipped}, "
                f"target={list(o.target)}, past={list(o.past)}, future={list(o.future)}, static={list(o.static)}, "
                f"window={o.window}, horizon={o.horizon}, stride={self.index.stride}, scale={o.scale!r}, "
                f"dtype={self.dtype})")


def from_table(panel: pn.Panel, return_series_id: bool) -> FrameWindows:
    """All windows of every series of ``panel``."""
    return FrameWindows(panel, pn.windows(panel), return_series_id=return_series_id)


class DevicePanel:
    """The panel on the device, each chunk's five fields built there by index arithmetic (``placement="device"``).

    The panel kernel's formula in torch: window ``i`` of series ``s`` starts
    at row ``first_rows[s] + (i - offsets[s]) * stride``; scaling is
    ``(float64(v) - center[s, c]) / scale[s, c]`` before the one cast to the
    batch dtype, so the bits equal the host gather's.  Plain torch code: on a
    CPU ``device`` it runs the same arithmetic (tests/test_frame_loader.py).
    """

    def __init__(self, windows: FrameWindows, device: torch.device, out_dtype: torch.dtype) -> None:
        from fastbatch.device import upload

        p, index, o = windows.panel, windows.index, windows.panel.options
        self.device, self.out_dtype, self.n_targets = device, out_dtype, p.n_targets
        self.values = upload(p.values, device)
        self.future = upload(p.future, device)
        self.static = torch.as_tensor(np.ascontiguousarray(p.static), device=device)
        self.first_rows = torch.as_tensor(index.first_rows.astype(np.int64), device=device)
        self.offsets = torch.as_tensor(index.offsets[:-1].astype(np.int64), device=device)
        self.stride = index.stride
        self.past_steps = torch.arange(o.window, device=device)
        self.target_steps = torch.arange(o.horizon, device=device) + o.window
        self.future_steps = torch.arange(o.window + o.horizon, device=device)
        sc = index.scaler
        stats = None if sc is None else (sc.center, sc.scale, sc.future_center, sc.future_scale)
        self.stats = None if stats is None else tuple(torch.as_tensor(a, dtype=torch.float64, device=device)
                                                       for a in stats)

    def chunk(self, ids: torch.Tensor, series: torch.Tensor, series_ids: bool) -> tuple:
        """``(past, future, static, target, series)`` of windows ``ids`` of ``series``."""
        starts = self.first_rows[series] + (ids.to(torch.int64) - self.offsets[series]) * self.stride
        past = self.values[starts[:, None] + self.past_steps]
        target = self.values[starts[:, None] + self.target_steps][:, :, : self.n_targets]
        future = self.future[starts[:, None] + self.future_steps]
        if self.stats is not None:
            center, scale, future_center, future_scale = (t[series][:, None, :] for t in self.stats)
            past = (past.to(torch.float64) - center) / scale
            target = (target.to(torch.float64) - center[:, :, : self.n_targets]) / scale[:, :, : self.n_targets]
            future = (future.to(torch.float64) - future_center) / future_scale
        cast = self.out_dtype
        return (past.to(cast), future.to(cast), self.static[series].to(cast), target.to(cast), series)
