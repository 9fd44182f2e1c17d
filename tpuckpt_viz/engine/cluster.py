"""The statistics engine on a Dask cluster: ``stats``, ``diff`` and ``steps`` across machines.

The units of work are byte ranges of one tensor each (:class:`TensorRange`: file, offset,
length, dtype), cut at block boundaries and grouped into tasks of about :data:`TASK_BYTES`.
Each worker reads its ranges straight from storage (a disk that every worker sees at the same
path), never through the client, and sends back only partial results: the block statistics of
:mod:`tpuckpt_viz.engine.reductions`, one pair part per chunk for a diff, the crc32c of the bytes.
The client merges them tensor by tensor in a fixed order (the order of the tensor's blocks), so
the numbers are bit for bit those of the in-process engine, whichever worker did what and in
whatever order the tasks finished; it checks each tensor's checksum by combining the ranges'
crc32c values (:func:`crc32c_combine`).

What goes to the cluster: tensors whose read plan (:meth:`Checkpoint.plan`) is one byte
range of a file the workers can open themselves, on a disk they share or on gs:// (read
through :mod:`tpuckpt_viz.checkpoint.storage`): plain numeric tensors of V2 bundles, and the
contiguous, uncompressed datasets of Keras HDF5 files (``.weights.h5``, ``.h5``, and a
``.keras`` archive's stored weights member), in either byte order; those have no checksum,
so the workers compute none for them. Strings, sliced (partitioned) variables, V1 files,
chunked or compressed HDF5 datasets and ``ram://`` are read in-process, in their turn.

:func:`connect` gives a :class:`Cluster` for ``--scheduler ADDRESS`` (an existing scheduler) or
``--workers N`` (a local cluster of N processes, shut down with the command), else None.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tpuckpt_viz import config
from tpuckpt_viz.engine.reductions import (
    BLOCK,
    HISTOGRAM_SAMPLE,
    Accumulator,
    PairAccumulator,
    block_stats,
    delta_sumsq,
    is_numeric,
    pair_part,
    scratch_buffer,
    widen,
    widen_block,
)
from tpuckpt_viz.errors import UserError, first_line

# Bytes of checkpoint per task: large enough that Dask's cost per task (about a millisecond)
# stays small against the read and the reduction, small enough to spread a run over workers.
TASK_BYTES = 64 << 20
# How long to try to reach a scheduler before giving up.
CONNECT_TIMEOUT = "10s"
# Bytes a worker reads at a time for statistics (rounded to whole blocks).
READ_BYTES = 4 << 20
# Reads a worker keeps in flight on remote storage (gs://): each request waits 20-50 ms before
# its first byte, so one at a time caps a worker near READ_BYTES / latency. Local files are
# read one at a time, into reused memory.
REMOTE_READS = 8

# ------------------------------------------------------------------------------ crc32c


_POLY = 0x82F63B78  # crc32c (Castagnoli), reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the crc polynomial (reflected bit order)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^n) modulo the polynomial: x^1, x^2, x^4, ...
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32c_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """crc32c of ``A + B`` from the crc32c of A, of B and B's length (zlib's method).

    Lets the client check a tensor read in ranges by different workers without its bytes.
    """
    p, n, k = 1 << 31, length_b, 3  # x^(8 * length_b)
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc_a) ^ crc_b


# ------------------------------------------------------------------------------ plan


def _dtype_spec(dt: np.dtype) -> tuple[str, bool]:
    """A numpy dtype as ``(name, big_endian)``: ml_dtypes types (bfloat16, float8) lose their
    type when a dtype is pickled, their name does not."""
    return dt.name, dt.byteorder == ">"


def _from_spec(name: str, big_endian: bool) -> np.dtype:
    import ml_dtypes

    dt = np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)
    return dt.newbyteorder(">") if big_endian else dt


@dataclass(frozen=True)
class TensorRange:
    """Bytes of one tensor in one file: ``length`` bytes at ``offset`` of ``source`` (what a
    worker opens: an absolute local path or a gs:// URL; ``path`` is the one messages show),
    starting at element ``first`` of the tensor, whose dtype is ``dtype`` (see
    :func:`_dtype_spec`); ``checked``: whether the format keeps a checksum of these bytes
    (the worker then returns their crc32c, else 0)."""

    key: str
    path: str
    source: str
    offset: int
    length: int
    dtype: tuple[str, bool]
    first: int
    checked: bool = True

    def numpy_dtype(self) -> np.dtype:
        return _from_spec(*self.dtype)


def worker_source(path: str) -> str | None:
    """What a worker opens to read ``path``: the absolute path of a local file (the workers
    must see the same disk), the URL of a remote one they read themselves (gs://); None
    where only this process can read it (``ram://`` and other ``tf.io.gfile`` schemes)."""
    from tpuckpt_viz.checkpoint import remote, storage

    local = storage.local_path(path)
    if local is not None:
        return os.path.abspath(local)
    return path if remote.handles(path) else None


# Data files checked on this machine (once per process).
_seen_files: set = set()


def streamed(ckpt, key: str) -> bool:
    """Whether ``key`` has a read plan of byte ranges (formats without plans: no)."""
    return hasattr(ckpt, "plan") and ckpt.plan(key).streamable


def tensor_ranges(ckpt, key: str, align: int, task_bytes: int) -> list[TensorRange] | None:
    """The ranges of tensor ``key`` from its read plan (:meth:`Checkpoint.plan`), each a
    multiple of ``align`` bytes but the last and about ``task_bytes`` at most; None if the
    workers cannot read it (a plan without byte ranges or of several, or a file that only
    this process can read)."""
    from tpuckpt_viz.checkpoint import shards

    plan = ckpt.plan(key)
    if len(plan.ranges) != 1:
        return None
    r = plan.ranges[0]
    source = worker_source(r.path)
    if source is None:
        return None
    if r.path not in _seen_files:
        # Here first, with the in-process engine's message: a file that this machine has
        # and a worker lacks is the worker's problem (see _Files.read).
        shards.open_shard(r.path).close()
        _seen_files.add(r.path)
    itemsize = plan.dtype.itemsize
    per = max(align, task_bytes // align * align)
    spec = _dtype_spec(plan.dtype)
    checked = plan.crc32c is not None
    return [TensorRange(key, r.path, source, r.offset + done, min(per, r.nbytes - done), spec,
                        done // itemsize, checked)
            for done in range(0, r.nbytes, per)] or [
        TensorRange(key, r.path, source, r.offset, 0, spec, 0, checked)]


def _tasks(items: list[tuple], task_bytes: int) -> list[list]:
    """Group ``(slot, part, first_range, ...)`` items into tasks of about ``task_bytes``, in
    the order of the data on disk (small tensors side by side share a task)."""
    items = sorted(items, key=lambda t: (t[2].source, t[2].offset))
    tasks, current, size = [], [], 0
    for item in items:
        n = item[2].length + 4096  # a tiny tensor still costs a read
        if current and size + n > task_bytes:
            tasks.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        tasks.append(current)
    return tasks


# ------------------------------------------------------------------------------ workers


# Bytes of other data a worker may read past to take in the next small range of the same file
# with one request (as the in-process engine's units do): a request to gs:// costs tens of
# milliseconds before its first byte, whatever its size.
SPAN_GAP = 64 << 10


def _spans(ranges) -> dict[str, list[tuple[int, int]]]:
    """Runs of two or more small ranges close together in one file, each to be read with one
    request of at most :data:`READ_BYTES`: ``{source: [(start, end), ...]}`` in file order."""
    small = sorted({(r.source, r.offset, r.length) for r in ranges if 0 < r.length < READ_BYTES})
    out: dict[str, list[tuple[int, int]]] = {}
    run = None  # [source, start, end, count]
    for source, offset, length in small + [(None, 0, 0)]:
        if (run and run[0] == source and 0 <= offset - run[2] <= SPAN_GAP
                and offset + length - run[1] <= READ_BYTES):
            run[2] = offset + length
            run[3] += 1
            continue
        if run and run[3] > 1:
            out.setdefault(run[0], []).append((run[1], run[2]))
        run = [source, offset, offset + length, 1]
    return out


class _Files:
    """The files a task reads, each opened once (through
    :mod:`tpuckpt_viz.checkpoint.storage`) and closed at the end; small ranges close together
    (``ranges``, see :func:`_spans`) are read with one request per run."""

    def __init__(self, ranges=()):
        from tpuckpt_viz.checkpoint import remote

        self.open: dict = {}
        self.spans = _spans(ranges)
        self.loaded: dict[str, tuple[int, np.ndarray]] = {}  # source -> its current run
        self.lock = threading.Lock()  # the two dicts above, when reads run on threads
        self.threads = REMOTE_READS if any(remote.handles(r.source) for r in ranges) else 1

    def _file(self, r: TensorRange):
        from tpuckpt_viz.checkpoint import storage

        f = self.open.get(r.source)
        if f is None:
            try:
                f = self.open[r.source] = storage.open_input(r.source)
            except storage.NotFound:
                raise UserError(f"missing data file {r.path} on a Dask worker: every worker must "
                                "see the checkpoint at the same path (a shared disk, or gs://)") \
                    from None
        return f

    def _run(self, r: TensorRange, pos: int, n: int) -> np.ndarray | None:
        """Bytes ``pos .. pos + n`` of ``r``'s file from the run holding them (read once);
        None when no run holds them (or the file ends early: the plain read says so)."""
        import bisect

        from tpuckpt_viz.checkpoint import storage

        loaded = self.loaded.get(r.source)
        if loaded is None or not loaded[0] <= pos <= pos + n <= loaded[0] + loaded[1].size:
            runs = self.spans.get(r.source, ())
            i = bisect.bisect_right(runs, (pos, float("inf"))) - 1
            if i < 0 or not pos + n <= runs[i][1]:
                return None
            start, end = runs[i]
            data = np.empty(end - start, np.uint8)
            if storage.read_into(self._file(r), start, data) < data.size:
                return None
            loaded = self.loaded[r.source] = (start, data)
        return loaded[1][pos - loaded[0]:pos - loaded[0] + n]

    def read(self, r: TensorRange, at: int, n: int, slot: str) -> np.ndarray:
        """``n`` bytes at ``at`` of range ``r``, into this thread's buffer ``slot`` (valid until
        the next read into it)."""
        from tpuckpt_viz.checkpoint import shards, storage

        view = scratch_buffer("cluster_" + slot, max(n, 1), np.uint8)[:n]
        held = self._run(r, r.offset + at, n) if n else None
        if held is not None:
            view[:] = held
            return view
        if storage.read_into(self._file(r), r.offset + at, view) < n:
            raise UserError(shards.short_read_message(r.key, r.path))
        return view

    def fetch(self, r: TensorRange, at: int, n: int) -> np.ndarray:
        """Like :meth:`read`, into fresh memory: safe on several threads at once."""
        from tpuckpt_viz.checkpoint import shards, storage

        out = np.empty(n, np.uint8)
        if not n:
            return out
        with self.lock:
            held = self._run(r, r.offset + at, n)
            if held is not None:
                out[:] = held
                return out
            f = self._file(r)
        if storage.read_into(f, r.offset + at, out) < n:
            raise UserError(shards.short_read_message(r.key, r.path))
        return out

    def reads(self, requests: list[tuple]) -> Iterator[np.ndarray]:
        """The bytes of each ``(range, at, n, slot)`` request, in order: one at a time into
        reused memory (:meth:`read`), or, on remote storage, several in flight
        (:func:`tpuckpt_viz.engine.chunks.ordered_map`). The bytes, so the results, are the
        same either way."""
        if self.threads <= 1:
            for r, at, n, slot in requests:
                yield self.read(r, at, n, slot)
            return
        from tpuckpt_viz.engine.chunks import ordered_map

        yield from ordered_map(lambda q: self.fetch(q[0], q[1], q[2]), requests, self.threads)

    def close(self) -> None:
        for f in self.open.values():
            f.close()
        self.open.clear()
        self.loaded.clear()


def stats_task(items: list[tuple]) -> list[tuple]:
    """Run on a worker: per ``(slot, part, range, sample_every)`` item, the block statistics
    of the range (blocks counted from the tensor's start) and the crc32c of its bytes."""
    import google_crc32c

    files, out = _Files([item[2] for item in items]), []

    def step_of(r: TensorRange) -> int:
        itemsize = r.numpy_dtype().itemsize
        return max(1, READ_BYTES // (BLOCK * itemsize)) * BLOCK * itemsize

    requests = [(r, done, min(step_of(r), r.length - done), "a")
                for _slot, _part, r, _every in items
                for done in range(0, r.length, step_of(r))]
    views = files.reads(requests)
    try:
        for _slot, _part, r, every in items:
            dt = r.numpy_dtype()
            step = step_of(r)
            parts, crc = [], 0
            for done in range(0, r.length, step):
                view = next(views)
                if r.checked:
                    crc = google_crc32c.extend(crc, view)
                raw = view.view(dt)
                for b in range(0, raw.size, BLOCK):
                    first = r.first + done // dt.itemsize + b
                    block = raw[b:b + BLOCK]
                    parts.append(block_stats(widen_block(block), every,
                                             (-first) % every if every else 0, block))
            out.append((parts, crc))
    finally:
        views.close()  # reads still in flight finish before their files close
        files.close()
    return out


def pair_task(items: list[tuple], step: int, mode: str) -> list[tuple]:
    """Run on a worker: per ``(slot, part, range_a, range_b)`` item (the same elements of two
    tensors of one shape and dtype), chunk by chunk of ``step`` bytes as the in-process diff
    reads them: the :func:`pair_part` of each chunk (``mode`` "diff"), or ``||b - a||^2`` of
    each chunk and the block statistics of b (``mode`` "steps"); and both ranges' crc32c."""
    import google_crc32c

    files, out = _Files([r for item in items for r in item[2:4]]), []

    def span_of(rb: TensorRange) -> int:
        # Read whole chunks and whole blocks at a time (ranges start on both boundaries).
        return math.lcm(step, BLOCK * rb.numpy_dtype().itemsize)

    requests = [request for _slot, _part, ra, rb in items
                for done in range(0, ra.length, span_of(rb))
                for request in ((ra, done, min(span_of(rb), ra.length - done), "a"),
                                (rb, done, min(span_of(rb), ra.length - done), "b"))]
    views = files.reads(requests)
    try:
        for _slot, _part, ra, rb in items:
            da, db = ra.numpy_dtype(), rb.numpy_dtype()
            span = span_of(rb)
            chunks, blocks, crc_a, crc_b = [], [], 0, 0
            for done in range(0, ra.length, span):
                va, vb = next(views), next(views)
                if ra.checked:
                    crc_a = google_crc32c.extend(crc_a, va)
                if rb.checked:
                    crc_b = google_crc32c.extend(crc_b, vb)
                ca, cb = va.view(da), vb.view(db)
                per = step // da.itemsize
                for c in range(0, ca.size, per):
                    if mode == "diff":
                        chunks.append(pair_part(ca[c:c + per], cb[c:c + per]))
                    else:
                        chunks.append(delta_sumsq(widen(ca[c:c + per]), widen(cb[c:c + per])))
                if mode != "diff":
                    for b in range(0, cb.size, BLOCK):
                        block = cb[b:b + BLOCK]
                        blocks.append(block_stats(widen_block(block), 0, 0, block))
            out.append((chunks, blocks, crc_a, crc_b))
    finally:
        views.close()  # reads still in flight finish before their files close
        files.close()
    return out


# ------------------------------------------------------------------------------ client


def _worker_error(exc: BaseException, what: str) -> UserError:
    """The one-line error for a failure of the cluster itself (not of a checkpoint)."""
    name = type(exc).__name__
    if name == "KilledWorker":
        return UserError(f"Dask workers died while reading {what}: see the workers' logs "
                         "(memory?), or run without --scheduler/--workers")
    return UserError(f"the Dask cluster failed while reading {what}: {name}: {first_line(exc)}")


class Cluster:
    """A connection to a Dask scheduler (and the local cluster behind it, if we started one).

    ``task_bytes`` sets the size of a task (the numbers do not depend on it).
    """

    def __init__(self, client, local=None, task_bytes: int = TASK_BYTES,
                 scratch: str | None = None):
        self.client = client
        self.local = local
        self.task_bytes = task_bytes
        self.scratch = scratch  # the local workers' scratch folder, removed on close

    @property
    def address(self) -> str:
        return self.client.scheduler.address

    def close(self) -> None:
        """Close the connection, and shut the local cluster down (its processes end)."""
        try:
            self.client.close()
        finally:
            try:
                if self.local is not None:
                    self.local.close()
            finally:
                if self.scratch:
                    import shutil

                    shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, fn: Callable, tasks: list[list], *args,
            on_task: Callable[[int], None] | None = None) -> Iterator[tuple[int, tuple]]:
        """Submit ``fn(task, *args)`` for every task; yield ``(slot, results)`` per slot, in
        the order of slots, once all its parts are in (``results`` in part order).

        Items of a task are ``(slot, part, ...)``; every slot's parts 0..n-1 must be present.
        A task's error is raised as it comes; ``on_task(nbytes)`` is called per finished task.
        """
        need: dict[int, int] = {}
        for task in tasks:
            for item in task:
                need[item[0]] = need.get(item[0], 0) + 1
        # Submitted now, so the workers start while the caller does other work.
        futures = self.client.map(fn, tasks, *[[a] * len(tasks) for a in args], pure=False) \
            if tasks else []
        return self._collect(futures, tasks, need, on_task)

    def _collect(self, futures: list, tasks: list[list], need: dict,
                 on_task: Callable | None) -> Iterator[tuple[int, list]]:
        from distributed import as_completed

        got: dict[int, list] = {slot: [None] * n for slot, n in need.items()}
        order = sorted(need)
        which = {f.key: i for i, f in enumerate(futures)}
        following = 0
        try:
            for future, result in as_completed(futures, loop=self.client.loop,
                                               with_results=True):
                t = which[future.key]
                for item, res in zip(tasks[t], result):
                    got[item[0]][item[1]] = res
                    need[item[0]] -= 1
                futures[t] = None  # let the cluster forget it
                if on_task:
                    on_task(sum(item[2].length for item in tasks[t]))
                while following < len(order) and not need[order[following]]:
                    slot = order[following]
                    following += 1
                    yield slot, got.pop(slot)
        except UserError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("distributed") or isinstance(exc, OSError):
                raise _worker_error(exc, tasks[0][0][2].path) from None
            raise
        finally:
            pending = [f for f in futures if f is not None]
            if pending:
                self.client.cancel(pending)


def _check_crc(ckpt, key: str, ranges: list[TensorRange], crcs: list[int]) -> None:
    from tpuckpt_viz.checkpoint import shards

    if not ranges or not ranges[0].checked:  # no checksum in the format (Keras files)
        return
    crc = 0
    for r, c in zip(ranges, crcs):
        crc = crc32c_combine(crc, c, r.length)
    shards.check_crc(ckpt.plan(key), crc)


def _chunk_step(ckpt, itemsize: int) -> int:
    """The chunk of the in-process pairwise reads (as in
    :func:`tpuckpt_viz.engine.chunks.reused_chunks`)."""
    from tpuckpt_viz.engine.chunks import UNIT_BYTES

    chunk_bytes = min(ckpt.settings.chunk_bytes, UNIT_BYTES)
    return max(itemsize, chunk_bytes // itemsize * itemsize)


def iter_stats(cluster: Cluster, ckpt, keys: list[str], *, record: Callable,
               in_process: Callable, progress=None, keep_sample: bool = False,
               labels: dict | None = None) -> Iterator[dict]:
    """Statistics of each tensor of ``keys`` in order, as
    :func:`tpuckpt_viz.engine.stats.iter_stats` gives them: those a worker can read on the
    cluster, the rest in-process in their turn (``in_process(key)``);
    ``record(ckpt, key, acc, keep_sample)`` makes the record."""
    total = len(keys)
    plans, items = {}, []
    for i, key in enumerate(keys):
        entry = ckpt.entries.get(key)
        if entry is None or not is_numeric(entry.dtype) or not streamed(ckpt, key):
            continue
        ranges = tensor_ranges(ckpt, key, BLOCK * _itemsize(ckpt, key), cluster.task_bytes)
        if not ranges:
            continue
        every = max(1, -(-entry.numel // HISTOGRAM_SAMPLE)) if keep_sample else 0
        plans[i] = (ranges, every)
        items += [(i, j, r, every) for j, r in enumerate(ranges)]
    tasks = _tasks(items, cluster.task_bytes)
    state = {"bytes": 0, "done": 0}

    def label(i: int) -> str:
        return labels.get(keys[i], keys[i]) if labels else keys[i]

    def on_task(nbytes: int) -> None:
        state["bytes"] += nbytes
        if progress:
            done = state["done"]
            progress(done, total, label(min(done, total - 1)), state["bytes"])

    if progress and total:
        progress(0, total, label(0), 0)
    results = cluster.run(stats_task, tasks, on_task=on_task)
    try:
        for i, key in enumerate(keys):
            if i in plans:
                _, parts = next(results)
                ranges, every = plans[i]
                acc = Accumulator(sample_every=every)
                for blocks, _ in parts:
                    for block in blocks:
                        acc.merge(block)
                _check_crc(ckpt, key, ranges, [crc for _, crc in parts])
                rec = record(ckpt, key, acc, keep_sample)
            else:
                rec = in_process(key)
            state["done"] = i + 1
            yield rec
            if progress and i + 1 < total:
                progress(i + 1, total, label(i + 1), state["bytes"])
    finally:
        results.close()
    if progress:
        progress(total, total, "done", state["bytes"])


def _itemsize(ckpt, key: str) -> int:
    return ckpt.plan(key).dtype.itemsize


def _pair_items(ckpt_a, ckpt_b, pairs: list[tuple], task_bytes: int) -> tuple[dict, list]:
    """Ranges of each pair ``(slot, key_a, key_b)`` that workers can read: ``{slot: (ranges_a,
    ranges_b)}`` and the items for :func:`pair_task`."""
    plans, items = {}, []
    for slot, key_a, key_b in pairs:
        if not (streamed(ckpt_a, key_a) and streamed(ckpt_b, key_b)):
            continue
        itemsize = _itemsize(ckpt_b, key_b)
        align = math.lcm(_chunk_step(ckpt_a, itemsize), BLOCK * itemsize)
        ra = tensor_ranges(ckpt_a, key_a, align, task_bytes)
        rb = tensor_ranges(ckpt_b, key_b, align, task_bytes)
        if not ra or not rb or len(ra) != len(rb):
            continue
        plans[slot] = (ra, rb)
        items += [(slot, j, x, y) for j, (x, y) in enumerate(zip(ra, rb))]
    return plans, items


def compare_pairs(cluster: Cluster, ckpt_a, ckpt_b, pairs: list[tuple],
                  progress: Callable | None = None) -> dict:
    """:func:`tpuckpt_viz.engine.diff.compare_tensors` of each pair ``(slot, key_a, key_b)``
    (same shape and dtype) that the workers can read: ``{slot: result}``. The others are left
    to the caller. ``progress(done, total)`` counts finished pairs."""
    plans, items = _pair_items(ckpt_a, ckpt_b, pairs, cluster.task_bytes)
    if not plans:
        return {}
    step = {slot: _chunk_step(ckpt_a, _itemsize(ckpt_b, plans[slot][1][0].key))
            for slot in plans}
    out = {}
    # One step per dtype width: the task function takes one step, so group by it.
    for width in sorted(set(step.values())):
        tasks = _tasks([it for it in items if step[it[0]] == width], cluster.task_bytes)
        for slot, parts in cluster.run(pair_task, tasks, width, "diff"):
            ra, rb = plans[slot]
            acc = PairAccumulator()
            for chunks, _, _, _ in parts:
                for part in chunks:
                    acc.merge(part)
            _check_crc(ckpt_a, ra[0].key, ra, [p[2] for p in parts])
            _check_crc(ckpt_b, rb[0].key, rb, [p[3] for p in parts])
            out[slot] = acc.result()
            if progress:
                progress(len(out), len(plans))
    return out


def transitions(cluster: Cluster, prev, curr, pairs: list[tuple]) -> dict:
    """For ``steps``: per ``(slot, prev_key or None, curr_key)``, the statistics of the current
    tensor (an :class:`Accumulator`) and ``||curr - prev||^2`` (0.0 without a previous one),
    as the in-process loop computes them: ``{slot: (acc, delta_sq)}`` for the tensors the
    workers can read; the others are left to the caller."""
    paired = [(s, p, c) for s, p, c in pairs if p is not None]
    plans, items = _pair_items(prev, curr, paired, cluster.task_bytes) if paired else ({}, [])
    alone, alone_items = {}, []
    for slot, p, key in pairs:
        if p is None:
            ranges = tensor_ranges(curr, key, BLOCK * _itemsize(curr, key), cluster.task_bytes) \
                if streamed(curr, key) else None
            if ranges:
                alone[slot] = ranges
                alone_items += [(slot, j, r, 0) for j, r in enumerate(ranges)]
    out = {}
    for slot, parts in cluster.run(stats_task, _tasks(alone_items, cluster.task_bytes)):
        acc = Accumulator()
        for blocks, _ in parts:
            for block in blocks:
                acc.merge(block)
        _check_crc(curr, alone[slot][0].key, alone[slot], [crc for _, crc in parts])
        out[slot] = (acc, 0.0)
    steps = {slot: _chunk_step(prev, _itemsize(curr, plans[slot][1][0].key)) for slot in plans}
    for width in sorted(set(steps.values())):
        tasks = _tasks([it for it in items if steps[it[0]] == width], cluster.task_bytes)
        for slot, parts in cluster.run(pair_task, tasks, width, "steps"):
            ra, rb = plans[slot]
            acc, delta_sq = Accumulator(), 0.0
            for chunks, blocks, _, _ in parts:
                for value in chunks:
                    delta_sq += value
                for block in blocks:
                    acc.merge(block)
            _check_crc(prev, ra[0].key, ra, [p[2] for p in parts])
            _check_crc(curr, rb[0].key, rb, [p[3] for p in parts])
            out[slot] = (acc, delta_sq)
    return out


# ------------------------------------------------------------------------------ connecting


def _quiet() -> None:
    # Dask logs a worker's restart and the like as warnings on stderr: the CLI promises one
    # line per error, and says itself what went wrong.
    for name in ("distributed", "distributed.client", "distributed.nanny",
                 "distributed.scheduler", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)


def open_cluster(scheduler: str | None = None, workers: int | None = None,
                 task_bytes: int = TASK_BYTES) -> Cluster | None:
    """A :class:`Cluster` on the scheduler at ``scheduler`` (``tcp://host:8786``), or on a
    local cluster of ``workers`` processes started here; None when neither is given (the
    in-process engine). Close it (or use it as a context manager) when done."""
    if scheduler and workers:
        raise UserError("give either --scheduler (an existing Dask cluster) or --workers N "
                        "(a local one), not both")
    if not scheduler and not workers:
        return None
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers}: give a number of worker processes, 1 or more")
    try:
        import dask
        import distributed
    except ImportError:
        raise UserError("Dask is not installed: pip install 'dask[distributed]' (see "
                        "requirements.txt)") from None
    _quiet()
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT,
                                        set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {first_line(exc)}; "
                            "start one (`dask scheduler`, then `dask worker ADDRESS` on each "
                            "machine) or use --workers N") from None
        try:  # tasks would wait for ever on a scheduler without workers
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            client.close()
            raise UserError(f"the Dask scheduler at {scheduler} has no workers: start some "
                            f"(`dask worker {scheduler}` on each machine) or use --workers N") \
                from None
        return Cluster(client, task_bytes=task_bytes)
    import shutil
    import tempfile

    # Dask's workers keep a scratch folder (spilled data, locks): ours, removed on close,
    # rather than a dask-scratch-space left behind in the temporary folder.
    scratch = tempfile.mkdtemp(prefix="tpuckpt-dask-")
    try:
        with dask.config.set({"temporary-directory": scratch}):  # the scheduler's, too
            local = distributed.LocalCluster(
                n_workers=workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                local_directory=scratch,
                dashboard_address=None, silence_logs=logging.CRITICAL,
                # No dashboard; the scheduler's small HTTP server (health, metrics) on a free
                # port of the loopback, not 8787 (where a user's own cluster may be).
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        client = distributed.Client(local, set_as_default=False)
    except BaseException:
        local.close()
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return Cluster(client, local, task_bytes, scratch)


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[Cluster | None]:
    """:func:`open_cluster` from the flags, else from the settings ``TPUCKPT_SCHEDULER`` and
    ``TPUCKPT_WORKERS``; closed (and a local cluster shut down) on leaving."""
    if not scheduler and not workers:
        scheduler, workers = _from_settings()
    cluster = open_cluster(scheduler, workers)
    try:
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()


def _from_settings() -> tuple[str | None, int | None]:
    workers = config.value("workers") if config.get("workers").strip() else None
    return config.get("scheduler").strip() or None, workers


_shared: dict = {}
_shared_lock = threading.Lock()


def configured() -> Cluster | None:
    """The process's cluster from the settings (for the dashboard): opened on first use, kept
    for the life of the process, and closed when it exits; None when neither setting is set."""
    scheduler, workers = _from_settings()
    if not scheduler and not workers:
        return None
    with _shared_lock:
        key = (scheduler, workers)
        if key not in _shared:
            cluster = open_cluster(scheduler, workers)
            _shared[key] = cluster
            atexit.register(cluster.close)
        return _shared[key]
