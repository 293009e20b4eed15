"""The sweep over batch sizes, the out-of-memory boundary and the recommendation.

Everything here works on result dicts (``{"batch_size", "status", ...}``) and
a ``trial(batch_size, role) -> result`` callable, so the search can be tested
with a fake trial and no process or tensor at all.

The boundary is bracketed by trials only: ``largest_ok`` and ``smallest_oom``
are sizes that were run.  Between them, a memory model (peak memory linear in
the batch size, fitted to the measured peaks) proposes where the boundary is;
each proposal is verified by a trial (see :func:`_bracket`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

Trial = Callable[[int, str], dict]

# Failures a trial can end with.  An "oom" ends the doubling and is bracketed;
# the others are recorded and the sweep goes on (a crash or a hang can be
# flaky or specific to one size, and a model with BatchNorm fails at batch
# size 1 only), until MAX_FAILURES_IN_A_ROW of them come one after another.
FAILED = ("oom", "crash", "timeout", "error")
MAX_FAILURES_IN_A_ROW = 2
# The recommendation stays at or below this fraction of the largest size that
# ran, when the boundary was found: memory grows about linearly with the batch,
# and other processes, fragmentation or longer inputs eat into the headroom.
SAFE_FRACTION = 0.8
# "Fast enough": the smallest batch size within this fraction of the best throughput.
NEAR_BEST = 0.95
MAX_BOUNDARY_TRIALS = 40


def close_enough(lo: int, hi: int, tolerance: float) -> bool:
    """Whether ``largest_ok=lo`` and ``smallest_oom=hi`` pin the boundary to ``tolerance`` (or to one sample)."""
    return hi - lo <= max(1, math.floor(tolerance * lo))


@dataclass
class MemoryModel:
    """Peak memory as ``a + b * batch_size``, fitted by least squares to the largest ok trials.

    Uses each result's ``model_peak_bytes`` (device bytes reserved on a GPU;
    on a CPU the peak private memory, which ``--memory-limit`` counts) and
    ``memory_capacity_bytes`` (what the limit allows, in the same units).
    """

    points: list[tuple[int, float]] = field(default_factory=list)
    capacity: float | None = None

    def add(self, result: dict[str, Any]) -> None:
        if result.get("status") == "ok" and result.get("model_peak_bytes"):
            self.points.append((result["batch_size"], float(result["model_peak_bytes"])))
            self.points.sort()
        if result.get("memory_capacity_bytes"):
            self.capacity = float(result["memory_capacity_bytes"])

    def line(self) -> tuple[float, float] | None:
        """``(a, b)``, from the 3 largest sizes (memory is only roughly linear); ``None`` without a positive slope."""
        points = self.points[-3:]
        if len({b for b, _ in points}) < 2:
            return None
        n = len(points)
        mx = sum(b for b, _ in points) / n
        my = sum(p for _, p in points) / n
        sxx = sum((b - mx) ** 2 for b, _ in points)
        slope = sum((b - mx) * (p - my) for b, p in points) / sxx
        if slope <= 0:
            return None
        return my - slope * mx, slope

    def predict(self) -> float | None:
        """The batch size at which the peak would reach the capacity, or ``None``."""
        line = self.line()
        if line is None or self.capacity is None:
            return None
        a, b = line
        guess = (self.capacity - a) / b
        return guess if guess > 0 else None


@dataclass
class SearchResult:
    results: list[dict[str, Any]]
    boundary: dict[str, Any]


def search(trial: Trial, sizes: list[int], *, tolerance: float = 0.01, stopped_by: str = "max_batch_size",
           on_result: Callable[[dict], None] | None = None) -> SearchResult:
    """Run ``sizes`` in increasing order until one runs out of memory, then bracket the boundary.

    A ``crash``, ``timeout`` or ``error`` is recorded and the sweep goes on,
    unless it is the ``MAX_FAILURES_IN_A_ROW``-th failure in a row, which ends
    the sweep with ``stopped_by`` set to its status.  ``stopped_by`` says why
    ``sizes`` ends ("max_batch_size", "dataset" or "batch_sizes"); it is
    reported when every size runs.
    """
    results: list[dict[str, Any]] = []
    model = MemoryModel()

    def run(size: int, role: str) -> dict[str, Any]:
        result = trial(size, role)
        result.setdefault("batch_size", size)
        result.setdefault("role", role)
        results.append(result)
        model.add(result)
        if on_result is not None:
            on_result(result)
        return result

    failure, in_a_row = None, 0
    for size in sorted(set(sizes)):
        result = run(size, "sweep")
        in_a_row = 0 if result["status"] == "ok" else in_a_row + 1
        if result["status"] == "oom" or in_a_row >= MAX_FAILURES_IN_A_ROW:
            failure = result
            break
    ok_sizes = [r["batch_size"] for r in results if r["status"] == "ok"]
    boundary: dict[str, Any] = {"largest_ok": None, "smallest_oom": None, "reached": False,
                                "stopped_by": stopped_by, "tolerance": tolerance}
    if failure is None:
        boundary["largest_tried_ok"] = max(ok_sizes) if ok_sizes else None
    elif failure["status"] != "oom":
        boundary["stopped_by"] = failure["status"]
        boundary["largest_tried_ok"] = max(ok_sizes) if ok_sizes else None
    else:
        lo = max((s for s in ok_sizes if s < failure["batch_size"]), default=0)
        lo, hi, stop = _bracket(run, model, lo, failure["batch_size"], tolerance)
        boundary.update(largest_ok=lo or None, smallest_oom=hi, reached=stop is None,
                        stopped_by=stop or "oom", largest_tried_ok=lo or None)
    prediction = model.predict()
    boundary["predicted_oom_batch_size"] = round(prediction) if prediction else None
    boundary["memory_capacity_bytes"] = model.capacity
    results.sort(key=lambda r: (r["batch_size"], r["role"]))
    return SearchResult(results, boundary)


def _bracket(run: Callable[[int, str], dict], model: MemoryModel, lo: int, hi: int,
             tolerance: float) -> tuple[int, int, str | None]:
    """Shrink ``(lo ok, hi oom)`` until :func:`close_enough`; ``stop`` names a non-OOM failure that ended it.

    While the memory model has no guess inside the bracket: bisection.  Once
    it has one, a trial just below the guess; then, from the side that trial
    landed on, steps of ``tolerance`` doubling each time (1 %, 2 %, 4 %, ...)
    until the verdict flips, and bisection after that.  An exact model closes
    the bracket in two trials; a wrong one costs a few more than bisection.
    """
    mode, k = "model", 0
    for _ in range(MAX_BOUNDARY_TRIALS):
        if close_enough(lo, hi, tolerance):
            return lo, hi, None
        size = None
        if mode == "model":
            guess = model.predict()
            if guess is not None and lo < guess < hi:
                size = _below(guess, lo, hi, tolerance)
        elif mode == "up":
            size = lo + _step(lo, tolerance) * 2**k
        elif mode == "down":
            size = hi - _step(hi, tolerance) * 2**k
        guided = size is not None
        if size is None or not lo < size < hi:
            size = (lo + hi) // 2
        result = run(size, "boundary")
        if result["status"] == "ok":
            lo = size
        elif result["status"] == "oom":
            hi = size
        else:
            return lo, hi, result["status"]
        ok = result["status"] == "ok"
        if mode == "model" and guided:
            mode, k = ("up" if ok else "down"), 0
        elif mode == "up":
            mode, k = ("up", k + 1) if ok else ("bisect", 0)
        elif mode == "down":
            mode, k = ("bisect", 0) if ok else ("down", k + 1)
    return lo, hi, "max_trials"


def _step(size: int, tolerance: float) -> int:
    return max(1, math.floor(tolerance * size))


def _below(guess: float, lo: int, hi: int, tolerance: float) -> int:
    """A size just below ``guess``, so that one step of ``tolerance`` up from it can close the bracket."""
    size = math.floor(guess * (1 - tolerance / 3))
    # The size p with p + tolerance * p >= hi closes the bracket from above when it runs.
    closing = math.ceil(hi / (1 + tolerance))
    size = min(size, closing)
    return min(max(size, lo + _step(lo, tolerance)), hi - 1)


def smoothed_rates(ok: list[dict[str, Any]]) -> dict[int, float]:
    """End-to-end rate per batch size, with single disturbed trials filtered out.

    Inside the sweep, each rate is the median of its own and its two
    neighbours' in size.  At either end it is capped at the trend of the two
    nearest sizes (their ratio carried one step further, never less than the
    nearer one), so a rising curve keeps its last point while a lone spike
    does not.  A trial disturbed by another process then moves neither the
    best rate nor the recommendation.
    """
    ok = sorted(ok, key=lambda r: r["batch_size"])
    sizes = [r["batch_size"] for r in ok]
    rates = [r["train_samples_per_sec"] for r in ok]
    if len(ok) < 3:  # too few to tell a disturbed trial from a trend
        return dict(zip(sizes, rates))
    out = {b: sorted(rates[i - 1 : i + 2])[1] for i, b in enumerate(sizes[1:-1], start=1)}
    for end, near, far in ((0, 1, 2), (-1, -2, -3)):
        trend = rates[near] * max(1.0, rates[near] / rates[far])
        out[sizes[end]] = min(rates[end], trend)
    return out


def recommend(results: list[dict[str, Any]], boundary: dict[str, Any]) -> dict[str, Any]:
    """The recommended and the largest safe batch size, from sizes that ran.

    Largest safe: the largest ok size at or below ``SAFE_FRACTION`` of
    ``largest_ok`` when the boundary was found, else the largest ok size.
    Recommended: the smallest ok size within the safe range whose end-to-end
    rate is at least ``NEAR_BEST`` of the best rate measured; if none reaches
    it, the fastest within the safe range.  Rates are compared after
    :func:`smoothed_rates`.
    """
    ok = [r for r in results if r["status"] == "ok" and r.get("train_samples_per_sec")]
    if not ok:
        return {"recommended_batch_size": None, "largest_safe_batch_size": None, "best_batch_size": None,
                "best_train_samples_per_sec": None}
    rate = smoothed_rates(ok)
    best = max(rate, key=rate.__getitem__)
    ceiling = math.inf
    if boundary.get("reached") and boundary.get("largest_ok"):
        ceiling = SAFE_FRACTION * boundary["largest_ok"]
    safe = [b for b in rate if b <= ceiling] or [min(rate)]
    fast = [b for b in safe if rate[b] >= NEAR_BEST * rate[best]]
    chosen = min(fast) if fast else max(safe, key=rate.__getitem__)
    return {
        "recommended_batch_size": chosen,
        "largest_safe_batch_size": max(safe),
        "best_batch_size": best,
        "best_train_samples_per_sec": rate[best],
        "recommended_fraction_of_best": rate[chosen] / rate[best],
        "rule": f"smallest batch size within {NEAR_BEST:.0%} of the best end-to-end rate (lone outliers "
                f"filtered), at most {SAFE_FRACTION:.0%} of the largest size that fits",
    }
