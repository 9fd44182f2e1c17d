"""Read a TensorFlow V2 checkpoint bundle index (``PREFIX.index``) without TensorFlow's reader.

The index is a LevelDB-format table: a 48-byte footer points (via varint BlockHandles) at an
index block whose values point at data blocks; each block holds prefix-compressed entries, a
restart array and a 5-byte trailer (compression type + masked crc32c). The value under the key
"" is a ``BundleHeaderProto``; every other key maps to a ``BundleEntryProto``.

Why not just ``tf.train.load_checkpoint``: TensorFlow's reader only reads whole tensors, so a
multi-GB tensor needs multi-GB of memory. With the entry's shard, offset and size we stream
the bytes in bounded chunks and still verify TensorFlow's own checksum.

The protos are decoded with the project's own definitions (:mod:`tpuckpt_viz.checkpoint.protos`)
and the bytes read through :mod:`tpuckpt_viz.checkpoint.storage`: listing and streaming a
local bundle imports no TensorFlow.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import google_crc32c

from tpuckpt_viz.checkpoint import protos, shards, storage, table
from tpuckpt_viz.checkpoint.shards import Entry, Range, ReadPlan
from tpuckpt_viz.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np

    from tpuckpt_viz.checkpoint.protos import BundleEntryProto, BundleHeaderProto

# DataType enum value -> tf.dtypes name, indexed by value (types.proto; values never change).
_NAMES = (
    "invalid float32 float64 int32 uint8 int16 int8 string complex64 int64 bool qint8 quint8 "
    "qint32 bfloat16 qint16 quint16 uint16 complex128 float16 resource variant uint32 uint64 "
    "float8_e5m2 float8_e4m3fn float8_e4m3fnuz float8_e4m3b11fnuz float8_e5m2fnuz int4 uint4 "
    "int2 uint2 float4_e2m1fn"
).split()
# Only types whose bytes in a bundle are exactly numel * itemsize little-endian values, with
# their item sizes. Sub-byte types (int4, float4...) and quantized ones are left to
# TensorFlow's reader. Plain numbers, so that listing an index needs no numpy.
_ITEMSIZE = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 8: 8, 9: 8, 10: 1, 14: 2, 17: 2, 18: 16,
             19: 2, 22: 4, 23: 8, 24: 1, 25: 1, 26: 1, 27: 1, 28: 1}
ITEMSIZE_BY_NAME = {_NAMES[k]: v for k, v in _ITEMSIZE.items()}


@functools.lru_cache(maxsize=None)
def _numpy_dtypes() -> dict:
    """DataType enum value -> numpy dtype (numpy and ml_dtypes imported on the first read)."""
    import ml_dtypes
    import numpy as np

    table = {
        1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
        8: np.complex64, 9: np.int64, 10: np.bool_, 14: ml_dtypes.bfloat16, 17: np.uint16,
        18: np.complex128, 19: np.float16, 22: np.uint32, 23: np.uint64,
        24: ml_dtypes.float8_e5m2, 25: ml_dtypes.float8_e4m3fn, 26: ml_dtypes.float8_e4m3fnuz,
        27: ml_dtypes.float8_e4m3b11fnuz, 28: ml_dtypes.float8_e5m2fnuz,
    }
    return {k: np.dtype(v) for k, v in table.items()}


@dataclass
class BundleIndex:
    """A parsed ``PREFIX.index``: its header and one entry per variable, in file (sorted) order.

    ``entries`` leaves out the header key "" and the binary keys of saved slices (they start
    with ``\\x00``); a partitioned variable's full entry keeps its ``slices`` field.
    """

    prefix: str
    header: BundleHeaderProto
    entries: dict[str, BundleEntryProto]
    # key -> its listing (shape, dtype name, elements, bytes), filled by :func:`validate`:
    # protobuf access is the cost of listing 20,000 entries, so each proto is read once.
    listing: dict[str, Entry] = field(default_factory=dict)
    # key -> why the entry cannot be read (its bytes lie past the end of its shard).
    unreadable: dict[str, str] = field(default_factory=dict)


def data_path(prefix: str, shard_id: int, num_shards: int) -> str:
    """The data shard file that holds ``shard_id`` of ``num_shards``."""
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


def numpy_dtype(dtype_enum: int) -> np.dtype | None:
    """The numpy dtype for a DataType enum value, or None where bytes are not plain values."""
    return _numpy_dtypes().get(int(dtype_enum) % 100)  # +100 marks TF1 reference types


def dtype_name(dtype_enum: int) -> str:
    """The ``tf.dtypes`` style name of a DataType enum value ("float32", "bfloat16", ...)."""
    value = int(dtype_enum)
    base, ref = (value - 100, "_ref") if value > 100 else (value, "")
    if 0 < base < len(_NAMES):
        return _NAMES[base] + ref
    return f"dtype_{value}"  # newer than this table; still something printable


# Memoized: a listing asks for the same few dtype numbers 20,000 times.
_memo_dtype_name = functools.lru_cache(maxsize=None)(dtype_name)


def _numel(entry) -> int:
    return math.prod(int(d.size) for d in entry.shape.dim)


def can_stream(entry) -> bool:
    """True where the entry's bytes are plain values that :func:`iter_chunks` can stream."""
    dt = numpy_dtype(entry.dtype)
    return not entry.slices and dt is not None and entry.size == _numel(entry) * dt.itemsize


