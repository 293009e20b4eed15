"""Argument checks shared by the public constructors.

Every message names the parameter, shows the value received and says what is
allowed, so a user can fix the call without reading our source.
"""

from __future__ import annotations

import numbers
from typing import Any

# Kernels, numpy and torch index in int64: a larger integer would wrap round
# or fail deep inside them, so it is refused where it is given.
INT64_MAX = 2**63 - 1


def _show(value: Any) -> str:
    text = " ".join(repr(value).split())  # one line, even for a numpy array
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = INT64_MAX) -> int:
    """Return ``value`` as an ``int`` or raise naming ``name``.

    Booleans are refused: ``window=True`` is a mistake, not the number one.
    ``maximum`` defaults to the largest int64; ``None`` lifts it.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        allowed = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise TypeError(f"{name} must be {allowed}, got {_show(value)} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {name}={value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (numpy's included), else raise naming ``name``."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {_show(value)} of type {type(value).__name__}")


def check_seed(value: Any) -> int:
    """A seed is an integer in ``[0, 2**64)``."""
    return check_int("seed", value, minimum=0, maximum=2**64 - 1)
