import math

import pytest

from bench.config import powers_of_two
from bench.search import (
    MAX_BOUNDARY_TRIALS, MAX_FAILURES_IN_A_ROW, MemoryModel, close_enough, recommend, search,
)


class FakeMachine:
    """Batch sizes up to ``boundary`` fit; peak memory is ``base + per_sample * B`` (times ``bias`` as reported)."""

    def __init__(self, boundary, *, base=100.0, per_sample=10.0, bias=1.0, rate=None, fail_status="oom",
                 fail_at=None):
        self.boundary, self.base, self.per_sample, self.bias = boundary, base, per_sample, bias
        self.capacity = base + per_sample * (boundary + 0.5)
        self.rate = rate or (lambda b: 1000.0 * b / (b + 64))
        self.fail_status, self.fail_at = fail_status, fail_at
        self.tried: list[int] = []

    def __call__(self, size, role):
        self.tried.append(size)
        if self.fail_at is not None and size >= self.fail_at:
            return {"batch_size": size, "status": self.fail_status}
        common = {"batch_size": size, "memory_capacity_bytes": self.capacity}
        if size > self.boundary:
            return {**common, "status": "oom"}
        return {**common, "status": "ok", "train_samples_per_sec": self.rate(size),
                "model_peak_bytes": self.bias * (self.base + self.per_sample * size)}


@pytest.mark.parametrize("boundary", [1, 2, 3, 100, 1000, 1023, 1024, 1025, 3000, 12345, 77777])
@pytest.mark.parametrize("bias", [1.0, 1.03, 0.9])
def test_boundary_is_bracketed_within_one_percent_by_sizes_that_ran(boundary, bias):
    machine = FakeMachine(boundary, bias=bias)
    out = search(machine, powers_of_two(2**20), tolerance=0.01)
    b = out.boundary
    assert b["reached"] and b["stopped_by"] == "oom"
    assert b["largest_ok"] <= boundary < b["smallest_oom"]
    assert b["smallest_oom"] - b["largest_ok"] <= max(1, 0.01 * b["largest_ok"])
    # Never a size that was not tried, and every trial is in the results.
    assert b["largest_ok"] in machine.tried and b["smallest_oom"] in machine.tried
    assert sorted(machine.tried) == [r["batch_size"] for r in out.results]
    assert len(machine.tried) == len(set(machine.tried))
    statuses = {r["batch_size"]: r["status"] for r in out.results}
    assert statuses[b["largest_ok"]] == "ok" and statuses[b["smallest_oom"]] == "oom"


def test_an_exact_memory_model_needs_few_boundary_trials():
    machine = FakeMachine(12345)
    out = search(machine, powers_of_two(2**20))
    probes = [r for r in out.results if r["role"] == "boundary"]
    # Bisection of [8192, 16384] to 1 % takes 7 trials; the model's prediction, verified, takes 2 or 3.
    assert len(probes) <= 3
    assert out.boundary["largest_ok"] <= 12345 < out.boundary["smallest_oom"]


def test_a_wrong_memory_model_falls_back_to_bisection():
    machine = FakeMachine(12345, bias=0.5)  # reports half the real memory: predictions far too large
    out = search(machine, powers_of_two(2**20))
    assert out.boundary["largest_ok"] <= 12345 < out.boundary["smallest_oom"]
    assert len([r for r in out.results if r["role"] == "boundary"]) <= 12


def test_a_coarser_tolerance_stops_earlier():
    fine = FakeMachine(50000, bias=0.7)
    coarse = FakeMachine(50000, bias=0.7)
    search(fine, powers_of_two(2**20), tolerance=0.01)
    out = search(coarse, powers_of_two(2**20), tolerance=0.2)
    assert len(coarse.tried) < len(fine.tried)
    b = out.boundary
    assert b["largest_ok"] <= 50000 < b["smallest_oom"] <= b["largest_ok"] * 1.2 + 1


def test_even_the_smallest_size_failing_gives_no_largest_ok():
    machine = FakeMachine(0)
    out = search(machine, powers_of_two(1024))
    assert machine.tried == [1]
    assert out.boundary["largest_ok"] is None and out.boundary["smallest_oom"] == 1
    assert recommend(out.results, out.boundary)["recommended_batch_size"] is None