class Unsupported(UserError):
    """An index this reader does not know how to read (a block compression other than snappy),
    though it is not damaged: :class:`tpuckpt_viz.checkpoint.reader.Checkpoint` then lets
    TensorFlow's reader try. Every other error from :func:`read_index` means the index is
    damaged or hostile, and nothing is handed to TensorFlow."""


# Sanity limits for index validation. TensorFlow's TensorShape allows 254 dimensions but
# aborts on element counts past int64; numpy takes 64. Shard file names have 5 digits.
MAX_RANK = 64
MAX_SHARDS = 99999
_MAX_NUMEL = 1 << 62


def read_index(prefix: str) -> BundleIndex:
    """Parse ``PREFIX.index`` (any filesystem :mod:`storage` reads), checking every block's
    crc32c, then every entry (:func:`validate`): a damaged index is a :class:`UserError`."""
    from google.protobuf.message import DecodeError

    name = f"{prefix}.index"
    try:
        data = storage.read_all(name)
    except storage.NotFound:
        raise UserError(f"no {name}: pass the checkpoint prefix, e.g. .../model.ckpt-1000") from None
    pb = protos

    bad = f"{name} is not a valid checkpoint index (truncated or corrupt): "
    slices = []
    try:
        header = None
        entries: dict = {}
        for key, value in table.read_table(data):
            if not key:
                header = pb.BundleHeaderProto.FromString(value)
            elif key[0] != 0:  # slice keys are binary and start with \x00
                entries[key.decode("utf-8", "surrogateescape")] = pb.BundleEntryProto.FromString(value)
            else:  # a saved slice of a partitioned variable: not listed, still checked
                slices.append((key.decode("utf-8", "backslashreplace"),
                               pb.BundleEntryProto.FromString(value)))
        if header is None:
            raise ValueError("no header entry")
    except table.UnknownCompression as e:
        raise Unsupported(f"{name} uses {e}, unknown here: it is read through TensorFlow's "
                          "reader instead") from None
    except (ValueError, IndexError, struct.error, DecodeError) as e:
        raise UserError(bad + str(e)) from None
    index = BundleIndex(prefix=prefix, header=header, entries=entries)
    validate(index, slices)
    return index


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _entry_problem(entry, dims: tuple, num_shards: int) -> str | None:
    """What is wrong with one entry (whose shape is ``dims``), or None."""
    value = entry.dtype
    base = value - 100 if value > 100 else value
    if not 0 < base < len(_NAMES):
        return f"unknown dtype number {value}"
    numel = 1
    if dims:
        if len(dims) > MAX_RANK:
            return f"its shape has {len(dims)} dimensions (at most {MAX_RANK} make sense)"
        if min(dims) < 0:
            return f"its shape {_shape_text(dims)} has a negative dimension"
        for d in dims:
            numel *= d
            if numel > _MAX_NUMEL:
                return f"its shape {_shape_text(dims)} holds more elements than any file can"
    elif entry.shape.unknown_rank:
        return "its shape has an unknown rank"
    shard, offset, size = entry.shard_id, entry.offset, entry.size
    if not 0 <= shard < num_shards:
        return f"shard number {shard} but the checkpoint has {num_shards} shard(s)"
    if offset < 0 or size < 0:
        return f"offset {offset} and size {size} (both must be at least 0)"
    itemsize = _ITEMSIZE.get(base)
    slices = entry.slices
    if itemsize is not None and not slices and size != numel * itemsize:
        return (f"size {size} bytes but shape {_shape_text(dims)} {dtype_name(value)} needs "
                f"{numel * itemsize}")
    for piece in slices:
        extents = list(piece.extent)
        if len(extents) != len(dims):
            return f"a slice of rank {len(extents)} in a tensor of rank {len(dims)}"
        for ext, dim in zip(extents, dims):
            start = int(ext.start)
            length = int(ext.length) if ext.HasField("length") else dim - start
            if start < 0 or length < 0 or start + length > dim:
                return f"a slice [{start}, +{length}) outside a dimension of {dim}"
    return None


