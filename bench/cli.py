"""``python -m bench`` / ``fastbatch-bench``: the options, and the one place that reads ``sys.argv``."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
from typing import Any

from bench import config as cfg

DESCRIPTION = """\
Which batch size should this machine train with, and where does it run out of memory?

Sweeps batch sizes (powers of two) with fastbatch's WindowLoader and a training
step, each size in a fresh child process; measures loader-only and end-to-end
samples/s, the time spent waiting for data, peak host and device memory, and a
torch DataLoader baseline at the same sizes; finds the out-of-memory boundary
by doubling then bracketing to within 1%; then trains the model briefly,
measures the gradient noise scale, and recommends the batch size of highest
goodput (samples/s x statistical efficiency) within the boundary's margin.
"""

EPILOG = """\
examples:
  python -m bench --quick                        # about a minute
  python -m bench --device cuda --out results    # GPU; writes results.json, .csv and plots
  python -m bench --memory-limit 1GiB            # CPU: find where 1 GiB runs out
  python -m bench --data series.npy --model lstm --window 128
  python -m bench --model my_models:build --model-options hidden=512

--model module:function imports your module (its top-level code runs) and calls
function(window, horizon, n_features, n_targets, **model_options), which must
return a torch.nn.Module mapping x (B, window, F) to (B, horizon, n_targets).
--data files are memory-mapped with allow_pickle=False (never unpickled).
Exit status: 0 with a recommendation, 1 without one, 2 for a bad option or
input file (one line on stderr) or an --out folder that could not be written
after the sweep (the results then go to a new temporary folder, named on
stderr), 130 after Ctrl-C or SIGTERM (the running trial is killed).  See docs/bench.md for how to read the output.
"""


def _integer(minimum: int, maximum: int | None = None):
    """An argparse type: an integer in ``[minimum, maximum]``; argparse names the option in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text!r}")
        return value

    return parse


