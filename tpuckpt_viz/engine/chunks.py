"""Tensors as flat chunks, in order, each read once: one tensor, or two side by side.

Local shards of a V2 bundle are read with ``os.preadv`` and checked against their crc32c;
other filesystems, strings, partitioned variables and V1 files go through
:mod:`tpuckpt_viz.checkpoint.bundle` or TensorFlow's reader.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from tpuckpt_viz import config
from tpuckpt_viz.checkpoint.reader import Checkpoint
from tpuckpt_viz.engine.reductions import scratch_buffer

# Bytes of shard per unit of work (whole blocks of one tensor, or several small tensors).
# Also the default chunk of :func:`reused_chunks`.
UNIT_BYTES = 2 << 20


def open_shard(path: str):
    """A file descriptor for a local shard (shared by the workers through pread), or None
    for other filesystems (read through tf.io.gfile)."""
    from tpuckpt_viz.checkpoint import bundle, storage, table
    from tpuckpt_viz.errors import UserError

    local = storage.local_path(path)
    if local is None:
        from tpuckpt_viz.tfcompat import tf

        if not tf().io.gfile.exists(path):
            raise UserError(f"missing data file {path}: copy every .data-* shard next to the "
                            ".index")
        return None
    try:
        return os.open(local, os.O_RDONLY)
    except FileNotFoundError:
        raise UserError(f"missing data file {path}: copy every .data-* shard next to the "
                        ".index") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def tensor_chunks(ckpt: Checkpoint, key: str, chunk_bytes: int | None = None,
                  threshold_bytes: int | None = None) -> Iterator[np.ndarray]:
    """The tensor ``key`` as flat chunks, in order, read once.

    With ``threshold_bytes`` None (the default), every tensor that can be streamed comes from
    its data shard, checksummed, whatever its size (faster than TensorFlow's reader, and
    bounded in memory); the rest through TensorFlow's reader. With a threshold, tensors up to
    that size are read whole by TensorFlow's reader, as :meth:`Checkpoint.chunks` does.
    Chunk boundaries are the same either way, so the statistics are too.
    """
    if threshold_bytes is None and ckpt.streamable(key):
        from tpuckpt_viz.checkpoint import bundle, storage, table

        # bundle checks the shard itself (a missing shard is a UserError that says so).
        chunk_bytes = chunk_bytes or config.get_int("chunk_mb") << 20
        return bundle.iter_chunks(ckpt.index, key, chunk_bytes)
    return ckpt.chunks(key, chunk_bytes=chunk_bytes, threshold_bytes=threshold_bytes)


def reused_chunks(ckpt: Checkpoint, key: str, slot: str,
                  chunk_bytes: int | None = None) -> Iterator[np.ndarray]:
    """Like :func:`tensor_chunks`, but a local shard is read into this thread's scratch
    buffer ``slot``: each chunk is valid only until the next one is asked for.

    For loops that reduce each chunk at once (the pairwise diff): reading into the same
    memory avoids a fresh allocation per chunk, whose page faults measured a third of the
    read time. Checksummed as :func:`tpuckpt_viz.checkpoint.bundle.iter_chunks` does.
    """
    from tpuckpt_viz.checkpoint import bundle, storage, table
    from tpuckpt_viz.errors import UserError

    chunk_bytes = chunk_bytes or min(config.get_int("chunk_mb") << 20, UNIT_BYTES)
    if not ckpt.streamable(key):
        yield from ckpt.chunks(key, chunk_bytes=chunk_bytes)
        return
    index = ckpt.index
    proto = index.entries[key]
    path = bundle.data_path(index.prefix, proto.shard_id, index.header.num_shards)
    if storage.local_path(path) is None:
        yield from bundle.iter_chunks(index, key, chunk_bytes)
        return
    import google_crc32c

    dt = bundle.numpy_dtype(proto.dtype)
    if index.header.endianness == 1:
        dt = dt.newbyteorder(">")
    size, offset = int(proto.size), int(proto.offset)
    step = max(dt.itemsize, chunk_bytes // dt.itemsize * dt.itemsize)
    fd = open_shard(path)
    try:
        buf = scratch_buffer(slot, max(1, min(step, size)), np.uint8)
        crc = done = 0
        while done < size:
            n = min(step, size - done)
            view = buf[:n]
            got = 0
            while got < n:
                r = os.preadv(fd, [view[got:]], offset + done + got)
                if not r:
                    raise UserError(f"data for {key} in {path} ends early: the shard is "
                                    "truncated; copy it again")
                got += r
            crc = google_crc32c.extend(crc, view)
            done += n
            yield view.view(dt)
    finally:
        os.close(fd)
    if table.mask(crc) != proto.crc32c:
        raise UserError(f"data for {key} in {path} fails its checksum: the shard is corrupt; "
                        "copy it again from the source")


def pair_chunks(ckpt_a: Checkpoint, key_a: str, ckpt_b: Checkpoint, key_b: str,
                chunk_bytes: int | None = None) -> Iterator[tuple]:
    """Equal-length chunks of two tensors of the same shape and dtype, side by side, each
    read once (valid until the next pair is asked for)."""
    a = reused_chunks(ckpt_a, key_a, "pair_a", chunk_bytes)
    b = reused_chunks(ckpt_b, key_b, "pair_b", chunk_bytes)
    if ckpt_a.streamable(key_a) and ckpt_b.streamable(key_b):
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
