"""Read plans and the one shard reader.

The checkpoint layer describes how to read each tensor with a format-neutral
:class:`ReadPlan`: which byte ranges of which file make the tensor, how to check them
(crc32c), its dtype and shape; or that it must be read whole through the checkpoint (strings,
partitioned variables, V1 files, dtypes whose bytes are not plain values). The engine consumes
plans and reads their bytes through this module only: :class:`Shards` opens each file once
(through :mod:`tpuckpt_viz.checkpoint.storage`), :func:`read_exact` and :func:`read_exact_into`
read a range and name a short read, :func:`check_crc` names a checksum mismatch, and
:func:`iter_chunks` streams a whole plan in bounded chunks.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, NamedTuple

import google_crc32c

from tpuckpt_viz import config
from tpuckpt_viz.checkpoint import storage
from tpuckpt_viz.checkpoint.table import mask
from tpuckpt_viz.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np


@dataclass(frozen=True)
class Range:
    """``nbytes`` bytes at ``offset`` of the file ``path``."""

    path: str
    offset: int
    nbytes: int


class Entry(NamedTuple):
    """One checkpoint entry (of a bundle, or a Keras file's dataset) as
    ``tf.train.list_variables`` sees it, plus its byte size.

    A named tuple (immutable, and built 20,000 times a listing at a third of a frozen
    dataclass's cost)."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    nbytes: int


@dataclass(frozen=True)
class ReadPlan:
    """How to read the tensor ``key``.

    ``ranges`` in order make the tensor's bytes: ``numel`` values of ``dtype`` (a numpy dtype,
    byte order included), C order. ``crc32c`` is the masked crc32c (TensorFlow's, as LevelDB
    masks it) of those bytes in order, or None where the format keeps no checksum. An empty
    ``ranges`` means the tensor cannot be streamed: read it whole through the checkpoint.
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype | None = None
    ranges: tuple[Range, ...] = ()
    crc32c: int | None = None

    @property
    def streamable(self) -> bool:
        return bool(self.ranges)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.ranges)


@dataclass(frozen=True)
class ReadSettings:
    """The read settings, read once when a checkpoint is opened and passed down from there:
    ``chunk_bytes`` (``chunk_mb``), the size of one streamed chunk, and ``slice_bytes``
    (``slice_mb``), above which :meth:`Checkpoint.read` and :meth:`Checkpoint.chunks` stream a
    tensor from its shard instead of asking TensorFlow's reader."""

    chunk_bytes: int
    slice_bytes: int

    @classmethod
    def from_config(cls) -> ReadSettings:
        return cls(config.get_int("chunk_mb") << 20, config.get_int("slice_mb") << 20)


def missing_message(path: str) -> str:
    return f"missing data file {path}: copy every .data-* shard next to the .index"


def open_shard(path: str) -> storage.Input:
    """Open one data file; a missing one is a :class:`UserError` that says what to copy."""
    try:
        return storage.open_input(path)
    except storage.NotFound:
        raise UserError(missing_message(path)) from None


class Shards:
    """The data files a read opens, each opened once and shared by threads; close when done
    (or use ``with``)."""

    def __init__(self):
        self._files: dict[str, storage.Input] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> storage.Input:
        with self._lock:
            f = self._files.get(path)
            if f is None:
                f = self._files[path] = open_shard(path)
            return f

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()

    def __enter__(self) -> Shards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def short_read_message(key: str, path: str) -> str:
    return f"data for {key} in {path} ends early: the shard is truncated; copy it again"


def read_exact_into(f: storage.Input, offset: int, buf, key: str) -> None:
    """Fill ``buf`` from ``offset`` of ``f``; a short file is a :class:`UserError`."""
    if storage.read_into(f, offset, buf) < len(memoryview(buf).cast("B")):
        raise UserError(short_read_message(key, f.path))


def read_exact(f: storage.Input, offset: int, nbytes: int, key: str) -> bytes:
    """``nbytes`` bytes at ``offset`` of ``f``; a short file is a :class:`UserError`."""
    data = storage.read_range(f, offset, nbytes)
    if len(data) < nbytes:
        raise UserError(short_read_message(key, f.path))
    return data


def check_crc(plan: ReadPlan, crc: int) -> None:
    """Raise a :class:`UserError` unless ``crc`` (unmasked crc32c of the plan's bytes, in
    order) matches the plan's checksum."""
    if plan.crc32c is not None and mask(crc) != plan.crc32c:
        where = plan.ranges[0].path if plan.ranges else "its file"
        raise UserError(f"data for {plan.key} in {where} fails its checksum: the shard is "
                        "corrupt; copy it again from the source")


def iter_chunks(plan: ReadPlan, chunk_bytes: int, shards: Shards | None = None,
                buffer: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The plan's values as flat 1-D arrays of at most ``chunk_bytes`` each, in order.

    The files are opened at the call (a missing one raises :class:`UserError` here); a short
    file while streaming; a checksum mismatch after the last chunk, so keep results only
    once the iterator is exhausted. With ``buffer`` (a ``uint8`` array), every chunk is read
    into it and is valid only until the next one is asked for; else each chunk is a fresh
    read-only array. ``shards`` shares open files with the caller (else they are closed at
    the end).
    """
    if not plan.streamable:
        raise UserError(f"{plan.key} cannot be streamed: read it through the checkpoint")
    own = shards is None
    shards = Shards() if own else shards
    try:
        files = [shards.get(r.path) for r in plan.ranges]
    except BaseException:
        if own:
            shards.close()
        raise
    return _stream(plan, files, chunk_bytes, shards if own else None, buffer)


def _stream(plan: ReadPlan, files: list, chunk_bytes: int, owned: Shards | None,
            buffer: np.ndarray | None) -> Iterator[np.ndarray]:
    import numpy as np  # here, not at the top: listing a checkpoint reads no tensor

    dt = plan.dtype
    step = max(dt.itemsize, chunk_bytes // dt.itemsize * dt.itemsize)  # whole items only
    if buffer is not None and buffer.size < min(step, max(plan.nbytes, 1)):
        raise ValueError("buffer smaller than one chunk")
    crc = 0
    try:
        for r, f in zip(plan.ranges, files):
            done = 0
            while done < r.nbytes:
                n = min(step, r.nbytes - done)
                # Into a fresh numpy array: numpy asks for huge pages on large allocations,
                # so a chunk costs a few page faults instead of one per 4 KB.
                arr = buffer[:n] if buffer is not None else np.empty(n, np.uint8)
                read_exact_into(f, r.offset + done, arr, plan.key)
                crc = google_crc32c.extend(crc, arr)
                done += n
                if buffer is None:
                    arr.flags.writeable = False
                yield arr.view(dt)
    finally:
        if owned is not None:
            owned.close()
    check_crc(plan, crc)
