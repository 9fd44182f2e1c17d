"""Read a TensorFlow V2 checkpoint bundle index (``PREFIX.index``) without TensorFlow's reader.

The index is a LevelDB-format table: a 48-byte footer points (via varint BlockHandles) at an
index block whose values point at data blocks; each block holds prefix-compressed entries, a
restart array and a 5-byte trailer (compression type + masked crc32c). The value under the key
"" is a ``BundleHeaderProto``; every other key maps to a ``BundleEntryProto``.

Why not just ``tf.train.load_checkpoint``: TensorFlow's reader only reads whole tensors, so a
multi-GB tensor needs multi-GB of memory. With the entry's shard, offset and size we stream
the bytes in bounded chunks and still verify TensorFlow's own checksum.

The ``tensorflow.core...`` proto modules import all of TensorFlow (their parent package's
``__init__``), so they, like ``tf.io.gfile``, are imported lazily inside functions.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import google_crc32c
import ml_dtypes
import numpy as np

from tpuckpt_viz.checkpoint import shards, storage, table
from tpuckpt_viz.checkpoint.shards import Range, ReadPlan
from tpuckpt_viz.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from tensorflow.core.protobuf.tensor_bundle_pb2 import BundleEntryProto, BundleHeaderProto

# DataType enum value -> tf.dtypes name, indexed by value (types.proto; values never change).
_NAMES = (
    "invalid float32 float64 int32 uint8 int16 int8 string complex64 int64 bool qint8 quint8 "
    "qint32 bfloat16 qint16 quint16 uint16 complex128 float16 resource variant uint32 uint64 "
    "float8_e5m2 float8_e4m3fn float8_e4m3fnuz float8_e4m3b11fnuz float8_e5m2fnuz int4 uint4 "
    "int2 uint2 float4_e2m1fn"
).split()
# Only types whose bytes in a bundle are exactly numel * itemsize little-endian values.
# Sub-byte types (int4, float4...) and quantized ones are left to TensorFlow's reader.
_NUMPY = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
    8: np.complex64, 9: np.int64, 10: np.bool_, 14: ml_dtypes.bfloat16, 17: np.uint16,
    18: np.complex128, 19: np.float16, 22: np.uint32, 23: np.uint64,
    24: ml_dtypes.float8_e5m2, 25: ml_dtypes.float8_e4m3fn, 26: ml_dtypes.float8_e4m3fnuz,
    27: ml_dtypes.float8_e4m3b11fnuz, 28: ml_dtypes.float8_e5m2fnuz,
}
_NUMPY = {k: np.dtype(v) for k, v in _NUMPY.items()}


@dataclass
class BundleIndex:
    """A parsed ``PREFIX.index``: its header and one entry per variable, in file (sorted) order.

    ``entries`` leaves out the header key "" and the binary keys of saved slices (they start
    with ``\\x00``); a partitioned variable's full entry keeps its ``slices`` field.
    """

    prefix: str
    header: BundleHeaderProto
    entries: dict[str, BundleEntryProto]


def data_path(prefix: str, shard_id: int, num_shards: int) -> str:
    """The data shard file that holds ``shard_id`` of ``num_shards``."""
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


def numpy_dtype(dtype_enum: int) -> np.dtype | None:
    """The numpy dtype for a DataType enum value, or None where bytes are not plain values."""
    return _NUMPY.get(int(dtype_enum) % 100)  # +100 marks TF1 reference types


def dtype_name(dtype_enum: int) -> str:
    """The ``tf.dtypes`` style name of a DataType enum value ("float32", "bfloat16", ...)."""
    value = int(dtype_enum)
    base, ref = (value - 100, "_ref") if value > 100 else (value, "")
    if 0 < base < len(_NAMES):
        return _NAMES[base] + ref
    return f"dtype_{value}"  # newer than this table; still something printable


def _numel(entry) -> int:
    return math.prod(int(d.size) for d in entry.shape.dim)


def can_stream(entry) -> bool:
    """True where the entry's bytes are plain values that :func:`iter_chunks` can stream."""
    dt = numpy_dtype(entry.dtype)
    return not entry.slices and dt is not None and entry.size == _numel(entry) * dt.itemsize


