"""bench.ci_compare on fake pytest-benchmark reports: fails on a speed-up drop only, never on times."""

import json
import os
import subprocess
import sys

import pytest

from bench import ci_compare
from bench.ci_compare import RATIO_KEY, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_report(ratios, medians=None, *, commit="abc123def4567890", when="2026-11-26T06:51:31.000000+00:00",
                node="ci-1"):
    """A report shaped like ``pytest --benchmark-json``: ``ratios`` and ``medians`` by benchmark name."""
    medians = medians or {}
    names = list(dict.fromkeys([*ratios, *medians]))
    return {
        "machine_info": {"node": node, "cpu": {"brand_raw": "Test CPU"}},
        "commit_info": {"id": commit, "dirty": False},
        "datetime": when,
        "version": "5.3.1",
        "benchmarks": [
            {"name": name, "fullname": f"tests/benchmarks/test_bench_loader.py::{name}",
             "stats": {"median": medians.get(name, 0.01), "min": 0.009, "max": 0.02, "rounds": 5},
             "extra_info": {"samples_per_round": 1000, **({RATIO_KEY: ratios[name]} if name in ratios else {})}}
            for name in names
        ],
    }


def write(path, report):
    path.write_text(json.dumps(report))
    return str(path)


@pytest.fixture
def history(tmp_path):
    return tmp_path / "history"


def run(tmp_path, history, report, *extra):
    return main([write(tmp_path / "benchmarks.json", report), "--history", str(history), *extra])


def test_healthy_ratios_pass_without_a_previous_run(tmp_path, history, capsys):
    assert run(tmp_path, history, fake_report({"test_loader_epoch[wide]": 25.7, "test_speedup": 38.0})) == 0
    out = capsys.readouterr().out
    assert "test_loader_epoch[wide]" in out and "25.7x" in out and "no previous run saved" in out


def test_a_ratio_below_the_threshold_fails_with_field_value_and_threshold(tmp_path, history, capsys):
    report = fake_report({"test_loader_epoch[wide]": 0.83, "test_loader_epoch[textbook]": 170.0})
    assert run(tmp_path, history, report, "--save") == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"REGRESSION tests/benchmarks/test_bench_loader.py::test_loader_epoch[wide]: "
                   f"extra_info.{RATIO_KEY} = 0.83, threshold >= 1 (the absolute floor, --threshold)"]
    assert not history.exists()  # a failing run is not saved as the next previous run


@pytest.mark.parametrize("ratio,code", [(1.0, 0), (0.999, 1), (float("nan"), 1)])
def test_the_threshold_is_inclusive_and_nan_fails(tmp_path, history, ratio, code):
    assert run(tmp_path, history, fake_report({"t": ratio})) == code


def test_a_custom_threshold(tmp_path, history, capsys):
    assert run(tmp_path, history, fake_report({"t": 3.0}), "--threshold", "5") == 1
    assert capsys.readouterr().err.strip().endswith(
        f"extra_info.{RATIO_KEY} = 3, threshold >= 5 (the absolute floor, --threshold)")
    assert run(tmp_path, history, fake_report({"t": 6.0}), "--threshold", "5") == 0


def test_slower_times_than_the_previous_run_never_fail(tmp_path, history, capsys):
    old = fake_report({"t": 20.0}, {"t": 0.010, "gather": 0.001}, commit="0123456789ab", when="2026-11-25T10:00:00")
    os.makedirs(history)
    write(history / "20261125T100000-0123456789ab.json", old)
    new = fake_report({"t": 15.0}, {"t": 0.050, "gather": 0.004, "brand_new": 0.002})
    assert run(tmp_path, history, new) == 0
    out = capsys.readouterr().out
    assert "(previous 20)" in out and "commit 0123456789ab" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert rows["t"][-6:] == ["10", "ms", "->", "50", "ms", "+400%"]
    assert rows["gather"] == ["1", "ms", "->", "4", "ms", "+300%"]
    assert rows["brand_new"] == ["-", "->", "2", "ms", "new"]
    assert "another machine" not in out


def test_the_newest_saved_run_of_this_machine_is_the_previous_one_and_a_broken_one_is_skipped(
        tmp_path, history, capsys):
    os.makedirs(history)
    write(history / "20260101T000000-old.json", fake_report({"t": 11.0}))
    write(history / "20260201T000000-mid.json", fake_report({"t": 30.0}))
    write(history / "20260301T000000-other.json", fake_report({"t": 90.0}, node="other-machine"))
    (history / "20260401T000000-broken.json").write_text("{not json")
    # 16 is above half of this machine's newest (30), below half of the other machine's (90).
    assert run(tmp_path, history, fake_report({"t": 16.0})) == 0
    out = capsys.readouterr().out
    assert "skipping an unreadable saved run" in out and "(previous 30)" in out and "another machine" not in out
    assert run(tmp_path, history, fake_report({"t": 14.0})) == 1


def save_previous(history, ratios, node="ci-1"):
    os.makedirs(history, exist_ok=True)
    write(history / "20261125T100000-0123456789ab.json",
          fake_report(ratios, commit="0123456789ab", when="2026-11-25T10:00:00", node=node))


