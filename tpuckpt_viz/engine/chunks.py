"""Tensors as flat chunks, in order, each read once: one tensor, or two side by side.

Each tensor is read as its read plan says (:meth:`Checkpoint.plan`): a plan with byte ranges
is streamed through :mod:`tpuckpt_viz.checkpoint.shards` (checked against its crc32c); the
rest (strings, partitioned variables, V1 files) is read whole through the checkpoint.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from tpuckpt_viz.checkpoint import remote, shards
from tpuckpt_viz.checkpoint.reader import Checkpoint
from tpuckpt_viz.engine.reductions import scratch_buffer

T = TypeVar("T")
R = TypeVar("R")

# Threads for tensor-by-tensor work: a read releases the GIL (os.pread, or waiting on a
# storage request) and so does numpy's reduction. Remote storage waits far longer than it
# computes (20-50 ms before the first byte of each request), so more requests are in flight.
LOCAL_THREADS = max(2, min(8, os.cpu_count() or 2))
REMOTE_THREADS = 16


def threads_for(*ckpts: Checkpoint) -> int:
    """How many tensors to read at once from these checkpoints."""
    return REMOTE_THREADS if any(remote.handles(c.prefix) for c in ckpts) else LOCAL_THREADS


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``map(fn, items)`` on ``threads`` threads, yielding the results in the order of
    ``items``; at most ``2 * threads`` calls run or wait ahead of the one consumed, so memory
    stays bounded. Each call must be independent of the others (results are then exactly those
    of the plain loop). An exception reaches the caller at its item; the calls not started
    yet are cancelled."""
    items = iter(items)
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="tpuckpt-read") as pool:
        window: collections.deque = collections.deque()
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= 2 * threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


# Bytes of shard per unit of work (whole blocks of one tensor, or several small tensors).
# Also the default chunk of :func:`reused_chunks`.
UNIT_BYTES = 2 << 20


def tensor_chunks(ckpt: Checkpoint, key: str, chunk_bytes: int | None = None,
                  threshold_bytes: int | None = None) -> Iterator[np.ndarray]:
    """The tensor ``key`` as flat chunks, in order, read once.

    With ``threshold_bytes`` None (the default), every tensor that can be streamed comes from
    its data shard, checksummed, whatever its size (faster than TensorFlow's reader, and
    bounded in memory); the rest through TensorFlow's reader. With a threshold, tensors up to
    that size are read whole by TensorFlow's reader, as :meth:`Checkpoint.chunks` does.
    Chunk boundaries are the same either way, so the statistics are too.
    """
    chunk_bytes = chunk_bytes or ckpt.settings.chunk_bytes
    if threshold_bytes is None:
        plan = ckpt.plan(key)
        if plan.streamable:
            return shards.iter_chunks(plan, chunk_bytes)
    return ckpt.chunks(key, chunk_bytes=chunk_bytes, threshold_bytes=threshold_bytes)


def reused_chunks(ckpt: Checkpoint, key: str, slot: str,
                  chunk_bytes: int | None = None) -> Iterator[np.ndarray]:
    """Like :func:`tensor_chunks`, but a streamed tensor is read into this thread's scratch
    buffer ``slot``: each chunk is valid only until the next one is asked for.

    For loops that reduce each chunk at once (the pairwise diff): reading into the same
    memory avoids a fresh allocation per chunk, whose page faults measured a third of the
    read time. Checksummed as every streamed read is.
    """
    chunk_bytes = chunk_bytes or min(ckpt.settings.chunk_bytes, UNIT_BYTES)
    plan = ckpt.plan(key)
    if not plan.streamable:
        return ckpt.chunks(key, chunk_bytes=chunk_bytes)
    step = max(1, min(chunk_bytes, plan.nbytes))
    return shards.iter_chunks(plan, chunk_bytes, buffer=scratch_buffer(slot, step, np.uint8))


def pair_chunks(ckpt_a: Checkpoint, key_a: str, ckpt_b: Checkpoint, key_b: str,
                chunk_bytes: int | None = None) -> Iterator[tuple]:
    """Equal-length chunks of two tensors of the same shape and dtype, side by side, each
    read once (valid until the next pair is asked for)."""
    if ckpt_a.plan(key_a).streamable and ckpt_b.plan(key_b).streamable:
        a = reused_chunks(ckpt_a, key_a, "pair_a", chunk_bytes)
        b = reused_chunks(ckpt_b, key_b, "pair_b", chunk_bytes)
        # The same dtype and size on both sides: the chunks line up one to one.
        for ca, cb in zip(a, b, strict=True):
            yield ca, cb
        return
    a = tensor_chunks(ckpt_a, key_a, chunk_bytes)
    b = tensor_chunks(ckpt_b, key_b, chunk_bytes)
    ia, ib = iter(a), iter(b)
    ca = cb = None
    while True:
        while ca is None or ca.size == 0:
            ca = next(ia, None)
            if ca is None:
                return
        while cb is None or cb.size == 0:
            cb = next(ib, None)
            if cb is None:
                return
        n = min(ca.size, cb.size)
        yield ca[:n], cb[:n]
        ca, cb = ca[n:], cb[n:]