def validate(index: BundleIndex, extra: list | None = None) -> None:
    """Check the header and every entry before anything reads them: a known dtype, a shape of
    sane rank with no negative dimension, a byte size equal to elements x item size for plain
    numeric types, a shard number below the shard count, offset and size not negative, and a
    data shard that is a regular file. ``extra`` are (name, entry) pairs checked the same way
    (the saved slices of partitioned variables).

    Raises :class:`UserError` naming the first bad entry and what is wrong. Entries that fail
    here must never reach TensorFlow's C++ reader, which aborts the process on them.

    An entry whose bytes lie past the end of its shard (a truncated copy, or a damaged
    offset) does not fail the listing: like a tensor whose shard is missing, it is recorded in
    ``index.unreadable`` and every read of it is refused (:func:`check_readable`), by this
    reader and before TensorFlow's.
    """
    name = f"{index.prefix}.index"
    damaged = "the checkpoint is damaged; re-copy it"
    num_shards = int(index.header.num_shards)
    if not 0 < num_shards <= MAX_SHARDS:
        raise UserError(f"corrupt {name}: its header says {num_shards} data shards (1 to "
                        f"{MAX_SHARDS} make sense): {damaged}")
    if int(index.header.endianness) not in (0, 1):
        raise UserError(f"corrupt {name}: unknown byte order {index.header.endianness}: "
                        f"{damaged}")
    # Each data shard's size, once (a missing shard is left to the read that needs it; a FIFO,
    # a folder or a device in its place is an error now).
    items = list(index.entries.items()) + list(extra or ())
    shard_sizes: dict[int, int] = {}
    for shard in {entry.shard_id for _, entry in items}:
        if 0 <= shard < num_shards:
            try:
                shard_sizes[shard] = storage.size(data_path(index.prefix, shard, num_shards))
            except storage.NotFound:
                pass
    listing, listed = index.listing, len(index.entries)  # ``extra`` slices are not listed
    itemsizes, prod, name_of = _ITEMSIZE, math.prod, _memo_dtype_name
    for i, (key, entry) in enumerate(items):
        dims = tuple([d.size for d in entry.shape.dim])
        dtype, shard, offset, size = entry.dtype, entry.shard_id, entry.offset, entry.size
        itemsize = itemsizes.get(dtype)
        numel = prod(dims)
        # The fast path, for the common sound entry (a plain numeric tensor of one piece);
        # anything else gets every check (:func:`_entry_problem`) and its exact reason.
        if not (itemsize and 0 <= shard < num_shards and offset >= 0
                and len(dims) <= MAX_RANK and (not dims or min(dims) >= 0)
                and size == numel * itemsize <= _MAX_NUMEL and not entry.slices
                and (dims or not entry.shape.unknown_rank)):
            problem = _entry_problem(entry, dims, num_shards)
            if problem:
                raise UserError(f"corrupt entry {_shown(key)!r} in {name}: {problem}: {damaged}")
        if i < listed:
            # Bytes: elements x item size where the type has one (a sliced variable stores
            # none of its own); the stored size for strings and other variable-size types.
            listing[key] = Entry(key, dims, name_of(dtype), numel,
                                 numel * itemsize if itemsize else size)
        end = shard_sizes.get(shard)
        if end is not None and offset + size > end:
            # The rest of the entry is sound, so the checkpoint still lists (as one whose
            # shard is missing does); reading this entry is refused (:func:`check_readable`).
            path = data_path(index.prefix, shard, num_shards)
            index.unreadable[key] = (
                f"corrupt entry {_shown(key)!r} in {name}: bytes {offset} to "
                f"{offset + size} but {path} holds only {end} bytes: the shard is "
                "truncated or the index damaged; re-copy the checkpoint")


def _shown(key: str) -> str:
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_readable(index: BundleIndex, key: str) -> None:
    """Raise :class:`UserError` if the entry ``key`` (or a saved slice of it) lies past the end
    of its data shard: such an entry is never read, by this reader or TensorFlow's."""
    problem = index.unreadable.get(key)
    if problem is None and index.unreadable:
        entry = index.entries.get(key)
        if entry is not None and entry.slices:  # a partitioned variable: any of its slices
            problem = next((m for k, m in index.unreadable.items()
                            if k.startswith("\x00") and key in k), None)
    if problem:
        raise UserError(problem)