def test_a_speed_up_that_halves_against_the_previous_passing_run_fails(tmp_path, history, capsys):
    save_previous(history, {"test_loader_epoch[wide]": 24.0})
    assert run(tmp_path, history, fake_report({"test_loader_epoch[wide]": 11.9}), "--save") == 1
    err = capsys.readouterr().err.splitlines()
    # Far above the absolute floor of 1, and still a failure: half of 24 is the threshold.
    assert err == [f"REGRESSION tests/benchmarks/test_bench_loader.py::test_loader_epoch[wide]: "
                   f"extra_info.{RATIO_KEY} = 11.9, threshold >= 12 (0.5 x the previous passing run's 24)"]
    assert len(os.listdir(history)) == 1  # not saved: the next run is still compared with 24
    assert run(tmp_path, history, fake_report({"test_loader_epoch[wide]": 12.0})) == 0


def test_a_failed_run_does_not_lower_the_bar_for_the_next(tmp_path, history):
    assert run(tmp_path, history, fake_report({"t": 20.0}, when="2026-11-01T00:00:00"), "--save") == 0
    assert run(tmp_path, history, fake_report({"t": 6.0}, when="2026-11-02T00:00:00"), "--save") == 1
    assert run(tmp_path, history, fake_report({"t": 9.0}, when="2026-11-03T00:00:00"), "--save") == 1
    assert run(tmp_path, history, fake_report({"t": 10.5}, when="2026-11-04T00:00:00"), "--save") == 0


def test_a_custom_max_drop(tmp_path, history, capsys):
    save_previous(history, {"t": 20.0})
    assert run(tmp_path, history, fake_report({"t": 15.0}), "--max-drop", "0.2") == 1
    assert capsys.readouterr().err.strip().endswith("threshold >= 16 (0.8 x the previous passing run's 20)")
    assert run(tmp_path, history, fake_report({"t": 16.0}), "--max-drop", "0.2") == 0
    with pytest.raises(SystemExit):
        run(tmp_path, history, fake_report({"t": 16.0}), "--max-drop", "1")
    assert "--max-drop must be in [0, 1), got 1" in capsys.readouterr().err


def test_new_benchmarks_and_runs_on_another_machine_are_held_to_the_floor(tmp_path, history, capsys):
    save_previous(history, {"t": 40.0}, node="other-machine")
    assert run(tmp_path, history, fake_report({"t": 2.0, "brand_new": 1.5})) == 0
    out = capsys.readouterr().out
    assert "(previous 40)" in out and "another machine" in out and "held to the floor" in out
    assert run(tmp_path, history, fake_report({"t": 2.0, "brand_new": 0.9})) == 1
    assert "brand_new: extra_info" in capsys.readouterr().err


def test_save_keeps_a_dated_copy_and_prunes_the_oldest(tmp_path, history, capsys, monkeypatch):
    monkeypatch.setattr(ci_compare, "KEEP", 3)
    for day in range(1, 6):
        report = fake_report({"t": 10.0 + day}, when=f"2026-11-0{day}T12:00:00+00:00", commit=str(day) * 40)
        assert run(tmp_path, history, report, "--save") == 0
    assert sorted(os.listdir(history)) == [f"2026110{d}T120000-{str(d) * 12}.json" for d in (3, 4, 5)]
    assert "saved this run as" in capsys.readouterr().out
    saved = json.loads((history / "20261105T120000-555555555555.json").read_text())
    assert saved["benchmarks"][0]["extra_info"][RATIO_KEY] == 15.0


def test_a_report_outside_git_is_saved_too(tmp_path, history):
    report = fake_report({"t": 10.0})
    report["commit_info"] = {"error": "CalledProcessError(128, ['git', 'rev-parse', 'HEAD'])"}
    report.pop("datetime")
    assert run(tmp_path, history, report, "--save") == 0
    assert [name.endswith("-nocommit.json") for name in os.listdir(history)] == [True]


@pytest.mark.parametrize("content,fragment", [
    (None, "cannot read the benchmark report"),
    ("{not json", "cannot read the benchmark report"),
    ('{"machine_info": {}}', "not a pytest-benchmark JSON report"),
    (json.dumps(fake_report({}, {"t": 0.01})), f"no benchmark with extra_info.{RATIO_KEY}"),
])
def test_a_missing_or_unusable_report_is_exit_2(tmp_path, history, capsys, content, fragment):
    path = tmp_path / "benchmarks.json"
    if content is not None:
        path.write_text(content)
    assert main([str(path), "--history", str(history)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err


def test_the_default_history_is_outside_the_clone(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTBATCH_BENCH_HISTORY", str(tmp_path / "h"))
    assert ci_compare.default_history() == str(tmp_path / "h")
    monkeypatch.delenv("FASTBATCH_BENCH_HISTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert ci_compare.default_history() == str(tmp_path / "cache" / "fastbatch" / "benchmarks")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ci_compare.default_history() == str(tmp_path / "home" / ".cache" / "fastbatch" / "benchmarks")


def test_runs_as_a_command(tmp_path):
    path = write(tmp_path / "benchmarks.json", fake_report({"test_loader_epoch[wide]": 0.5}))
    env = dict(os.environ, FASTBATCH_BENCH_HISTORY=str(tmp_path / "history"))
    proc = subprocess.run([sys.executable, "-m", "bench.ci_compare", path, "--save"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "REGRESSION" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "history").exists()
