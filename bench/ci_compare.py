"""``python -m bench.ci_compare REPORT``: the CI verdict on a pytest-benchmark JSON report.

CI machines are shared and their speed drifts, so absolute times never fail a
run.  What fails it is a *ratio collapse*: a benchmark whose
``extra_info["speedup_vs_dataloader"]`` (fastbatch's samples/s over the
per-window ``DataLoader``'s, timed in alternation in the same run) falls
below ``--threshold`` (1.0: our loader slower than the textbook baseline).
Normal values are 10x and more, so noise does not reach the threshold.

The previous run saved under ``--history`` (outside the clone, so it
survives a fresh one) is printed alongside, for information.  With
``--save`` a run that passes is saved there as the next previous run.

Exit status: 0 passed, 1 a ratio collapsed, 2 the report is missing,
unreadable or has no ratio to check.
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


def collapses(report: dict[str, Any], threshold: float = THRESHOLD) -> list[str]:
    """One message per ratio below ``threshold``: field, value and threshold."""
    return [f"REGRESSION {name}: extra_info.{RATIO_KEY} = {value:.3g}, threshold >= {threshold:g}"
            + (" (fastbatch slower than the per-window DataLoader in the same run)" if not value >= 1 else "")
            for name, value in ratios(report).items() if not value >= threshold]


def previous_run(history: str) -> tuple[str, dict[str, Any]] | None:
    """The newest readable report saved in ``history``, or ``None``."""
    try:
        names = sorted((n for n in os.listdir(history) if n.endswith(".json")), reverse=True)
    except OSError:
        return None
    for name in names:
        path = os.path.join(history, name)
        try:
            return path, load(path)
        except ReportError as error:
            print(f"note: skipping an unreadable saved run: {error}")
    return None


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
                     threshold: float = THRESHOLD) -> None:
    before = ratios(previous[1]) if previous else {}
    print(f"\nspeed-up over the per-window DataLoader, same run ({RATIO_KEY}; fails below {threshold:g}):")
    for name, value in ratios(report).items():
        was = f"  (previous {before[name]:.3g})" if name in before else ""
        print(f"  {_short(name):<44} {value:8.3g}x{was:<20} {'ok' if value >= threshold else 'REGRESSION'}")
    if previous is None:
        print("\nno previous run saved: nothing to compare with")
        return
    path, old = previous
    print(f"\nmedian time per round against the previous run ({path}; {_label(old)}), "
          "for information, never a failure:")
    if (old.get("machine_info") or {}).get("node") != (report.get("machine_info") or {}).get("node"):
        print("  note: the previous run was on another machine; its times are not comparable")
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
                        help=f"the smallest {RATIO_KEY} that passes (default {THRESHOLD:g})")
    parser.add_argument("--save", action="store_true", help="save this run in the history if it passes")
    args = parser.parse_args(argv)
    history = args.history or default_history()
    try:
        report = load(args.report)
        if not ratios(report):
            raise ReportError(f"{args.report!r} has no benchmark with extra_info.{RATIO_KEY}: nothing to check")
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_comparison(report, previous_run(history), args.threshold)
    failures = collapses(report, args.threshold)
    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        return 1
    if args.save:
        print(f"\nsaved this run as {save(args.report, report, history)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