def test_explicit_sizes_that_start_above_the_boundary_are_bracketed_downwards():
    machine = FakeMachine(300)
    out = search(machine, [4096], tolerance=0.01)
    assert out.boundary["largest_ok"] <= 300 < out.boundary["smallest_oom"] <= out.boundary["largest_ok"] + 2


def test_boundary_not_reached_reports_nulls_and_why():
    machine = FakeMachine(10**9)
    out = search(machine, powers_of_two(4096), stopped_by="max_batch_size")
    b = out.boundary
    assert (b["largest_ok"], b["smallest_oom"], b["reached"]) == (None, None, False)
    assert b["stopped_by"] == "max_batch_size" and b["largest_tried_ok"] == 4096
    assert machine.tried == powers_of_two(4096)
    # The extrapolation is reported as such, never as a boundary.
    assert b["predicted_oom_batch_size"] == pytest.approx(10**9, rel=0.01)


@pytest.mark.parametrize("status", ["crash", "timeout", "error"])
def test_one_failure_is_recorded_and_the_sweep_goes_on(status):
    machine = FakeMachine(10**9)

    def trial(size, role):
        return {"batch_size": size, "status": status} if size == 256 else machine(size, role)

    out = search(trial, powers_of_two(4096))
    assert [r["batch_size"] for r in out.results] == powers_of_two(4096)
    assert {r["batch_size"]: r["status"] for r in out.results if r["status"] != "ok"} == {256: status}
    b = out.boundary
    assert (b["reached"], b["stopped_by"], b["largest_tried_ok"]) == (False, "max_batch_size", 4096)
    assert recommend(out.results, b)["recommended_batch_size"] != 256


def test_a_failure_at_the_smallest_size_only_still_gives_a_recommendation():
    # A model with BatchNorm cannot train on batches of one.
    machine = FakeMachine(10**9)
    out = search(lambda size, role: {"batch_size": size, "status": "error"} if size == 1 else machine(size, role),
                 powers_of_two(1024))
    assert recommend(out.results, out.boundary)["recommended_batch_size"] in powers_of_two(1024)[1:]


@pytest.mark.parametrize("status", ["crash", "timeout", "error"])
def test_failures_in_a_row_end_the_sweep_without_a_boundary(status):
    machine = FakeMachine(10**9, fail_status=status, fail_at=256)
    out = search(machine, powers_of_two(4096))
    assert machine.tried == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512][: 8 + MAX_FAILURES_IN_A_ROW]
    b = out.boundary
    assert (b["largest_ok"], b["smallest_oom"], b["reached"], b["stopped_by"]) == (None, None, False, status)
    assert b["largest_tried_ok"] == 128


def test_an_oom_after_a_crash_is_still_bracketed():
    machine = FakeMachine(3000)

    def trial(size, role):
        return {"batch_size": size, "status": "crash"} if size == 1024 else machine(size, role)

    out = search(trial, powers_of_two(2**20))
    b = out.boundary
    assert b["reached"] and b["largest_ok"] <= 3000 < b["smallest_oom"]


def test_a_crash_inside_the_bracket_stops_the_search_with_the_bracket_so_far():
    machine = FakeMachine(5000, fail_status="crash", fail_at=6000)
    calls = []

    def trial(size, role):
        calls.append(size)
        if role == "sweep":
            return machine(size, role) if size <= 4096 else {"batch_size": size, "status": "oom"}
        return {"batch_size": size, "status": "crash"}

    out = search(trial, powers_of_two(2**20))
    b = out.boundary
    assert b["stopped_by"] == "crash" and not b["reached"]
    assert b["largest_ok"] == 4096 and b["smallest_oom"] == 8192


def test_on_result_sees_every_trial_in_order():
    seen = []
    machine = FakeMachine(700)
    search(machine, powers_of_two(2**12), on_result=lambda r: seen.append(r["batch_size"]))
    assert seen == machine.tried


@pytest.mark.parametrize("lo,hi,expected", [(0, 1, True), (100, 101, True), (100, 102, False),
                                            (1000, 1010, True), (1000, 1011, False)])
def test_close_enough(lo, hi, expected):
    assert close_enough(lo, hi, 0.01) is expected


