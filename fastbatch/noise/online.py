"""``GradientNoiseScale``: the gradient noise scale tracked inside a training loop, one call per step.

Three ways to get the two batch sizes the estimator needs (see
``_twosize.py``), picked by how the loop runs:

- DDP with more than one rank: each rank's local gradient, caught by a tensor
  hook before DDP all-reduces it, is the small batch; the all-reduced ``.grad``
  the large one. One scalar all-reduce per step, no extra backward pass.
- Gradient accumulation: each micro-batch's gradient (``accumulate()`` after
  its backward) is the small batch, the accumulated ``.grad`` the large one.
- Neither: this step's and the previous step's gradients are the small
  batches, their mean the large one (``biased``: the parameters moved between
  the two).

The averages are float64 tensors on the gradients' device and a non-finite
estimate is dropped with ``torch.where``, so a step costs no host sync; only
reading a figure does.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from time import perf_counter
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fastbatch._checks import _show, check_int
from fastbatch.noise._buffer import GradientBuffer
from fastbatch.noise._twosize import squared_norms, two_sizes

STATE_VERSION = 1

# The differenced estimator measures [|g_t + g_{t-1}|², |g_t - g_{t-1}|²]; as two parts of a batch
# of 2B, the mean of their squares is (sum + difference) / 4 and the square of their mean sum / 4.
DIFFERENCED = ((0.25, 0.25), (0.25, 0.0))

# every="auto": the update cycles whose timings choose ``every`` (the median of the last few, so
# that one slow step - a garbage collection, the first call's allocation - does not move it), the
# cycles timed before the first choice, and the largest ``every`` it picks.
TIMED_CYCLES = 9
FIRST_CHOICE = 3
MAX_EVERY = 1000


class GradientNoiseScale:
    # On a CPU the buffer's passes are compiled loops and the averages Python floats. False runs the
    # code of the other devices (tensor operations) on the CPU: the tests compare the two.
    _on_host = True

    """Track ``B_simple = tr(Σ) / |G|²`` during training from the gradients the loop computes anyway.

    Call :meth:`step` after the backward pass(es) of each optimizer step,
    before ``optimizer.zero_grad()``::

        gns = fb.GradientNoiseScale(model)
        for x, y in loader:
            loss_fn(model(x), y).backward()
            gns.step(len(x))
            optimizer.step(); optimizer.zero_grad()
        print(gns.b_simple)

    With gradient accumulation (each micro-batch's loss divided by the number
    of micro-batches, so that ``.grad`` ends as the batch's mean gradient),
    call :meth:`accumulate` after every micro-batch's backward, the last one
    included, then ``step(batch_size)`` with the whole batch's size. Under
    ``DistributedDataParallel`` (``torch.distributed`` initialised with more
    than one rank when this object is made) every rank calls ``step`` with
    its own batch size at the same point of every step; :meth:`accumulate`
    is then optional.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained (a DDP wrapper or the module inside it).
    beta : float, default 0.99
        Decay of the exponential moving averages of ``|G|²`` and ``tr(Σ)``,
        per update: they weigh about the last ``1 / (1 - beta)`` steps, and
        are bias-corrected (divided by ``1 - beta**updates``) as in Adam.
    every : int or "auto", default "auto"
        Update on one step in ``every``: the others cost a counter (and, for
        the differenced estimator, the step just before an update one copy of
        the gradient). The averages then span about ``every / (1 - beta)``
        steps. ``"auto"`` starts at 1 and, at each update, sets ``every`` to
        the smallest that keeps the time spent in this object within
        ``max_overhead`` of the time the loop spends elsewhere, both measured
        on the host with ``time.perf_counter`` (medians of the last 9 update
        cycles; under DDP their mean over the ranks, so that all ranks choose
        alike). The updates then fall on steps that depend on the machine's
        timings: give an integer for a run whose averages must repeat exactly.
    max_overhead : float, default 0.01
        With ``every="auto"``: the time in this object allowed, as a fraction
        of the rest of the training step. On a CPU a step slows down by up to
        about twice this (the gradient buffer's passes also take cache from
        the rest of the step).
    process_group : optional
        The DDP process group (default: the global one).

    Attributes
    ----------
    biased : bool
        True when the averages come from the differenced estimator over
        consecutive steps (no micro-batches, one rank): the two gradients are
        taken at different parameters, which inflates their difference, so
        ``tr(Σ)`` and ``b_simple`` are overestimated while the model moves
        fast. Switching between estimators restarts the averages.
    world_size : int
        Ranks the small batches come from (1 without DDP).
    every : int
        The current ``every`` (chosen by the timings with ``every="auto"``).
    """

    def __init__(self, model: nn.Module, *, beta: float = 0.99, every: int | str = "auto",
                 max_overhead: float = 0.01, process_group: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {_show(model)} of type {type(model).__name__}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be a number in [0, 1), got beta={_show(beta)}")
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError(f"model has no parameters that require grad (model={type(model).__name__}): "
                             "there is no gradient to measure")
        self.beta = float(beta)
        self.auto = isinstance(every, str)
        if self.auto and every != "auto":
            raise ValueError(f"every must be an integer >= 1 or 'auto', got every={_show(every)}")
        self.every = 1 if self.auto else check_int("every", every, minimum=1)
        if (isinstance(max_overhead, bool) or not isinstance(max_overhead, (int, float))
                or not 0.0 < max_overhead <= 1.0):
            raise ValueError(f"max_overhead must be a number in (0, 1], got max_overhead={_show(max_overhead)}")
        self.max_overhead = float(max_overhead)
        self._steps = 0  # step() calls
        self._countdown = self.every - 1  # step() calls before the next update
        # every="auto": seconds spent here since the last update; when that update ended, and the
        # step() calls since; the last cycles' own seconds and seconds per step elsewhere.
        self._own = 0.0
        self._cycle_start: float | None = None
        self._cycle_steps = 0
        self._costs: deque[float] = deque(maxlen=TIMED_CYCLES)
        self._rests: deque[float] = deque(maxlen=TIMED_CYCLES)
        # DDP: this rank's timings of the last cycle, sent with the next update's all-reduce; the
        # ranks' mean that came back (and, on a GPU, its copy to the host still in flight).
        self._pending_timings = (math.nan, math.nan)
        self._timings: list[float] | None = None
        self._in_flight = None
        self._group = process_group
        distributed = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size(process_group) if distributed else 1
        self.biased = False
        # [|G|² sum, tr(Σ) sum, weight], each already × (1 - beta); and the updates whose estimate was
        # finite. Tensors on the gradients' device; a list and an int when that is the CPU.
        self._ema: torch.Tensor | list[float] | None = None
        self._finite: torch.Tensor | int | None = None
        self._updates = 0  # updates tried
        self._parts = 0  # micro-batches since the last step
        self._parts_sq: torch.Tensor | None = None  # Σ |part's gradient contribution|²
        self._buffer: GradientBuffer | None = None  # the previous step's gradient, or the running .grad
        self._buffer_is_step = False  # the buffer holds the previous step's gradient
        self._differenced = None  # what the first accumulate() of a step measured against the previous step
        self._cached = None  # (key, matrix, offset) of _coefficients
        self._hooks = []
        if self.world_size > 1:
            self._fired = [0] * len(self._params)
            self._hooks = [p.register_hook(self._hook_for(i)) for i, p in enumerate(self._params)]

    # -- the loop's calls ---------------------------------------------------------------------------

    def accumulate(self) -> None:
        """Record the micro-batch whose backward pass just ran (gradient accumulation)."""
        if self.world_size > 1 or not self._updating():
            return  # the hooks see each backward pass; or this step is not measured
        start = perf_counter()
        grads, buffer = self._grads(), self._gradient_buffer()
        if self._parts == 0:
            # If this turns out to be the step's only part, step() falls back to the
            # differenced estimator, which needs the previous step's gradient: use it now.
            self._differenced = self._against_previous_step(grads, buffer)
            part_sq = buffer.squared_norm()
        elif buffer.fused:  # the same, in one pass: |before - after|² from the three sums
            gg, gh, hh = buffer.difference(grads)
            part_sq = torch.tensor(gg - 2.0 * gh + hh, dtype=torch.float64)
        else:
            buffer.sub_(grads)  # the running sum before this part minus after it
            part_sq = buffer.squared_norm()
            buffer.copy_(grads)  # the running .grad; after the last part, this step's gradient
        self._buffer_is_step = False
        self._parts_sq = part_sq if self._parts_sq is None else self._parts_sq + part_sq
        self._parts += 1
        self._own += perf_counter() - start

    def step(self, batch_size: int, *, loss_scale: float = 1.0) -> None:
        """Update the estimates from this step's gradients; call before ``optimizer.zero_grad()``.

        Parameters
        ----------
        batch_size : int
            Samples behind this rank's ``.grad`` (all its micro-batches together).
        loss_scale : float, default 1.0
            With a ``GradScaler``: its scale, when ``step`` is called after
            ``scaler.unscale_(optimizer)`` while the micro-batches or DDP ranks
            were measured before unscaling. bf16 needs no loss scaling.
        """
        if batch_size.__class__ is not int or batch_size < 1:  # the checks, cheap in the usual case
            batch_size = check_int("batch_size", batch_size, minimum=1)
        if loss_scale.__class__ is not float or not loss_scale > 0:
            if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float)) or not loss_scale > 0:
                raise ValueError(f"loss_scale must be a number > 0, got loss_scale={_show(loss_scale)}")
        self._cycle_steps += 1
        if self._countdown == 0:
            start = perf_counter()
            grads = self._grads()
            if self.world_size > 1:
                self._step_ranks(grads, batch_size, loss_scale)
            elif self._parts >= 2:
                self._step_parts(grads, batch_size, loss_scale)
            else:
                self._step_differenced(grads, batch_size)
            if self.auto:
                self._choose_every(start)
            self._countdown = self.every - 1
        elif self._countdown == 1 and self.world_size == 1 and (self.biased or not self._updates):
            # The differenced estimator's previous step (not after updates from micro-batches, which need none).
            start = perf_counter()
            self._gradient_buffer().copy_(self._grads())
            self._buffer_is_step = True
            self._countdown = 0
            self._own += perf_counter() - start
        else:
            self._buffer_is_step = False
            self._countdown -= 1
        self._steps += 1
        self._parts, self._parts_sq = 0, None
        if self.world_size > 1:
            self._fired = [0] * len(self._params)

    def close(self) -> None:
        """Remove the backward hooks (DDP only); the estimates stay readable."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # -- the figures --------------------------------------------------------------------------------

    @property
    def grad_sq(self) -> float | None:
        """``|G|²``, averaged; ``None`` before the first update."""
        return self._averages()[0]

    @property
    def trace_cov(self) -> float | None:
        """``tr(Σ)``, averaged; ``None`` before the first update."""
        return self._averages()[1]

    @property
    def b_simple(self) -> float | None:
        """``tr(Σ) / |G|²`` from the averages; ``inf`` while ``|G|²`` is not positive; ``None`` before the first update."""
        grad_sq, trace_cov = self._averages()
        if grad_sq is None:
            return None
        return trace_cov / grad_sq if grad_sq > 0 else math.inf

    @property
    def updates(self) -> int:
        """Steps whose estimate entered the averages."""
        return 0 if self._finite is None else int(_host(self._finite))

    @property
    def skipped(self) -> int:
        """Steps skipped because a gradient was not finite (mixed precision overflow)."""
        return self._updates - self.updates

    def state_dict(self) -> dict[str, Any]:
        """The averages and counts, as plain Python values (the gradient buffer is not kept).

        After :meth:`load_state_dict` the differenced estimator needs one step
        to refill its buffer before it updates again.
        """
        ema = [0.0, 0.0, 0.0] if self._ema is None else _host(self._ema)
        return {"version": STATE_VERSION, "biased": self.biased, "ema": ema, "attempts": self._updates,
                "skipped": self.skipped, "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        expected = {"version", "biased", "ema", "attempts", "skipped", "steps"}
        if not isinstance(state, dict) or set(state) != expected:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys {sorted(expected)}, got {keys}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"state['version'] must be {STATE_VERSION}, got {state['version']!r}")
        ema = torch.tensor(state["ema"], dtype=torch.float64)
        if ema.shape != (3,):
            raise ValueError(f"state['ema'] must hold 3 numbers, got {state['ema']!r}")
        self._ema = ema.tolist()
        self._updates = int(state["attempts"])
        self._steps = int(state["steps"])
        self._finite = self._updates - int(state["skipped"])
        self.biased = bool(state["biased"])
        self._buffer_is_step = False
        self._countdown = self.every - 1 - self._steps % self.every  # as if run straight with this every
        self._cycle_start, self._own = None, 0.0  # auto: time afresh
        self._pending_timings, self._timings, self._in_flight = (math.nan, math.nan), None, None

    # -- internals ----------------------------------------------------------------------------------

    def _updating(self) -> bool:
        """Whether the coming step() updates the averages."""
        return self._countdown == 0

    def _arrive(self, timings: torch.Tensor) -> None:
        """DDP, every="auto": the ranks' mean timings of a cycle, for :meth:`_choose_every`.

        On a GPU they are copied to the host without waiting, and read at the
        next update (when the copy is long done): every rank reads the same
        values at the same update, so the ranks keep choosing the same ``every``.
        """
        if timings.device.type != "cuda":
            self._timings = timings.tolist()
            return
        host = timings.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        previous, self._in_flight = self._in_flight, (host, event)
        if previous is not None:
            previous[1].synchronize()
            self._timings = previous[0].tolist()

    def _choose_every(self, start: float) -> None:
        """every="auto", at the end of an update: time this cycle and choose the next ``every``.

        The cycle's cost is the time spent here since the last update (the
        previous step's copy, micro-batches, hooks) and in this update; the
        rest is the wall time between the two updates less that, per step.
        """
        end = perf_counter()
        if self._cycle_start is None:  # the first update: no whole cycle yet
            own = rest = math.nan
        else:
            own = self._own + (end - start)
            rest = (start - self._cycle_start - self._own) / self._cycle_steps
        self._cycle_start, self._own, self._cycle_steps = end, 0.0, 0
        if self.world_size > 1:  # these timings go to the ranks with the next update; use theirs
            (own, rest), self._pending_timings = self._timings or (math.nan, math.nan), (own, rest)
            self._timings = None
        if not (math.isfinite(own) and math.isfinite(rest)):
            return
        self._costs.append(own)
        self._rests.append(rest)
        if len(self._costs) >= FIRST_CHOICE:
            cost, elsewhere = statistics.median(self._costs), statistics.median(self._rests)
            every = math.ceil(cost / (self.max_overhead * elsewhere)) if elsewhere > 0 else MAX_EVERY
            self.every = min(max(every, 1), MAX_EVERY)

    def _grads(self) -> list[torch.Tensor]:
        grads = [p.grad for p in self._params]
        if any(g is None for g in grads):  # a parameter this step did not reach: a zero gradient
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]
        return grads

    def _gradient_buffer(self) -> GradientBuffer:
        if self._buffer is None:
            self._buffer = GradientBuffer(self._params, fuse=self._on_host)
        return self._buffer

    def _against_previous_step(self, grads, buffer: GradientBuffer, *,
                               keep: bool = True) -> torch.Tensor | list[float] | None:
        """``[|g + g_prev|², |g - g_prev|²]``, or None without a previous step; leaves ``grads`` in ``buffer``.

        ``keep=False``: the buffer is not needed after this (the next step does
        not update), and on a CPU it is left as it was, saving a write.

        On a CPU from ``|g|²``, ``g·g_prev`` and ``|g_prev|²``, summed in float64
        in one pass (see ``GradientBuffer.difference``): ``|g - g_prev|²`` is then
        a difference of large sums, but of sums accurate to about 1e-16 of their
        size. Elsewhere the sum and the difference are formed in the buffer and
        their squares summed, so that ``tr(Σ)`` comes from a sum of squares.
        """
        if not self._buffer_is_step:
            buffer.copy_(grads)
            return None
        if buffer.fused:  # floats, as _update takes them on the CPU
            gg, gh, hh = buffer.difference(grads, keep=keep)
            return [gg + 2.0 * gh + hh, gg - 2.0 * gh + hh]
        buffer.sub_(grads)
        minus = buffer.squared_norm()
        buffer.add_(grads, alpha=2.0)
        measured = torch.stack([buffer.squared_norm(), minus])
        buffer.copy_(grads)
        return measured

    def _step_ranks(self, grads, batch_size: int, loss_scale: float) -> None:
        parts = max(max(self._fired), 1)  # backward passes on this rank since the last step
        local = self._parts_sq if self._parts_sq is not None else torch.zeros((), dtype=torch.float64)
        device = grads[0].device
        if self.auto:  # the previous cycle's timings ride along: the ranks' mean chooses every alike
            local = torch.cat([local.reshape(1).to(device),
                               torch.tensor(self._pending_timings, dtype=torch.float64).to(device)])
        else:
            local = local.to(device).clone()
        dist.all_reduce(local, group=self._group)  # Σ over ranks and parts of |part's contribution|²
        if self.auto:
            self._arrive(local[1:] / self.world_size)
            local = local[0]
        pieces = self.world_size * parts
        # A part contributes its mean gradient / parts (the accumulation convention), hence parts².
        combine = ((parts**2 / pieces / loss_scale**2, 0.0), (0.0, 1.0))
        self._update(torch.stack([local, self._big(grads)]), combine, batch_size / parts, pieces, biased=False)

    def _step_parts(self, grads, batch_size: int, loss_scale: float) -> None:
        parts = self._parts
        combine = ((parts / loss_scale**2, 0.0), (0.0, 1.0))  # mean over parts of |part's mean gradient|², |.grad|²
        self._update(torch.stack([self._parts_sq, self._big(grads)]), combine, batch_size / parts, parts,
                     biased=False)
        self._buffer_is_step = True

    def _big(self, grads) -> torch.Tensor:
        """``|.grad|²``, through the buffer (which then holds this step's gradient)."""
        buffer = self._gradient_buffer()
        buffer.copy_(grads)
        return buffer.squared_norm()

    def _step_differenced(self, grads, batch_size: int) -> None:
        keep = True
        if self._parts == 1:  # accumulate() ran once: it did the work and holds this step's gradient
            measured = self._differenced
        else:
            keep = self.every == 1  # else the step before the next update refills the buffer
            measured = self._against_previous_step(grads, self._gradient_buffer(), keep=keep)
        if measured is not None:
            self._update(measured, DIFFERENCED, batch_size, 2, biased=True)
        self._buffer_is_step = keep or not self._gradient_buffer().fused

    def _update(self, measured: torch.Tensor | list[float], combine, b: float, n: int, *, biased: bool) -> None:
        """Fold ``two_sizes(combine @ measured)`` into the averages, on the device (no host sync).

        On a CPU reading the figures costs no sync, and the few float64 operations
        cost more as tensor operations than as Python arithmetic: they are done there.
        """
        if biased != self.biased:
            self._ema, self._finite, self._updates = None, None, 0  # different estimators: start again
            self.biased = biased
        self._updates += 1
        on_device = isinstance(measured, torch.Tensor) and (measured.device.type != "cpu" or not self._on_host)
        device = measured.device if on_device else None
        rows, matrix, offset = self._coefficients(combine, b, n, device)
        if not on_device:
            small, big = measured.tolist() if isinstance(measured, torch.Tensor) else measured
            grad_sq = rows[0][0] * small + rows[0][1] * big
            trace_cov = rows[1][0] * small + rows[1][1] * big
            finite = math.isfinite(grad_sq) and math.isfinite(trace_cov)
            ema = [0.0, 0.0, 0.0] if self._ema is None else _host(self._ema)
            if finite:  # torch.lerp([|G|², tr(Σ), 1], ema, beta)
                beta = self.beta
                ema = [grad_sq + beta * (ema[0] - grad_sq), trace_cov + beta * (ema[1] - trace_cov),
                       1.0 + beta * (ema[2] - 1.0)]
            self._ema = ema
            self._finite = (0 if self._finite is None else int(_host(self._finite))) + finite
            return
        values = torch.addmv(offset, matrix, measured)  # [|G|², tr(Σ), 1]
        if self._ema is None:
            self._ema = torch.zeros_like(values)
            self._finite = torch.zeros((), dtype=torch.float64, device=values.device)
        elif not isinstance(self._ema, torch.Tensor) or self._ema.device != values.device:  # from the CPU
            self._ema = torch.tensor(_host(self._ema), dtype=torch.float64, device=values.device)
            self._finite = torch.tensor(_host(self._finite), dtype=torch.float64, device=values.device)
        finite = torch.isfinite(values).all()
        self._ema = torch.where(finite, torch.lerp(values, self._ema, self.beta), self._ema)
        self._finite.add_(finite)

    def _coefficients(self, combine, b: float, n: int, device) -> tuple[list, torch.Tensor | None, torch.Tensor | None]:
        """The 3×k matrix taking the measured squares to ``[|G|², tr(Σ), 0]``, as lists and as a tensor; cached."""
        key = (combine, b, n, device)
        if self._cached is None or self._cached[0] != key:
            per_small, per_big = two_sizes(1.0, 0.0, b, n), two_sizes(0.0, 1.0, b, n)  # linear: by columns
            rows = [[per_small[r] * combine[0][j] + per_big[r] * combine[1][j] for j in range(len(combine[0]))]
                    for r in range(2)]
            rows.append([0.0] * len(combine[0]))
            tensors = (None, None) if device is None else (  # None: the Python arithmetic of the CPU
                torch.tensor(rows, dtype=torch.float64, device=device),
                torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=device))
            self._cached = (key, rows, *tensors)
        return self._cached[1:]

    def _averages(self) -> tuple[float | None, float | None]:
        if self._ema is None:
            return None, None
        grad_sq, trace_cov, weight = _host(self._ema)
        if weight == 0:
            return None, None
        return grad_sq / weight, trace_cov / weight

    def _hook_for(self, index: int):
        def hook(grad: torch.Tensor) -> None:
            # Runs before DDP's all-reduce: grad is this rank's own gradient for this backward pass.
            if not self._updating():
                return
            start = perf_counter()
            sq = squared_norms([grad.detach()])[0]
            self._parts_sq = sq if self._parts_sq is None else self._parts_sq + sq.to(self._parts_sq.device)
            self._fired[index] += 1
            self._own += perf_counter() - start

        return hook


def _host(value):
    """A figure of the averages as Python numbers, wherever it is kept."""
    return value.tolist() if isinstance(value, torch.Tensor) else value