def read_index(prefix: str) -> BundleIndex:
    """Parse ``PREFIX.index`` (any filesystem :mod:`storage` reads), checking every block's
    crc32c."""
    from google.protobuf.message import DecodeError

    name = f"{prefix}.index"
    try:
        data = storage.read_all(name)
    except storage.NotFound:
        raise UserError(f"no {name}: pass the checkpoint prefix, e.g. .../model.ckpt-1000") from None
    from tensorflow.core.protobuf import tensor_bundle_pb2 as pb

    bad = f"{name} is not a valid checkpoint index (truncated or corrupt): "
    try:
        header = None
        entries: dict = {}
        for key, value in table.read_table(data):
            if not key:
                header = pb.BundleHeaderProto.FromString(value)
            elif key[0] != 0:  # slice keys are binary and start with \x00
                entries[key.decode("utf-8", "surrogateescape")] = pb.BundleEntryProto.FromString(value)
        if header is None:
            raise ValueError("no header entry")
    except table.UnknownCompression as e:
        raise UserError(f"{name} uses {e}, unknown here: it is read through TensorFlow's "
                        "reader instead") from None
    except (ValueError, IndexError, struct.error, DecodeError) as e:
        raise UserError(bad + str(e)) from None
    return BundleIndex(prefix=prefix, header=header, entries=entries)


def plan(index: BundleIndex, key: str) -> ReadPlan:
    """The read plan of ``key``: its byte range in its data shard and crc32c where it can be
    streamed (see :func:`can_stream`), else a plan without ranges (read it whole through
    TensorFlow's reader)."""
    entry = index.entries.get(key)
    if entry is None:
        raise UserError(f"no tensor {key!r} in {index.prefix}.index: list the checkpoint to see its keys")
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
    p = _streamable(index, key)
    chunks = iter_chunks(index, key)
    # Fill one preallocated array: concatenating chunks would hold the tensor twice.
    out = np.empty(p.numel, dtype=p.dtype)
    pos = 0
    for chunk in chunks:
        out[pos : pos + chunk.size] = chunk
        pos += chunk.size
    return out.reshape(p.shape)


def read_scalar_string(index: BundleIndex, key: str) -> bytes | None:
    """The bytes of a scalar string tensor (the object graph), read from its data shard.

    TensorFlow stores a string tensor as the varint64 length of each element, a 4-byte
    masked crc32c of those lengths, then the bytes. Reading it here spares opening
    TensorFlow's ``CheckpointReader`` (which re-reads the whole index) just to list a
    checkpoint. Returns None, for the caller to fall back to TensorFlow's reader, when the
    entry is not a plain scalar string or anything does not check out.
    """
    entry = index.entries.get(key)
    if (entry is None or entry.dtype != 7 or entry.slices or len(entry.shape.dim) != 0
            or index.header.endianness != 0):
        return None
    path = data_path(index.prefix, entry.shard_id, index.header.num_shards)
    try:
        with shards.open_shard(path) as f:
            raw = shards.read_exact(f, int(entry.offset), int(entry.size), key)
    except UserError:  # a missing or unreadable shard: TensorFlow's reader says which
        return None
    try:
        length, pos = table.varint(raw, 0)
    except ValueError:
        return None
    if pos + 4 + length != len(raw):
        return None
    # The checksum runs over each length as a little-endian uint32 (uint64 past 4 GiB), the
    # masked length checksum itself, then the bytes (tensor_bundle.cc WriteStringTensor).
    crc = google_crc32c.extend(0, struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length))
    crc = google_crc32c.extend(crc, raw[pos:pos + 4])
    crc = google_crc32c.extend(crc, raw[pos + 4:])
    if table.mask(crc) != entry.crc32c:
        return None
    return raw[pos + 4:]