def test_memory_model_fits_a_line_and_predicts_the_capacity():
    model = MemoryModel()
    for b in (256, 512, 1024, 2048):
        model.add({"batch_size": b, "status": "ok", "model_peak_bytes": 1e6 + 1e3 * b, "memory_capacity_bytes": 2e6})
    a, slope = model.line()
    assert a == pytest.approx(1e6) and slope == pytest.approx(1e3)
    assert model.predict() == pytest.approx(1000)
    flat = MemoryModel()
    for b in (1, 2):
        flat.add({"batch_size": b, "status": "ok", "model_peak_bytes": 5e6, "memory_capacity_bytes": 1e7})
    assert flat.predict() is None


# -- recommendation ---------------------------------------------------------------------


def rows(rates, statuses=None):
    statuses = statuses or {}
    return [{"batch_size": b, "status": statuses.get(b, "ok"), "train_samples_per_sec": r}
            for b, r in sorted(rates.items())]


def test_recommends_the_smallest_size_within_95_percent_of_the_best():
    results = rows({32: 500.0, 64: 900.0, 128: 960.0, 256: 1000.0, 512: 990.0})
    rec = recommend(results, {"reached": False})
    assert rec["recommended_batch_size"] == 128
    assert rec["best_batch_size"] == 256 and rec["largest_safe_batch_size"] == 512


def test_recommendation_keeps_a_margin_below_the_boundary():
    results = rows({64: 900.0, 128: 950.0, 256: 990.0, 512: 1000.0, 600: 1000.0})
    boundary = {"reached": True, "largest_ok": 600, "smallest_oom": 605}
    rec = recommend(results, boundary)
    # 0.8 * 600 = 480: 512 and 600 are too close to the boundary.
    assert rec["largest_safe_batch_size"] == 256
    assert rec["recommended_batch_size"] == 128
    assert rec["recommended_batch_size"] in {r["batch_size"] for r in results}


def test_recommendation_when_only_sizes_near_the_boundary_are_fast():
    results = rows({1: 10.0, 2: 20.0, 4: 40.0, 8: 1000.0})
    rec = recommend(results, {"reached": True, "largest_ok": 8, "smallest_oom": 9})
    # Nothing within the margin reaches 95 %: the fastest safe size.
    assert rec["recommended_batch_size"] == 4


def test_one_disturbed_trial_does_not_move_the_recommendation():
    steady = {32: 500.0, 64: 800.0, 128: 960.0, 256: 1000.0, 512: 1000.0, 1024: 990.0}
    assert recommend(rows(steady), {"reached": False})["recommended_batch_size"] == 128
    for size in (256, 1024):  # another process slowed every trial but this one
        spike = {**steady, size: 1800.0}
        assert recommend(rows(spike), {"reached": False})["recommended_batch_size"] == 128
    dip = {**steady, 128: 300.0}  # a trial slowed down: at most one size larger
    assert recommend(rows(dip), {"reached": False})["recommended_batch_size"] == 256


def test_a_curve_still_rising_at_its_end_keeps_its_last_point():
    rising = {1: 600.0, 4: 2200.0, 16: 7000.0, 64: 13000.0, 256: 60000.0, 1024: 80000.0}
    rec = recommend(rows(rising), {"reached": False})
    assert rec["recommended_batch_size"] == 1024 and rec["best_batch_size"] == 1024


def test_recommendation_ignores_failed_trials():
    results = rows({32: 500.0, 64: 600.0, 128: None}, statuses={128: "oom"})
    assert recommend(results, {"reached": False})["recommended_batch_size"] == 64


def test_max_trials_bounds_a_pathological_search():
    # A machine whose verdicts flip every call cannot make the search loop forever.
    flip = {"n": 0}

    def trial(size, role):
        flip["n"] += 1
        if role == "sweep":
            return {"batch_size": size, "status": "ok" if size < 2**19 else "oom"}
        return {"batch_size": size, "status": "ok" if flip["n"] % 2 else "oom"}

    out = search(trial, powers_of_two(2**20), tolerance=1e-9)
    assert len(out.results) <= 21 + MAX_BOUNDARY_TRIALS
    assert math.isfinite(out.boundary["largest_ok"])
