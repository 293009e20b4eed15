"""What one harness run measures: the options, their defaults and their checks.

A :class:`BenchConfig` is made by :mod:`bench.cli` from the command line and
then travels, as a dict, into every trial process and into ``results.json``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

# Units of --memory-limit: explicit only, since "2G" means 2e9 to some tools and 2**31 to others.
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")

# Defaults chosen by running `python -m bench` on a 2-core CPU machine: a run
# stays under 3 minutes (--quick: 1 minute) including one child process per
# trial.  See docs/bench.md.
DEFAULT_STEPS = 20
QUICK_STEPS = 8
# Without a memory limit, a CPU sweep stops here: each doubling doubles the
# step time, and the host's real boundary is far beyond what 2 cores train
# through in minutes.  With --memory-limit the sweep goes on to the boundary.
CPU_MAX_BATCH_SIZE = 8192
QUICK_MAX_BATCH_SIZE = 1024
# A CPU child is never allowed more than this fraction of the memory available
# when the harness starts, so a runaway batch size cannot endanger the machine.
SAFETY_FRACTION = 0.8
# The goodput measurement's training budget (bench.noise_run): steps, or
# seconds of training, whichever ends first.  500 steps of 32 windows take the
# MLP's loss most of the way down on the synthetic series in a few seconds on
# 2 cores; --quick keeps it to what adds about 5 s (child start included).
GOODPUT_STEPS = 500
GOODPUT_SECONDS = 30.0
QUICK_GOODPUT_STEPS = 100
QUICK_GOODPUT_SECONDS = 5.0
# The (learning rate, batch size) the noise is measured at without --reference-lr:
# the harness's own training step, AdamW at its default lr 1e-3 (bench.models.TrainStep), at 32.
DEFAULT_REFERENCE_LR = (1e-3, 32)


def parse_size(text: str) -> int:
    """``"2GiB"`` -> ``2147483648``; ``"512MB"`` -> ``512000000``; a bare number is bytes."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"invalid size {text!r}: use a number with one of the units B, kB, MB, GB, TB (powers of 1000) "
            "or KiB, MiB, GiB, TiB (powers of 1024), e.g. 2GiB"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: must be more than 0 bytes")
    return value


def format_bytes(n: float | None) -> str:
    """``2147483648`` -> ``"2.00 GiB"``, ``483183820`` -> ``"461 MiB"``; ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            value = n / scale
            digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
            return f"{value:.{digits}f} {unit}"
    return f"{int(n)} B"


def parse_batch_sizes(text: str) -> list[int]:
    """``"32,64,128"`` -> ``[32, 64, 128]`` (sorted, duplicates removed)."""
    sizes = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"must be positive integers separated by commas, got {text!r}")
        sizes.append(int(part))
    return sorted(set(sizes))


def parse_model_options(text: str) -> dict[str, Any]:
    """``"hidden=512,layers=3"`` -> ``{"hidden": 512, "layers": 3}`` (ints, floats, true/false, else strings)."""
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"must look like 'hidden=512,layers=3', got {text!r}")
        options[key.strip()] = _scalar(value.strip())
    return options


def _scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def powers_of_two(limit: int, base: int = 2) -> list[int]:
    """``1, base, base**2, ...`` up to ``limit``, plus ``limit`` itself when it is not a power (base 2 or 4)."""
    sizes, b = [], 1
    while b <= limit:
        sizes.append(b)
        b *= base
    if sizes[-1] != limit:
        sizes.append(limit)
    return sizes


@dataclass
class BenchConfig:
    """Every option of a harness run, resolved (no ``None`` meaning "pick a default" left but where noted)."""

    device: str = "cpu"
    batch_sizes: list[int] | None = None  # None: powers of two up to the boundary or max_batch_size
    max_batch_size: int | None = None  # None: until the boundary (or the dataset's number of windows)
    window: int = 64
    horizon: int = 8
    features: int = 8
    series_length: int = 2**20
    data: str | None = None  # a .npy file, memory-mapped; or a Parquet/Arrow table with `table`
    # With a table: {"id", "time", "target", "past"} for SlidingWindows.from_parquet.
    table: dict[str, Any] | None = None
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    steps: int = DEFAULT_STEPS
    memory_limit: int | None = None  # bytes, on each trial process (RLIMIT_DATA)
    memory_limit_from: str = "none"  # "user", "safety" or "none"
    gpu_memory_fraction: float | None = None
    bf16: bool = False
    prefetch: int = 2
    tolerance: float = 0.01
    trial_timeout: float = 300.0
    baseline: bool = True
    baseline_workers: tuple[int, ...] = (0, 2)
    loader_seconds: float = 0.5
    baseline_samples: int = 4096
    quick: bool = False
    goodput: bool = True
    goodput_steps: int = GOODPUT_STEPS
    goodput_seconds: float = GOODPUT_SECONDS
    reference_lr: tuple[float, int] = DEFAULT_REFERENCE_LR
    reference_lr_from: str = "default"  # "user" with --reference-lr
    seed: int = 0
    out: str | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("window", 1), ("horizon", 1), ("features", 1), ("steps", 2), ("prefetch", 0),
                              ("goodput_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"--max-batch-size must be an integer >= 1, got {self.max_batch_size}")
        if self.data is None and self.series_length < self.window + self.horizon:
            raise ValueError(
                f"--series-length must be at least window + horizon = {self.window + self.horizon}, "
                f"got {self.series_length}"
            )
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError(f"--gpu-memory-fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        if not (0 < self.tolerance < 1) or math.isnan(self.tolerance):
            raise ValueError(f"--tolerance must be in (0, 1), got {self.tolerance}")
        if self.trial_timeout <= 0:
            raise ValueError(f"--trial-timeout must be more than 0 seconds, got {self.trial_timeout}")
        if not (self.goodput_seconds > 0 and math.isfinite(self.goodput_seconds)):
            raise ValueError(f"--goodput-seconds must be a finite number of seconds > 0, got {self.goodput_seconds}")
        lr, size = self.reference_lr
        if not (lr > 0 and math.isfinite(lr)) or isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"--reference-lr must be LR@B with LR > 0 and B an integer >= 1, got {lr}@{size}")
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device):
            raise ValueError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def warmup_steps(self) -> int:
        """Steps run but not timed: the first ones allocate the optimiser state and warm the caches."""
        return max(1, self.steps // 5)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["baseline_workers"] = list(self.baseline_workers)
        out["reference_lr"] = list(self.reference_lr)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BenchConfig":
        values = dict(values)
        values["baseline_workers"] = tuple(values.get("baseline_workers", (0, 2)))
        if "reference_lr" in values:
            values["reference_lr"] = tuple(values["reference_lr"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})
