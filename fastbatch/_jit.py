"""The one place kernels are compiled.

Every kernel goes through :func:`jit`, so compilation options stay consistent
(``nogil`` for the prefetch thread, ``cache`` so a fresh process does not
compile again) and can be switched off at once for debugging and coverage with
``FASTBATCH_DISABLE_JIT=1``.
"""

from __future__ import annotations

import os

import numba

DISABLE_JIT = os.environ.get("FASTBATCH_DISABLE_JIT", "") not in ("", "0")


# Floating-point reductions may be reordered (so that they vectorise), never assume away NaN or infinity:
# a non-finite input must still give a non-finite result.
REASSOCIATE = frozenset({"reassoc", "contract", "nsz"})


def jit(parallel: bool = False, fastmath: frozenset[str] | bool = False):
    """Decorate a kernel: ``njit(nogil=True, cache=True, parallel=..., fastmath=...)``."""

    def wrap(fn):
        if DISABLE_JIT:
            return fn
        flags = set(fastmath) if isinstance(fastmath, frozenset) else fastmath
        return numba.njit(nogil=True, cache=True, parallel=parallel, fastmath=flags, error_model="numpy")(fn)

    return wrap


prange = numba.prange