def _wrap(fn, name: str):
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name
    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _fraction(*, one: bool):
    """A number in (0, 1], or (0, 1) when ``one`` is false."""

    def parse(text: str) -> float:
        value = _number(text)
        if not (0 < value <= 1 if one else 0 < value < 1):
            raise argparse.ArgumentTypeError(f"must be a number in (0, {'1]' if one else '1)'}, got {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _memory_limit(text: str) -> int:
    """A size (see :func:`bench.config.parse_size`) no larger than this machine's memory."""
    import psutil

    try:
        value = cfg.parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    total = psutil.virtual_memory().total
    if value > total:
        # Beyond the machine, the limit cannot bind, and past 2**63 setrlimit overflows in every trial.
        raise argparse.ArgumentTypeError(f"must be at most this machine's memory, {cfg.format_bytes(total)} "
                                         f"({total} bytes), got {text!r}")
    return value


def _reference_lr(text: str) -> tuple[float, int]:
    from bench.goodput import parse_reference_lr

    try:
        return parse_reference_lr(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line for the mistake and one pointing to --help, instead of the whole usage."""
        self.exit(2, f"{self.prog}: error: {message}\n({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    prog = "fastbatch-bench" if os.path.basename(sys.argv[0]) == "fastbatch-bench" else "python -m bench"
    p = _Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--device", type=_device, help="cpu, cuda or cuda:N (default: cuda if torch sees one, else cpu)")
    g.add_argument("--batch-sizes", type=_wrap(cfg.parse_batch_sizes, "batch sizes"), metavar="B,B,...",
                   help="the sizes to sweep, e.g. 32,64,128 (default: powers of two from 1 up to the "
                        "boundary or --max-batch-size)")
    g.add_argument("--max-batch-size", type=_integer(1), metavar="B",
                   help=f"the last power-of-two size (default on CPU: {cfg.CPU_MAX_BATCH_SIZE}, --quick "
                        f"{cfg.QUICK_MAX_BATCH_SIZE}, or up to the boundary with --memory-limit; on GPU: up "
                        "to the boundary); never more than the series' windows")
    g.add_argument("--model", default="mlp",
                   help="mlp, cnn, lstm, transformer, or module:function for your own factory, which imports "
                        "your module and so runs its code (default: mlp)")
    g.add_argument("--model-options", type=_wrap(cfg.parse_model_options, "model options"), default={},
                   metavar="K=V,...", help="keyword arguments for the model factory, e.g. hidden=512,layers=3")
    g.add_argument("--steps", type=_integer(2), metavar="N",
                   help=f"training steps each trial must complete, the first fifth untimed; small batches "
                        f"run more, to time at least 0.5 s (default {cfg.DEFAULT_STEPS}, --quick {cfg.QUICK_STEPS})")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast in the training step")
    g.add_argument("--quick", action="store_true",
                   help="every other power of two up to 1024, fewer steps: under a minute on 2 cores")

    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="your own series: a .npy file, (N,) or (N, F), memory-mapped; "
                   "or a long-format table (.parquet file or folder, .arrow/.feather) with --id, --time, --target "
                   "(default: a synthetic series)")
    g.add_argument("--id", metavar="COLUMN", help="with a table: the series id column (omit for one series)")
    g.add_argument("--time", metavar="COLUMN", help="with a table: the time column (integers or timestamps)")
    g.add_argument("--target", metavar="COLUMNS", help="with a table: the target column(s), comma-separated")
    g.add_argument("--past", metavar="COLUMNS", default="",
                   help="with a table: observed covariates, comma-separated; inputs beside the target's history")
    g.add_argument("--window", type=_integer(1), default=64, help="input steps T (default 64)")
    g.add_argument("--horizon", type=_integer(1), default=8, help="target steps H (default 8)")
    g.add_argument("--features", type=_integer(1), help="features of the synthetic series (default 8)")
    g.add_argument("--series-length", type=_integer(1), metavar="N",
                   help="steps of the synthetic series (default 2**20 on CPU, 2**23 on GPU)")

    g = p.add_argument_group("memory")
    g.add_argument("--memory-limit", type=_memory_limit, metavar="SIZE",
                   help="host memory each trial may use, e.g. 2GiB or 1500MB (RLIMIT_DATA on the trial "
                        f"process; default on CPU: {cfg.SAFETY_FRACTION:.0%}% of the available memory)")
    g.add_argument("--gpu-memory-fraction", type=_fraction(one=True), metavar="F",
                   help="use only this fraction of the GPU's memory, to emulate a smaller card")
    g.add_argument("--tolerance", type=_fraction(one=False), default=0.01,
                   help="how close the boundary's bracket must be, relative (default 0.01)")

    g = p.add_argument_group("goodput (which size trains fastest to a given loss; docs/bench.md)")
    g.add_argument("--no-goodput", dest="goodput", action="store_false",
                   help="skip the gradient noise scale: recommend by throughput alone")
    g.add_argument("--reference-lr", type=_reference_lr, metavar="LR@B",
                   help="a learning rate and the batch size it was tuned at, e.g. 3e-4@64: the noise is measured "
                        "training at it, and the learning rate for the recommended size is scaled from it "
                        "(default 1e-3@32, the harness's AdamW step)")
    g.add_argument("--goodput-steps", type=_integer(1), metavar="N",
                   help=f"training steps of the noise-scale measurement, measured at 0, N/8, N/4, N/2 and N "
                        f"(default {cfg.GOODPUT_STEPS}, --quick {cfg.QUICK_GOODPUT_STEPS})")
    g.add_argument("--goodput-seconds", type=_seconds, metavar="S",
                   help=f"...or at most S seconds of that training, whichever ends first (default "
                        f"{cfg.GOODPUT_SECONDS:g}, --quick {cfg.QUICK_GOODPUT_SECONDS:g})")

    g = p.add_argument_group("measurement")
    g.add_argument("--prefetch", type=_integer(0), default=2, metavar="N",
                   help="batches the loader prepares ahead (default 2)")
    g.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the torch DataLoader baseline")
    g.add_argument("--trial-timeout", type=_seconds, default=300.0, metavar="S",
                   help="seconds before a trial is killed and recorded as a timeout (default 300)")
    g.add_argument("--seed", type=_integer(0, 2**64 - 1), default=0,
                   help="seed of the synthetic series, the model and the order")
    g.add_argument("--out", metavar="DIR", help="write results.json, results.csv, throughput.png, memory.png here")
    return p


def _table_options(args) -> dict | None:
    """``--id/--time/--target/--past`` checked against ``--data``: the table's columns, or ``None`` for a .npy."""
    from bench.data import is_table

    given = [o for o, v in (("--id", args.id), ("--time", args.time), ("--target", args.target),
                            ("--past", args.past)) if v]
    if args.data is None or not is_table(args.data):
        if given:
            raise ValueError(f"{' '.join(given)}: name columns of a table; give --data a .parquet, .arrow or "
                             f".feather file (got --data {args.data!r})")
        return None
    missing = [o for o, v in (("--time", args.time), ("--target", args.target)) if not v]
    if missing:
        raise ValueError(f"--data {args.data!r} is a table: {' and '.join(missing)} must name its column(s)")
    columns = lambda text: [c.strip() for c in text.split(",") if c.strip()]  # noqa: E731
    return {"id": args.id, "time": args.time, "target": columns(args.target), "past": columns(args.past)}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _baseline_workers() -> tuple[int, ...]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return (0,) + tuple(w for w in (2, 4, 8) if w <= usable)


def config_from_args(args: argparse.Namespace) -> cfg.BenchConfig:
    """Resolve the defaults that depend on the device, --quick and --memory-limit."""
    import psutil

    device = args.device or _default_device()
    gpu = device.startswith("cuda")
    table = _table_options(args)
    if args.data is not None:
        for option, value in (("--features", args.features), ("--series-length", args.series_length)):
            if value is not None:
                raise ValueError(f"{option} {value}: describes the synthetic series; with --data {args.data} "
                                 "the file gives the series")
    memory_limit, limit_from = args.memory_limit, "user" if args.memory_limit else "none"
    if memory_limit is None and not gpu:
        memory_limit, limit_from = int(cfg.SAFETY_FRACTION * psutil.virtual_memory().available), "safety"
    max_batch_size = args.max_batch_size
    if max_batch_size is None and not gpu and limit_from != "user":
        max_batch_size = cfg.QUICK_MAX_BATCH_SIZE if args.quick else cfg.CPU_MAX_BATCH_SIZE
    return cfg.BenchConfig(
        device=device,
        batch_sizes=args.batch_sizes,
        max_batch_size=max_batch_size,
        window=args.window,
        horizon=args.horizon,
        features=args.features or 8,
        series_length=args.series_length or (2**23 if gpu else 2**20),
        data=args.data,
        table=table,
        model=args.model,
        model_options=args.model_options,
        steps=args.steps or (cfg.QUICK_STEPS if args.quick else cfg.DEFAULT_STEPS),
        memory_limit=memory_limit,
        memory_limit_from=limit_from,
        gpu_memory_fraction=args.gpu_memory_fraction,
        bf16=args.bf16,
        prefetch=args.prefetch,
        tolerance=args.tolerance,
        trial_timeout=args.trial_timeout,
        baseline=args.baseline,
        baseline_workers=_baseline_workers(),
        loader_seconds=0.2 if args.quick else 0.5,
        baseline_samples=2048 if args.quick else 4096,
        quick=args.quick,
        goodput=args.goodput,
        goodput_steps=args.goodput_steps or (cfg.QUICK_GOODPUT_STEPS if args.quick else cfg.GOODPUT_STEPS),
        goodput_seconds=args.goodput_seconds or (cfg.QUICK_GOODPUT_SECONDS if args.quick else cfg.GOODPUT_SECONDS),
        reference_lr=args.reference_lr or cfg.DEFAULT_REFERENCE_LR,
        reference_lr_from="user" if args.reference_lr else "default",
        seed=args.seed,
        out=args.out,
    )


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        # Piped or captured output keeps the whole table on one line per row.
        console = Console(stderr=stderr, width=max(console.width, 190))
    return console


def _show(result: dict[str, Any], prepared, out: str | None) -> bool:
    """The table and summary on stdout; the files under ``out``.  False when ``out`` could not be written."""
    from rich.markup import escape

    from bench import harness, report

    console = _console()
    console.print(report.table(result))
    for line in report.summary(result):
        console.print(escape(line), highlight=False)
    written = True
    if out:
        try:
            paths = report.write_all(result, out)
            harness.keep_logs(prepared, result, out)
        except OSError as error:
            # The folder was checked before the sweep; something replaced or removed it since.
            written = False
            paths = _rescue(result)
            print(f"error: --out {out!r}: cannot write the results there ({error.strerror or error})"
                  + (f"; they were written to {os.path.dirname(paths[0])} instead" if paths else ""), file=sys.stderr)
        if paths:
            console.print("wrote " + escape(", ".join(paths)), highlight=False)
    console.print(f"done in {result['elapsed_s']:.0f} s", highlight=False)
    return written


def _rescue(result: dict[str, Any]) -> list[str]:
    """Write the report into a new temporary folder; its paths, or none if that fails too."""
    import tempfile

    from bench import report

    try:
        return report.write_all(result, tempfile.mkdtemp(prefix="fastbatch-bench-results-"))
    except OSError:
        return []


def _interrupted(detail: str = "") -> int:
    print("interrupted" + (f": {detail}" if detail else ""), file=sys.stderr)
    return 130


def _terminate(signum, frame):
    """SIGTERM (a CI job cancelled, ``timeout``, ``kill``) ends the run as Ctrl-C does: trial killed, partial report."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the harness; the exit status is 0 when a batch size was recommended, 130 after Ctrl-C or SIGTERM."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        return _run(parser, args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(parser, args)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from bench import harness

    try:
        config = config_from_args(args)
        prepared = harness.prepare(config)
    except (ValueError, harness.BenchError) as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        return _interrupted()
    try:
        result = harness.run(prepared, _console(stderr=True))
        written = _show(result, prepared, config.out)
    except KeyboardInterrupt:  # outside the sweep (profiling, plotting): nothing to report
        return _interrupted()
    finally:
        harness.cleanup(prepared)
    if result["interrupted"]:
        return _interrupted("the sweep ended early; the report above is partial")
    if not written:
        return 2
    return 0 if result["recommended_batch_size"] else 1
