"""Plain-Python meanings of the computed epoch orders in fastbatch/kernels.py, and a kernel caller.

Python integers, one position at a time (or one pool at a time), so they can
be read against the docstrings rather than against the kernels they check.
"""

from __future__ import annotations

import numpy as np

from fastbatch.kernels import FEISTEL_ROUNDS, epoch_ids
from reference import GOLDEN64, MASK64, mix64

KINDS = {"sequential": 0, "feistel": 1, "block": 2}
MIX1 = 0xBF58476D1CE4E5B9
ROTATE = 0xD1B54A32D192ED03


def reference_feistel(x: int, bits: int, key: int) -> int:
    """Unbalanced Feistel on ``bits`` bits: (L, R) -> (R, L ^ F_i(R)), halves trading widths."""
    la, lb = bits // 2, bits - bits // 2
    left, right = x >> lb, x & ((1 << lb) - 1)
    for i in range(FEISTEL_ROUNDS):
        f = mix64(right ^ ((key + (i + 1) * GOLDEN64) & MASK64))
        left, right = right, (left ^ f) & ((1 << la) - 1)
        la, lb = lb, la
    return (left << lb) | right


def reference_rotation(n: int, key: int) -> int:
    return mix64(key ^ ROTATE) % n


def reference_permute(x: int, n: int, key: int) -> int:
    """Cycle-walk the Feistel bijection of the next power of two into [0, n), then rotate by a keyed offset."""
    bits = max(0, (n - 1).bit_length())
    y = reference_feistel(x, bits, key)
    while y >= n:
        y = reference_feistel(y, bits, key)
    return (y + reference_rotation(n, key)) % n


def reference_block_order(n: int, key: int, block_windows: int, pool_blocks: int) -> list[int]:
    """The whole block-shuffled epoch, built pool by pool (not position by position)."""
    k = block_windows
    n_blocks = n // k
    n_pools = max(1, -(-n_blocks // pool_blocks))
    rotation = reference_rotation(n, mix64(key))
    blocks = [reference_permute(b, n_blocks, key) for b in range(n_blocks)]
    out = []
    for q in range(n_pools):
        members = [v for b in blocks[q * pool_blocks : (q + 1) * pool_blocks] for v in range(b * k, b * k + k)]
        if q == n_pools - 1:
            members += list(range(n_blocks * k, n))  # the partial block
        pool_key = mix64(key ^ ((q * GOLDEN64 + MIX1) & MASK64))
        out += [members[reference_permute(j, len(members), pool_key)] for j in range(len(members))]
    return [(v + rotation) % n for v in out]


def kernel_ids(n, kind, key, start=0, stop=None, rank=0, world_size=1, block=(0, 0)):
    stop = n if stop is None else stop
    out = np.full(stop - start, -1, dtype=np.int64)
    epoch_ids(out, start, n, rank, world_size, KINDS[kind], np.uint64(key), block[0], block[1])
    return out
