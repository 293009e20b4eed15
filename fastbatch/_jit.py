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


def jit(parallel: bool = False):
    """Decorate a kernel: ``njit(nogil=True, cache=True, parallel=...)``."""

    def wrap(fn):
        if DISABLE_JIT:
            return fn
        return numba.njit(nogil=True, cache=True, parallel=parallel, error_model="numpy")(fn)

    return wrap


prange = numba.prange