def plan(index: BundleIndex, key: str) -> ReadPlan:
    """The read plan of ``key``: its byte range in its data shard and crc32c where it can be
    streamed (see :func:`can_stream`), else a plan without ranges (read it whole through
    TensorFlow's reader)."""
    entry = index.entries.get(key)
    if entry is None:
        raise UserError(f"no tensor {key!r} in {index.prefix}.index: list the checkpoint to see its keys")
    check_readable(index, key)
    shape = tuple(int(d.size) for d in entry.shape.dim)
    if not can_stream(entry):
        return ReadPlan(key, shape)
    dt = numpy_dtype(entry.dtype)
    if index.header.endianness == 1:  # BIG: a bundle written on a big-endian host
        dt = dt.newbyteorder(">")
    path = data_path(index.prefix, entry.shard_id, index.header.num_shards)
    return ReadPlan(key, shape, dt, (Range(path, int(entry.offset), int(entry.size)),),
                    int(entry.crc32c))


def _streamable(index: BundleIndex, key: str) -> ReadPlan:
    p = plan(index, key)
    if not p.streamable:
        entry = index.entries[key]
        raise UserError(f"{key} ({dtype_name(entry.dtype)}{', sliced' if entry.slices else ''}) "
                        "cannot be streamed: read it through TensorFlow's reader")
    return p


def iter_chunks(index: BundleIndex, key: str, chunk_bytes: int = 8 << 20) -> Iterator[np.ndarray]:
    """Yield the tensor ``key`` as flat 1-D arrays of at most ``chunk_bytes`` each, in order.

    Reads straight from the data shard, so memory stays bounded whatever the tensor's size;
    the arrays are read-only views of the bytes read, in the stored byte order. An unknown
    key, a tensor that cannot be streamed (see :func:`can_stream`) or a missing shard raise
    :class:`UserError` at the call; a short shard while streaming; a checksum mismatch after
    the last chunk, so keep results only once the iterator is exhausted
    (:func:`tpuckpt_viz.checkpoint.shards.iter_chunks`).
    """
    return shards.iter_chunks(_streamable(index, key), chunk_bytes)


def read_tensor(index: BundleIndex, key: str) -> np.ndarray:
    """The whole tensor ``key`` in its shape (a convenience over :func:`iter_chunks`)."""
    import numpy as np

    p = _streamable(index, key)
    chunks = iter_chunks(index, key)
    # Fill one preallocated array: concatenating chunks would hold the tensor twice.
    out = np.empty(p.numel, dtype=p.dtype)
    pos = 0
    for chunk in chunks:
        out[pos : pos + chunk.size] = chunk
        pos += chunk.size
    return out.reshape(p.shape)


def read_strings(index: BundleIndex, key: str) -> list[bytes] | None:
    """The elements of a string tensor (flat, in order), read from its data shard.

    TensorFlow stores a string tensor as the varint64 length of each element, a 4-byte
    masked crc32c of those lengths, then the bytes; the entry's crc32c runs over each length
    as a little-endian uint32 (uint64 past 4 GiB), the masked length checksum, then the bytes
    (tensor_bundle.cc WriteStringTensor). Reading it here spares TensorFlow's reader (and
    importing TensorFlow) for the object graph and other strings. Returns None, for the caller
    to fall back to TensorFlow's reader, when the entry is not a plain string tensor or
    anything does not check out.
    """
    entry = index.entries.get(key)
    if (entry is None or entry.dtype != 7 or entry.slices or index.header.endianness != 0
            or key in index.unreadable):
        return None
    listed = index.listing.get(key)
    numel = listed.numel if listed else math.prod(d.size for d in entry.shape.dim)
    path = data_path(index.prefix, entry.shard_id, index.header.num_shards)
    try:
        with shards.open_shard(path) as f:
            raw = shards.read_exact(f, int(entry.offset), int(entry.size), key)
    except UserError:  # a missing or unreadable shard: TensorFlow's reader says which
        return None
    lengths, pos = [], 0
    crc = 0
    try:
        for _ in range(numel):
            length, pos = table.varint(raw, pos)
            lengths.append(length)
            crc = google_crc32c.extend(crc, struct.pack("<I" if length <= 0xFFFFFFFF else "<Q",
                                                        length))
    except ValueError:
        return None
    if pos + 4 + sum(lengths) != len(raw):
        return None
    # The stored length checksum is the masked crc32c of the lengths so far.
    if table.mask(crc) != int.from_bytes(raw[pos:pos + 4], "little"):
        return None
    crc = google_crc32c.extend(crc, raw[pos:pos + 4])
    pos += 4
    crc = google_crc32c.extend(crc, raw[pos:])
    if table.mask(crc) != entry.crc32c:
        return None
    out = []
    for length in lengths:
        out.append(raw[pos:pos + length])
        pos += length
    return out


def read_scalar_string(index: BundleIndex, key: str) -> bytes | None:
    """The bytes of a scalar string tensor (the object graph), or None as
    :func:`read_strings` returns it."""
    entry = index.entries.get(key)
    if entry is None or len(entry.shape.dim) != 0:
        return None
    strings = read_strings(index, key)
    return strings[0] if strings else None
