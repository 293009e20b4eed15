"""``python -m bench.ci_compare REPORT``: the CI verdict on a pytest-benchmark JSON report.

CI machines are shared and their speed drifts, so absolute times never fail a
run.  What fails it is a *speed-up drop*: a benchmark's
``extra_info["speedup_vs_dataloader"]`` (fastbatch's samples/s over the
per-window ``DataLoader``'s, timed in alternation in the same run, so drift
hits both) below half its value in the previous passing run on the same
machine (``--max-drop 0.5``).  A benchmark with no previous value, or a first
run, is held to the absolute floor ``--threshold`` (1.0: our loader slower
than the textbook baseline); the floor applies to every benchmark too.

Passing runs are saved under ``--history`` (outside the clone, so the history
survives a fresh one) with ``--save``; the newest one is the previous run, and
its times are printed alongside, for information.

Exit status: 0 passed, 1 a speed-up dropped, 2 the report is missing,
unreadable or has no speed-up to check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from datetime import datetime, timezone
from typing import Any

RATIO_KEY = "speedup_vs_dataloader"
THRESHOLD = 1.0
# A speed-up may fall to this fraction of the previous passing run's before the
# run fails.  Same-run ratios move by some 10-30 % between runs of a shared
# machine; a lost optimisation (a per-batch copy, a lost chunk) halves them.
MAX_DROP = 0.5
KEEP = 50  # saved runs kept in the history folder


class ReportError(ValueError):
    """A report that cannot be read or checked."""


def default_history() -> str:
    """``$FASTBATCH_BENCH_HISTORY``, else ``$XDG_CACHE_HOME/fastbatch/benchmarks`` (``~/.cache`` by default)."""
    if os.environ.get("FASTBATCH_BENCH_HISTORY"):
        return os.environ["FASTBATCH_BENCH_HISTORY"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastbatch", "benchmarks")


def load(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read the benchmark report {path!r}: {error}") from None
    if not isinstance(report, dict) or not isinstance(report.get("benchmarks"), list):
        raise ReportError(f"{path!r} is not a pytest-benchmark JSON report (no 'benchmarks' list)")
    return report


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """``{fullname: ratio}`` of every benchmark that reports one."""
    return {b["fullname"]: float(b["extra_info"][RATIO_KEY]) for b in report["benchmarks"]
            if isinstance(b.get("extra_info"), dict) and b["extra_info"].get(RATIO_KEY) is not None}


def medians(report: dict[str, Any]) -> dict[str, float]:
    return {b["fullname"]: b["stats"]["median"] for b in report["benchmarks"]
            if isinstance(b.get("stats"), dict) and b["stats"].get("median")}


def _node(report: dict[str, Any]) -> str | None:
    return (report.get("machine_info") or {}).get("node")


def thresholds(report: dict[str, Any], previous: dict[str, Any] | None, floor: float = THRESHOLD,
               max_drop: float = MAX_DROP) -> dict[str, tuple[float, str]]:
    """``{fullname: (threshold, why)}``: ``1 - max_drop`` of the previous run's ratio, never below ``floor``.

    A previous run from another machine is not compared with (its core count
    sets its ratios): every benchmark is then held to the floor.
    """
    before = ratios(previous) if previous is not None and _node(previous) == _node(report) else {}
    floor_why = "the absolute floor, --threshold"
    out = {}
    for name in ratios(report):
        relative = before[name] * (1 - max_drop) if before.get(name, 0) > 0 else 0.0
        if relative > floor:
            out[name] = (relative, f"{1 - max_drop:g} x the previous passing run's {before[name]:.3g}")
        else:
            out[name] = (floor, floor_why)
    return out


def collapses(report: dict[str, Any], previous: dict[str, Any] | None = None, threshold: float = THRESHOLD,
              max_drop: float = MAX_DROP) -> list[str]:
    """One message per ratio below its threshold (see :func:`thresholds`): field, value, threshold and why."""
    limits = thresholds(report, previous, threshold, max_drop)
    return [f"REGRESSION {name}: extra_info.{RATIO_KEY} = {value:.3g}, threshold >= {limits[name][0]:.3g} "
            f"({limits[name][1]})"
            for name, value in ratios(report).items() if not value >= limits[name][0]]


def previous_run(history: str, node: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """The newest readable report saved in ``history`` from machine ``node`` if any, else the newest; or ``None``."""
    try:
        names = sorted((n for n in os.listdir(history) if n.endswith(".json")), reverse=True)
    except OSError:
        return None
    newest = None
    for name in names:
        path = os.path.join(history, name)
        try:
            report = load(path)
        except ReportError as error:
            print(f"note: skipping an unreadable saved run: {error}")
            continue
        if _node(report) == node:
            return path, report
        newest = newest or (path, report)
    return newest


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _short(fullname: str) -> str:
    return fullname.rsplit("::", 1)[-1]


def _label(report: dict[str, Any]) -> str:
    commit = (report.get("commit_info") or {}).get("id") or "no commit"
    return f"commit {commit[:12]}, {report.get('datetime', 'no date')}"


def print_comparison(report: dict[str, Any], previous: tuple[str, dict[str, Any]] | None,
                     threshold: float = THRESHOLD, max_drop: float = MAX_DROP) -> None:
    before = ratios(previous[1]) if previous else {}
    limits = thresholds(report, previous[1] if previous else None, threshold, max_drop)
    print(f"\nspeed-up over the per-window DataLoader, same run ({RATIO_KEY}; fails below "
          f"{1 - max_drop:g} x the previous passing run's, and below {threshold:g}):")
    for name, value in ratios(report).items():
        was = f"  (previous {before[name]:.3g})" if name in before else ""
        verdict = "ok" if value >= limits[name][0] else "REGRESSION"
        print(f"  {_short(name):<44} {value:8.3g}x{was:<20} >= {limits[name][0]:<8.3g} {verdict}")
    if previous is None:
        print("\nno previous run saved: nothing to compare with")
        return
    path, old = previous
    print(f"\nmedian time per round against the previous run ({path}; {_label(old)}), "
          "for information, never a failure:")
    if _node(old) != _node(report):
        print("  note: the previous run was on another machine; its times and speed-ups are not comparable, "
              "so the speed-ups were held to the floor only")
    then, now = medians(old), medians(report)
    for name, value in now.items():
        change = f"{value / then[name] - 1:+.0%}" if name in then else "new"
        was = _time(then[name]) if name in then else "-"
        print(f"  {_short(name):<44} {was:>10} -> {_time(value):>10}  {change}")


def save(report_path: str, report: dict[str, Any], history: str, keep: int | None = None) -> str:
    """Copy the report into ``history`` under a name that sorts by date; keep the newest ``keep`` (``KEEP``)."""
    keep = KEEP if keep is None else keep
    os.makedirs(history, exist_ok=True)
    try:
        when = datetime.fromisoformat(report["datetime"])
    except (KeyError, TypeError, ValueError):
        when = datetime.now(timezone.utc)
    commit = re.sub(r"[^0-9a-zA-Z]", "", (report.get("commit_info") or {}).get("id") or "")[:12] or "nocommit"
    target = os.path.join(history, f"{when:%Y%m%dT%H%M%S}-{commit}.json")
    shutil.copyfile(report_path, target)
    saved = sorted(n for n in os.listdir(history) if n.endswith(".json"))
    for name in saved[:-keep]:
        os.unlink(os.path.join(history, name))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ci_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="the JSON of pytest --benchmark-json")
    parser.add_argument("--history", default=None, help="saved runs (default: $FASTBATCH_BENCH_HISTORY, "
                                                         "else ~/.cache/fastbatch/benchmarks)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help=f"the absolute floor of {RATIO_KEY}, used alone without a previous run "
                             f"(default {THRESHOLD:g})")
    parser.add_argument("--max-drop", type=float, default=MAX_DROP,
                        help=f"the fraction of the previous passing run's {RATIO_KEY} a benchmark may lose "
                             f"(default {MAX_DROP:g}: fail below half)")
    parser.add_argument("--save", action="store_true", help="save this run in the history if it passes")
    args = parser.parse_args(argv)
    if not 0 <= args.max_drop < 1:
        parser.error(f"--max-drop must be in [0, 1), got {args.max_drop:g}")
    history = args.history or default_history()
    try:
        report = load(args.report)
        if not ratios(report):
            raise ReportError(f"{args.report!r} has no benchmark with extra_info.{RATIO_KEY}: nothing to check")
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    previous = previous_run(history, _node(report))
    print_comparison(report, previous, args.threshold, args.max_drop)
    failures = collapses(report, previous[1] if previous else None, args.threshold, args.max_drop)
    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        return 1
    if args.save:
        print(f"\nsaved this run as {save(args.report, report, history)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
