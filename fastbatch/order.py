"""Epoch orders: which window ids go into which batch, as a pure function.

The order of an epoch depends on ``(seed, epoch, n_windows)`` alone, so two
machines, two thread counts or a resumed run see the same batches, and a
position in the epoch is all a checkpoint needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastbatch._checks import _show, check_int

_MASK = 2**64 - 1
# Above this many windows a shuffled epoch is computed (a keyed bijection
# evaluated for each chunk) rather than stored: a stored int32 permutation of
# 2**24 windows takes 64 MiB and Fisher-Yates over it about 0.3 s an epoch,
# while the computed order costs 8 bytes whatever the size.
STORED_SHUFFLE_MAX = 1 << 24
# order="block": a block covers about this many bytes of consecutive rows,
# at least one read-ahead window of the disk (Linux reads up to
# read_ahead_kb around a page fault: 128 KiB by default, 8 MiB on some
# virtual disks), so a cold memmap is read in long runs and little of what
# is read goes unused.  Chosen with bench/outofcore.py (docs/integration.md).
BLOCK_BYTES = 1 << 23
POOL_BLOCKS = 8
ORDERS = ("sequential", "shuffle", "feistel", "block")
# The codes of fastbatch.kernels.epoch_ids.
_KIND_CODES = {"sequential": 0, "feistel": 1, "block": 2}


def _splitmix64(x: int) -> int:
    """splitmix64 on Python ints (the key schedule; the kernels use the same mixer)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def epoch_key(seed: int, epoch: int) -> np.uint64:
    """The 64-bit key of one epoch's permutation: distinct epochs give unrelated keys.

    Epochs are int64: masking a larger one to 64 bits would silently give
    ``2**64`` the order of epoch 0.
    """
    epoch = check_int("epoch", epoch, minimum=0)
    return np.uint64(_splitmix64(_splitmix64(seed) ^ epoch))


def index_dtype(n: int) -> np.dtype:
    """int32 while ids fit (4 bytes a window), int64 beyond."""
    return np.dtype(np.int32) if n < 2**31 else np.dtype(np.int64)


def shuffled(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` for ``(seed, epoch)``: each window exactly once."""
    from fastbatch.kernels import shuffled_order

    out = np.empty(n, dtype=index_dtype(n))
    shuffled_order(out, epoch_key(seed, epoch))
    return out


@dataclass(frozen=True)
class BlockShuffle:
    """``order="block"`` with explicit sizes: shuffle blocks, then windows within a pool of blocks.

    Parameters
    ----------
    block_windows:
        Consecutive windows per block; ``None``: as many as start within about
        :data:`BLOCK_BYTES` of rows.
    pool_blocks:
        Blocks whose windows are shuffled together.  A stretch of
        ``block_windows * pool_blocks`` batches' windows reads only
        ``pool_blocks`` runs of the file; larger pools mix more.
    """

    block_windows: int | None = None
    pool_blocks: int = POOL_BLOCKS

    def __post_init__(self) -> None:
        if self.block_windows is not None:
            check_int("block_windows", self.block_windows, minimum=1)
        check_int("pool_blocks", self.pool_blocks, minimum=1)


@dataclass(frozen=True)
class OrderSpec:
    """A resolved order: ``kind`` in :data:`ORDERS`, plus the block sizes of ``"block"``."""

    kind: str
    block_windows: int = 0
    pool_blocks: int = 0


def resolve_order(order, shuffle: bool, n: int, step_bytes: int) -> OrderSpec:
    """The order a loader uses: ``order`` if given, else sequential or shuffled after ``shuffle``.

    ``"shuffle"`` is stored Fisher-Yates up to :data:`STORED_SHUFFLE_MAX`
    windows and the computed ``"feistel"`` order above; ``step_bytes`` (bytes
    of rows between consecutive window starts) sizes the blocks of ``"block"``.
    """
    if order is None:
        order = "shuffle" if shuffle else "sequential"
    if isinstance(order, str) and order == "block":
        order = BlockShuffle()
    if isinstance(order, BlockShuffle):
        k = order.block_windows or max(1, BLOCK_BYTES // max(1, step_bytes))
        return OrderSpec("block", int(k), int(order.pool_blocks))
    if not isinstance(order, str) or order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} or a fastbatch.BlockShuffle, got {_show(order)}")
    if shuffle and order == "sequential":
        raise ValueError("shuffle=True contradicts order='sequential'; leave shuffle out or pick a shuffled order")
    if order == "shuffle" and n > STORED_SHUFFLE_MAX:
        return OrderSpec("feistel")
    return OrderSpec(order)


def shard_size(n: int, world_size: int, drop_last: bool) -> int:
    """Positions each rank gets (``DistributedSampler``'s rule).

    ``drop_last``: ``n // world_size`` (the tail of the epoch is dropped);
    otherwise ``ceil(n / world_size)``, the shortfall padded with the epoch's
    first windows again.
    """
    return n // world_size if drop_last else -(-n // world_size)


class EpochOrder:
    """The window ids of one epoch, handed out in consecutive spans.

    ``kind`` is one of :data:`ORDERS` (:func:`resolve_order` picks it from a
    loader's options): ``"sequential"`` gives ``0, 1, ..., n-1`` without
    storing anything; ``"shuffle"`` stores one permutation (4 bytes a window
    below 2**31); ``"feistel"`` and ``"block"`` compute theirs (``block`` is
    ``(block_windows, pool_blocks)``).

    With ``world_size > 1`` this is rank ``rank``'s share: its position ``j`` is
    position ``j * world_size + rank`` of the epoch, wrapped round to the start
    for the padding (``DistributedSampler``'s interleaving), so ranks are
    disjoint apart from that padding.
    """

    def __init__(self, n: int, *, kind: str, seed: int, epoch: int, block: tuple[int, int] = (0, 0),
                 rank: int = 0, world_size: int = 1, drop_last: bool = False) -> None:
        if kind not in ORDERS:
            raise ValueError(f"kind must be one of {ORDERS}, got {_show(kind)}")
        if kind == "block" and min(block) < 1:
            raise ValueError(f"kind='block' needs block=(block_windows, pool_blocks), both >= 1, got {block}")
        self.n = n
        self.kind = kind
        self.rank, self.world_size = rank, world_size
        self.size = shard_size(n, world_size, drop_last)
        self._key = epoch_key(seed, epoch)
        self._block = block
        self._perm = shuffled(n, seed, epoch) if kind == "shuffle" else None

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Window ids at positions ``start:stop`` of the epoch (of this rank's share)."""
        if self.kind == "sequential" and self.world_size == 1:
            return np.arange(start, stop, dtype=index_dtype(self.n))
        if self._perm is not None:
            if self.world_size == 1:
                return self._perm[start:stop]
            positions = np.arange(start, stop, dtype=np.int64) * self.world_size + self.rank
            return self._perm[positions % self.n]
        from fastbatch.kernels import epoch_ids, run_parallel

        out = np.empty(max(0, stop - start), dtype=index_dtype(self.n))
        if out.shape[0]:
            run_parallel(epoch_ids, out, start, self.n, self.rank, self.world_size, _KIND_CODES[self.kind],
                         self._key, self._block[0], self._block[1])
        return out
