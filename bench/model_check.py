"""The pre-sweep check of ``--model``, in a child process: ``python -m bench.model_check SPEC RESULT``.

A user's factory module runs its own code when imported: it may call
``sys.exit``, parse ``sys.argv``, hang or crash.  Checked in a child that
``--trial-timeout`` bounds, each of these becomes one line naming ``--model``
instead of ending or hanging the harness, which never imports the module.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from bench.config import BenchConfig


def model_label(config: BenchConfig) -> str:
    """``--model X`` and its ``--model-options``, as the user wrote them: the start of every message here."""
    label = f"--model {config.model}"
    if config.model_options:
        label += " --model-options " + ",".join(f"{k}={v}" for k, v in config.model_options.items())
    return label


def check(config: BenchConfig, n_features: int) -> int:
    """Build the model on the CPU and run two windows through it; its parameter count, or ``ValueError``."""
    import torch

    from bench.models import build_model, resolve_factory

    try:
        resolve_factory(config.model)
    except ValueError as error:
        raise ValueError(f"--model {config.model}: {error}".splitlines()[0]) from None
    name = model_label(config)
    try:
        model = build_model(config.model, config.window, config.horizon, n_features, n_features,
                            **config.model_options)
        with torch.no_grad():
            out = model(torch.zeros(2, config.window, n_features))
    except Exception as error:  # noqa: BLE001 - the user's factory can fail in any way
        raise ValueError(f"{name}: {type(error).__name__}: {error}".splitlines()[0]) from None
    expected = (2, config.horizon, n_features)
    if tuple(out.shape) != expected and out.numel() != math.prod(expected):
        raise ValueError(f"{name} maps x of shape (2, {config.window}, {n_features}) to "
                         f"{tuple(out.shape)}; expected {expected} = (B, horizon, n_targets)")
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    spec_path, result_path = argv if argv is not None else sys.argv[1:]
    with open(spec_path) as f:
        spec = json.load(f)
    from bench.trial import die_with_harness

    die_with_harness(spec.get("harness_pid"))
    config = BenchConfig.from_dict(spec["config"])
    try:
        result: dict[str, Any] = {"parameters": check(config, spec["n_features"])}
    except ValueError as error:
        result = {"error": str(error)}
    except SystemExit as error:
        result = {"error": f"{model_label(config)}: the module called sys.exit({error.code!r}) while it was imported "
                           "or built (does it parse sys.argv or run a script at import?); every trial imports it, "
                           "so keep that under `if __name__ == \"__main__\":`"}
    except BaseException as error:  # noqa: BLE001 - KeyboardInterrupt raised by user code, and the like
        result = {"error": f"{model_label(config)}: {type(error).__name__}: {error}".splitlines()[0]}
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(result_path + ".tmp", result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no teardown: a user's module may have started threads that never end


if __name__ == "__main__":
    main()
