"""Streaming statistics and histograms: the one engine behind stats, diff, steps and Browse.

Reading (:func:`iter_stats`): plain numeric tensors of a V2 bundle are read straight from the
data shard whatever their size, with ``os.preadv`` into reused buffers (fresh buffers cost a
page fault per 4 KB: a third of the read time), and checked against their crc32c; that is 3
times as fast as ``CheckpointReader.get_tensor`` for the same bytes. Strings, partitioned
variables and V1 files go through TensorFlow's reader. Worker threads (as many as cores, 2 at
least) each read and reduce a unit of a few MB (blocks of a large tensor, or small tensors
that lie side by side in the shard) while the caller merges results and checks checksums in
order: reads, checksums and numpy's loops release the GIL, so both cores work when they are
free; memory stays bounded by the units in flight.

See :mod:`tpuckpt_viz.engine.reductions` for how a block is reduced and :mod:`tpuckpt_viz.engine.chunks` for
reading one tensor (or two side by side) as chunks.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from tpuckpt_viz.checkpoint.reader import Checkpoint
from tpuckpt_viz.checkpoint import shards, storage
from tpuckpt_viz.engine.chunks import UNIT_BYTES
from tpuckpt_viz.errors import UserError

# Re-exported for the tests, which import them from here.
from tpuckpt_viz.engine.reductions import (  # noqa: F401
    BLOCK,
    HISTOGRAM_SAMPLE,
    NONE_STATS,
    Accumulator,
    PairAccumulator,
    block_stats,
    is_numeric,
    new_accumulator,
    widen_block,
)

# progress(tensors_done, tensors_total, label, bytes_done): the CLI's stderr line and the
# dashboard's progress bar both take this.
Progress = Callable[[int, int, str, int], None]


def _string_record(ckpt: Checkpoint, key: str, raw=None) -> dict:
    entry = ckpt.entries[key]
    if raw is None:
        ckpt.read_raw(key)  # still check that it reads
    return {"key": key, "dtype": entry.dtype, "numel": entry.numel, **NONE_STATS,
            "zeros": None, "nan": 0, "inf": 0}


def _record(ckpt: Checkpoint, key: str, acc: Accumulator, keep_sample: bool) -> dict:
    entry = ckpt.entries[key]
    record = {"key": key, "dtype": entry.dtype, "numel": entry.numel}
    record.update(acc.result())
    if keep_sample:
        record["sample"] = acc.sampled()
        record["sampled_of"] = acc.finite
    return record


# ------------------------------------------------------------------------------ engine

@dataclass
class _Piece:
    """Part of one tensor inside a unit of work: ``nbytes`` at ``start`` of the unit's bytes,
    beginning at element ``first`` of the tensor (a multiple of BLOCK)."""

    index: int
    key: str
    dtype: np.dtype
    start: int
    nbytes: int
    first: int
    last: bool


@dataclass
class _Unit:
    """One unit of work for a worker thread: a byte range of a data shard holding pieces of
    one or several tensors, or a tensor that TensorFlow's reader must read ("tf"), or a
    string tensor ("string"), or a key to check ("check")."""

    kind: str
    pieces: list
    path: str = ""
    offset: int = 0
    nbytes: int = 0


_executor = None
_executor_lock = threading.Lock()
# Worker threads: each reads a unit (os.pread releases the GIL) and reduces it (numpy
# releases the GIL), so every core computes; results are merged in order by the caller.
WORKERS = max(2, min(8, os.cpu_count() or 2))


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="tpuckpt-stats")
        return _executor


# Bytes of other data a unit may read past to take in the next small tensor of the shard.
_GAP = 64 << 10


def _plan(ckpt: Checkpoint, keys: list[str], unit_bytes: int, threshold_bytes: int | None,
          files: shards.Shards, plans: dict) -> Iterator[_Unit]:
    """Units of work for ``keys``: first those read whole through the checkpoint, then the
    data shards front to back (the order on disk, not the keys': ``tf.train.Checkpoint``
    writes a variable's slots far from it). Small tensors close together in a shard share a
    unit (one read); large ones are cut at block boundaries. Fills ``plans`` (index -> the
    tensor's :class:`ReadPlan`) for the checksums."""
    on_disk = []
    for i, key in enumerate(keys):
        entry = ckpt.entries.get(key)
        if entry is None:
            kind = "check"
        elif not is_numeric(entry.dtype):
            kind = "string"
        else:
            plan = ckpt.plan(key) if threshold_bytes is None else None
            # One contiguous range per tensor is cut into units; anything else is read in turn.
            if plan is not None and len(plan.ranges) == 1:
                plans[i] = plan
                r = plan.ranges[0]
                on_disk.append((r.path, r.offset, i, key, plan))
                continue
            kind = "tf"
        yield _Unit(kind, [_Piece(i, key, None, 0, 0, 0, True)])
    on_disk.sort(key=lambda t: t[:3])
    pending: _Unit | None = None
    for path, offset, i, key, plan in on_disk:
        dt = plan.dtype
        files.get(path)  # opened once; a missing shard is a UserError here
        size = plan.ranges[0].nbytes
        if pending is not None and pending.path == path:
            start = offset - pending.offset
            if (0 <= start - pending.nbytes <= _GAP and start + size <= unit_bytes):
                pending.pieces.append(_Piece(i, key, dt, start, size, 0, True))
                pending.nbytes = start + size
                continue
        if pending is not None:
            yield pending
            pending = None
        step = max(1, unit_bytes // (BLOCK * dt.itemsize)) * BLOCK * dt.itemsize
        done = 0
        while True:
            n = min(step, size - done)
            unit = _Unit("shard", [_Piece(i, key, dt, 0, n, done // dt.itemsize,
                                          done + n >= size)], path, offset + done, n)
            done += n
            if done >= size:
                pending = unit  # the tail may share its read with the next small tensors
                break
            yield unit
    if pending is not None:
        yield pending


def _read(unit: _Unit, files: shards.Shards, buf: np.ndarray):
    """The unit's bytes, read into ``buf`` (reused across units)."""
    view = buf[:unit.nbytes]
    f = files.get(unit.path)
    if storage.read_into(f, unit.offset, view) < unit.nbytes:
        got = storage.read_into(f, unit.offset, view)
        key = next((p.key for p in unit.pieces if p.start + p.nbytes > got), unit.pieces[0].key)
        raise UserError(shards.short_read_message(key, unit.path))
    return view


def _work(ckpt: Checkpoint, unit: _Unit, files: shards.Shards, buf: np.ndarray, sample_every: dict,
          chunk_bytes, threshold_bytes) -> tuple:
    """Run in a worker: read the unit and reduce each of its pieces to block partials.

    Returns the unit's bytes and, per piece, ``(partials, crc)``: the crc32c of a piece that
    is a whole tensor is taken here (in parallel); pieces of larger tensors are left to the
    caller, who extends their crc in order.
    """
    import google_crc32c

    piece = unit.pieces[0]
    if unit.kind == "check":
        ckpt._check(piece.key)
    if unit.kind == "string":
        ckpt.read_raw(piece.key)  # still check that it reads
        return None, [(None, None)]
    if unit.kind == "tf":
        acc = Accumulator(sample_every=sample_every.get(piece.index, 0))
        for chunk in ckpt.chunks(piece.key, chunk_bytes=chunk_bytes,
                                 threshold_bytes=threshold_bytes):
            acc.add(chunk)
        acc.flush()
        return None, [(acc, None)]
    data = _read(unit, files, buf)
    out = []
    for piece in unit.pieces:
        raw = np.frombuffer(data, piece.dtype, piece.nbytes // piece.dtype.itemsize, piece.start)
        k = sample_every.get(piece.index, 0)
        parts = []
        for b in range(0, raw.size, BLOCK):
            first = piece.first + b
            block = raw[b:b + BLOCK]
            parts.append(block_stats(widen_block(block), k, (-first) % k if k else 0, block))
        crc = None
        if piece.first == 0 and piece.last:
            crc = google_crc32c.value(np.frombuffer(data, np.uint8, piece.nbytes, piece.start))
        out.append((parts, crc))
    return data, out


def iter_stats(ckpt: Checkpoint, keys: Iterable[str], *, progress: Progress | None = None,
               keep_sample: bool = False, chunk_bytes: int | None = None,
               threshold_bytes: int | None = None,
               labels: dict[str, str] | None = None, cluster=None) -> Iterator[dict]:
    """Statistics of each tensor in ``keys``, in order (see :func:`tensor_stats`).

    Each tensor is read once. The data shards are read front to back in units of a few MB
    (whole blocks of a large tensor, or small tensors close together) that worker threads
    read and reduce, a few units ahead; this thread merges each tensor's partial results in
    order, checks its crc32c and yields the records in the order of ``keys``. Memory stays
    bounded by the units in flight whatever the tensor sizes. ``progress(done, total, label,
    bytes_done)`` is called as each record is ready and about every quarter second in
    between; ``labels`` maps keys to the label shown. ``chunk_bytes`` sets the unit size (the
    numbers do not depend on it); see :func:`tensor_chunks` for ``threshold_bytes``. An error
    (a missing shard, a checksum) is raised in its tensor's turn. With ``cluster`` (a
    :class:`tpuckpt_viz.engine.cluster.Cluster`), tensors that its workers can read are read
    there, with the same results.
    """
    if cluster is not None and threshold_bytes is None and chunk_bytes is None:
        from tpuckpt_viz.engine import cluster as dask_engine

        def in_process(key: str) -> dict:
            return tensor_stats(ckpt, key, keep_sample=keep_sample)

        yield from dask_engine.iter_stats(cluster, ckpt, list(keys), record=_record,
                                          in_process=in_process, progress=progress,
                                          keep_sample=keep_sample, labels=labels)
        return
    import google_crc32c

    keys = list(keys)
    total = len(keys)
    # Settings once, here: the loop below and the workers get plain numbers.
    unit_bytes = chunk_bytes or min(ckpt.settings.chunk_bytes, UNIT_BYTES)
    chunk_bytes = chunk_bytes or ckpt.settings.chunk_bytes
    sample_every = {}
    if keep_sample:
        for i, key in enumerate(keys):
            entry = ckpt.entries.get(key)
            if entry is not None:
                sample_every[i] = max(1, -(-entry.numel // HISTOGRAM_SAMPLE))
    files = shards.Shards()
    plans: dict = {}
    pool = _pool()
    inflight: deque = deque()
    units = _plan(ckpt, keys, unit_bytes, threshold_bytes, files, plans)
    window = WORKERS + 2
    # Read buffers, reused: each unit in flight holds one until its results are merged.
    buffers = [None] * window
    free = list(range(window))
    # Tensors finish in the order of the shard; records go out in the order of ``keys``.
    partial: dict[int, list] = {}  # index -> [Accumulator, crc]
    ready: dict[int, object] = {}  # index -> record, or the error to raise in its turn
    following = 0
    done_bytes = merged_bytes = 0
    last = time.monotonic()

    def label(i: int) -> str:
        return labels.get(keys[i], keys[i]) if labels else keys[i]

    def finish(unit: _Unit, data, piece: _Piece, result, piece_crc) -> None:
        nonlocal merged_bytes
        key, i = piece.key, piece.index
        if i in ready:  # an earlier unit of this tensor failed
            return
        if unit.kind == "string":
            ready[i] = _string_record(ckpt, key, raw=True)
            return
        if unit.kind == "tf":
            ready[i] = _record(ckpt, key, result, keep_sample)
            return
        state = partial.get(i)
        if state is None:
            state = partial[i] = [Accumulator(sample_every=sample_every.get(i, 0)), 0]
        acc = state[0]
        if piece_crc is None:
            state[1] = google_crc32c.extend(state[1], np.frombuffer(
                data, np.uint8, piece.nbytes, piece.start))
        else:
            state[1] = piece_crc
        for part in result:
            acc.merge(part)
        merged_bytes += piece.nbytes
        if not piece.last:
            return
        del partial[i]
        try:
            shards.check_crc(plans.pop(i), state[1])
            ready[i] = _record(ckpt, key, acc, keep_sample)
        except UserError as exc:
            ready[i] = exc

    if progress and total:
        progress(0, total, label(0), 0)
    try:
        exhausted = False
        while True:
            while not exhausted and len(inflight) < window:
                unit = next(units, None)
                if unit is None:
                    exhausted = True
                    break
                slot = free.pop()
                if unit.kind == "shard" and (buffers[slot] is None
                                             or buffers[slot].size < unit.nbytes):
                    buffers[slot] = np.empty(max(unit.nbytes, unit_bytes), np.uint8)
                inflight.append((unit, slot, pool.submit(
                    _work, ckpt, unit, files, buffers[slot], sample_every, chunk_bytes,
                    threshold_bytes)))
            if not inflight:
                break
            unit, slot, future = inflight.popleft()
            try:
                data, results = future.result()
            except UserError as exc:  # raised in its turn, after the records before it
                data, results = None, None
                for piece in unit.pieces:
                    partial.pop(piece.index, None)
                    ready.setdefault(piece.index, exc)
            free.append(slot)
            for piece, (result, piece_crc) in zip(unit.pieces, results or ()):
                finish(unit, data, piece, result, piece_crc)
            while following in ready:
                record = ready.pop(following)
                if isinstance(record, BaseException):
                    raise record
                done_bytes += ckpt.entries[keys[following]].nbytes
                following += 1
                yield record
                if progress and following < total:
                    progress(following, total, label(following), done_bytes)
                    last = time.monotonic()
            if progress and time.monotonic() - last > 0.25:
                progress(following, total, label(min(following, total - 1)),
                         max(done_bytes, merged_bytes))
                last = time.monotonic()
    finally:
        for _, _, future in inflight:
            future.cancel()
        wait([f for _, _, f in inflight])
        files.close()
    if progress:
        progress(total, total, "done", done_bytes)


def tensor_stats(ckpt: Checkpoint, key: str, *, keep_sample: bool = False,
                 chunk_bytes: int | None = None, threshold_bytes: int | None = None) -> dict:
    """Statistics of one tensor per the ``stats`` contract (key, name-less fields).

    Returns the record fields ``key``, ``dtype``, ``numel``, ``min``, ``max``, ``mean``,
    ``std``, ``l2``, ``zeros``, ``nan``, ``inf``, and with ``keep_sample`` also ``sample``
    (the finite values among every k-th element, k chosen so that about
    :data:`HISTOGRAM_SAMPLE` remain) and ``sampled_of`` (how many finite values there were).
    String tensors get None statistics. See :func:`iter_stats`.
    """
    records = iter_stats(ckpt, [key], keep_sample=keep_sample, chunk_bytes=chunk_bytes,
                         threshold_bytes=threshold_bytes)
    try:
        return next(records)
    finally:
        records.close()


def histogram(values: np.ndarray, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of the finite ``values`` (an empty histogram when none)."""
    values = values[np.isfinite(values)] if values.size else values
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.histogram(values, bins=bins)
