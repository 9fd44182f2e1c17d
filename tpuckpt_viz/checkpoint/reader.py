"""Open a checkpoint: its entries, dtypes and tensor reads (whole, or streamed in chunks).

TensorFlow's ``CheckpointReader`` is the reference for what a checkpoint holds and reads every
ordinary tensor. It cannot read part of a tensor, so tensors larger than the slice threshold
are streamed straight from their data shard (:meth:`Checkpoint.plan` says how, and
:mod:`tpuckpt_viz.checkpoint.shards` reads it: a few MB at a time, checksummed). Sliced (partitioned) variables and string tensors always go through
TensorFlow's reader.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Iterator

from tpuckpt_viz import sandbox
from tpuckpt_viz.checkpoint import bundle, remote, shards, storage
from tpuckpt_viz.checkpoint.objectgraph import OBJECT_GRAPH_KEY, ObjectGraphInfo, parse
from tpuckpt_viz.checkpoint.paths import Resolved, resolve_checkpoint
from tpuckpt_viz.checkpoint.shards import Entry, ReadPlan, ReadSettings
from tpuckpt_viz.errors import UserError, first_line
from tpuckpt_viz.tfcompat import tf

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np


def _itemsize(dtype: str) -> int:
    """Bytes per element of a dtype name; 0 where the stored size is the truth (strings,
    sub-byte and quantized types)."""
    return bundle.ITEMSIZE_BY_NAME.get(dtype, 0)


def _printable_key(key: str) -> str:
    """A key that every output can print: invalid UTF-8 bytes (which the index reader keeps as
    surrogate escapes) become ``\\xNN`` text. Valid keys come back unchanged."""
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def bundle_numpy_dtype(name: str):
    """numpy dtype for a TensorFlow dtype name (``bfloat16`` included); TypeError for strings."""
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    if name in ("string", "resource", "variant"):
        raise TypeError(name)
    import numpy as np

    return np.dtype(name)


class Checkpoint:
    """A checkpoint opened for reading. Safe to share between threads (dashboard sessions)."""

    def __init__(self, resolved: Resolved, path: str | None = None,
                 settings: ReadSettings | None = None):
        self.resolved = resolved
        self.settings = settings or ReadSettings.from_config()
        self.path = path or resolved.prefix
        self.prefix = resolved.prefix
        self.format = resolved.format
        self._lock = threading.Lock()
        self._tf_reader = None
        self.index = None
        self._tf_keys: dict[str, bytes] = {}  # printable key -> the bytes TensorFlow knows
        if resolved.format == "v2":
            # Our own index reader gives offsets for streaming and is strict about corruption;
            # TensorFlow's reader stays the reference for reading whole tensors.
            try:
                self.index = bundle.read_index(resolved.prefix)
            except bundle.Unsupported:
                # Our reader refuses what it does not know (a compressed table, say): if
                # TensorFlow opens the bundle, list and read through it instead. A damaged
                # or hostile index (any other UserError) never reaches TensorFlow.
                try:
                    self.tf_reader()
                except UserError:
                    pass
                if self._tf_reader is None:
                    raise
            if self.index is not None:
                self._printable_index_keys()
        self.entries = self._list_entries()

    # -- listing ---------------------------------------------------------------------------
    def _printable_index_keys(self) -> None:
        """Key the index by printable keys, so that tables, JSON and pages can show them;
        reads hand TensorFlow the original bytes."""
        entries = self.index.entries
        if all(_printable_key(k) == k for k in entries):
            return
        renamed, listing = {}, {}
        for key, proto in entries.items():
            shown = _printable_key(key)
            if shown != key:
                self._tf_keys[shown] = key.encode("utf-8", "surrogateescape")
            renamed[shown] = proto
            if key in self.index.listing:
                listing[shown] = self.index.listing[key]._replace(key=shown)
        entries.clear()
        entries.update(renamed)
        self.index.listing.clear()
        self.index.listing.update(listing)

    def _list_entries(self) -> dict[str, Entry]:
        # Per-entry work stays in plain Python (math.prod, memoized dtype lookups): numpy
        # calls per entry cost more than the whole index read on 20,000-variable checkpoints.
        if self.index is not None:  # listed by the validation, in the same pass
            return dict(self.index.listing)
        reader = self.tf_reader()
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
        entries = {}
        for key in sorted(shapes):
            shape = tuple(int(d) for d in shapes[key])
            dtype = dtypes[key].name
            numel = math.prod(shape)
            entries[key] = Entry(key, shape, dtype, numel, numel * _itemsize(dtype))
        return entries

    def tf_reader(self):
        """TensorFlow's ``CheckpointReader`` for the exact prefix (created once)."""
        with self._lock:
            if self._tf_reader is None:
                try:  # in the worker process: a crash in TensorFlow's reader ends only it
                    self._tf_reader = sandbox.CheckpointReader(self.prefix)
                except Exception as exc:
                    raise UserError(f"TensorFlow cannot open {self.prefix}: {first_line(exc)}")
            return self._tf_reader

    @cached_property
    def object_graph(self) -> ObjectGraphInfo:
        """Names and slot links from the object graph (empty for name-based checkpoints)."""
        if OBJECT_GRAPH_KEY not in self.entries:
            return ObjectGraphInfo()
        try:
            # Straight from the data shard when it checks out: listing then needs no
            # TensorFlow reader at all.
            raw = (bundle.read_scalar_string(self.index, OBJECT_GRAPH_KEY)
                   if self.index is not None else None)
            return parse(raw if raw is not None else self.read_raw(OBJECT_GRAPH_KEY))
        except Exception:
            # A damaged graph, or a data shard that is missing or truncated: fall back to raw
            # keys rather than fail the listing (reading a tensor then names the problem).
            return ObjectGraphInfo()

    @cached_property
    def signature(self) -> tuple:
        """What identifies this checkpoint's content for caches: the index file's size and
        modification time, or its content hash where the filesystem keeps no time (ram://)."""
        index_file = self.prefix + ".index" if self.format == "v2" else self.prefix
        local = storage.local_path(index_file)
        if local is not None:
            try:
                st = os.stat(local)
                return (index_file, st.st_size, st.st_mtime_ns)
            except OSError:
                pass
        elif remote.handles(index_file):  # gs://: from the folder's (cached) listing
            return (index_file, storage.size(index_file), remote.mtime_ns(index_file))
        else:
            gfile = tf().io.gfile
            try:
                stat = gfile.stat(index_file)
                if stat.mtime_nsec:
                    return (index_file, stat.length, stat.mtime_nsec)
            except Exception:  # no stat on this filesystem: hash instead
                pass
        import hashlib

        return (index_file, hashlib.sha256(storage.read_all(index_file)).hexdigest())

    # -- reading ---------------------------------------------------------------------------
    def _missing_shard(self, key: str) -> str | None:
        if self.index is None or key not in self.index.entries:
            return None
        entry = self.index.entries[key]
        path = bundle.data_path(self.prefix, entry.shard_id, self.index.header.num_shards)
        return None if storage.exists(path) else path

    def _check(self, key: str) -> Entry:
        if key not in self.entries:
            raise UserError(f"no variable {key!r} in {self.prefix}: run `list` to see the keys")
        if self.index is not None and key in self.index.entries:
            bundle.check_readable(self.index, key)  # never handed to any reader
        missing = self._missing_shard(key)
        if missing:
            raise UserError(f"cannot read {key}: missing data file {missing}: copy every "
                            ".data-* shard next to the .index file")
        return self.entries[key]

    def read_raw(self, key: str):
        """The tensor as TensorFlow's reader returns it (bytes for a scalar string)."""
        self._check(key)
        if self.streamable(key):  # plain numbers: our own reader; TensorFlow's for the rest
            return bundle.read_tensor(self.index, key)
        if self.index is not None and key in self.index.entries:
            strings = bundle.read_strings(self.index, key)
            if strings is not None:  # as TensorFlow returns them: bytes, or an object array
                shape = self.entries[key].shape
                if not shape:
                    return strings[0]
                import numpy as np

                return np.array(strings, object).reshape(shape)
        reader = self.tf_reader()
        try:
            with self._lock:  # BundleReader keeps per-reader state: one read at a time
                return reader.get_tensor(self._tf_keys.get(key, key))
        except Exception as exc:
            raise UserError(f"cannot read {key} from {self.prefix}: {first_line(exc)}")

    def plan(self, key: str) -> ReadPlan:
        """How to read ``key`` (:class:`tpuckpt_viz.checkpoint.shards.ReadPlan`): its byte
        range, dtype and checksum where it can be streamed from its data shard (plain,
        unsliced, numeric), else a plan without ranges: read it whole (:meth:`read_raw`)."""
        entry = self._check(key)
        if self.index is not None and key in self.index.entries:
            return bundle.plan(self.index, key)
        return ReadPlan(key, entry.shape)

    def streamable(self, key: str) -> bool:
        """Whether ``key`` can be streamed from its data shard (plain, unsliced, numeric)."""
        return (self.index is not None and key in self.index.entries
                and bundle.can_stream(self.index.entries[key]))

    def read(self, key: str) -> np.ndarray:
        """The whole tensor as a numpy array (bfloat16 as ``ml_dtypes.bfloat16``)."""
        import numpy as np  # imported by the first read: a listing needs none

        entry = self._check(key)
        plan = self.plan(key)
        # gs:// and other fsspec URLs: every streamable tensor in one ranged request of its
        # own bytes; TensorFlow's reader would fetch through its own client (64 MB blocks).
        if plan.streamable and (entry.nbytes > self.settings.slice_bytes
                                or remote.handles(self.prefix)):
            out = np.empty(plan.numel, plan.dtype)  # one array: chunks are copied in
            pos = 0
            for chunk in shards.iter_chunks(plan, self.settings.chunk_bytes):
                out[pos:pos + chunk.size] = chunk
                pos += chunk.size
            return out.reshape(entry.shape)
        return np.asarray(self.read_raw(key))

    def chunks(self, key: str, chunk_bytes: int | None = None,
               threshold_bytes: int | None = None) -> Iterator[np.ndarray]:
        """Yield the tensor as flat 1-D arrays, in order.

        Tensors above ``threshold_bytes`` (default: the ``slice_mb`` setting) that can be
        streamed come from the data shard ``chunk_bytes`` (default: ``chunk_mb``) at a time;
        the rest are read whole and yielded as slices of ``chunk_bytes``, so callers see one
        shape of data either way.
        """
        import numpy as np  # imported by the first read: a listing needs none

        entry = self._check(key)
        chunk_bytes = chunk_bytes or self.settings.chunk_bytes
        threshold = self.settings.slice_bytes if threshold_bytes is None else threshold_bytes
        plan = self.plan(key)
        if plan.streamable and (entry.nbytes > threshold or remote.handles(self.prefix)):
            yield from shards.iter_chunks(plan, chunk_bytes)
            return
        yield from whole_chunks(np.asarray(self.read_raw(key)), chunk_bytes)


def whole_chunks(array: np.ndarray, chunk_bytes: int) -> Iterator[np.ndarray]:
    """A tensor read whole, as flat slices of about ``chunk_bytes`` (one empty one when empty)."""
    flat = array.reshape(-1)
    step = max(1, chunk_bytes // max(flat.itemsize, 1))
    for start in range(0, flat.size, step):
        yield flat[start:start + step]
    if flat.size == 0:
        yield flat


def open_checkpoint(path: str) -> Checkpoint:
    """Resolve ``path`` (see :mod:`tpuckpt_viz.checkpoint.paths`) and open the checkpoint it names
    (a Keras file opens as a :class:`tpuckpt_viz.checkpoint.keras.KerasCheckpoint`, which has
    the same interface)."""
    resolved = resolve_checkpoint(path)
    if resolved.format == "keras":
        from tpuckpt_viz.checkpoint.keras import open_keras

        ckpt = open_keras(resolved.prefix, path)
        ckpt.resolved = resolved
        return ckpt
    return Checkpoint(resolved, path)
