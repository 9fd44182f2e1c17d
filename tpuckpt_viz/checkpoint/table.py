"""Read a LevelDB-format table file: the format of a TensorFlow bundle's ``PREFIX.index``.

A 48-byte footer points (via varint BlockHandles) at an index block whose values point at
data blocks; each block holds prefix-compressed entries, a restart array and a 5-byte trailer
(compression type + masked crc32c of the contents and the type byte). Old TensorFlow versions
compressed blocks with snappy (lingvo's files); those are decompressed with ``cramjam``.

Hand-written because no maintained library reads a lone table file from memory. Every
function raises ``ValueError`` with a short reason on a malformed table, and
:class:`UnknownCompression` (also a ``ValueError``) for a compression type other than none
or snappy; the caller words the error for the user.
"""

from __future__ import annotations

import struct
from typing import Iterator

import google_crc32c

MAGIC = 0xDB4775248B80FB57
FOOTER_LEN = 48
_MASK_DELTA = 0xA282EAD8


class UnknownCompression(ValueError):
    """A block uses a compression type this reader does not know."""


def mask(crc: int) -> int:
    """A crc32c masked as LevelDB and TensorFlow store it."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data, crc: int = 0) -> int:
    """The masked crc32c of ``data`` (continuing the unmasked ``crc``)."""
    return mask(google_crc32c.extend(crc, data))


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``buf[pos]`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end of its buffer")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def snappy_decompress(src: bytes) -> bytes:
    """Decompress one raw snappy block (no framing), as LevelDB stores them."""
    import cramjam

    try:
        return bytes(cramjam.snappy.decompress_raw(src))
    except Exception as e:  # cramjam raises its own DecompressionError
        raise ValueError(f"bad snappy block: {e}") from None


def read_block(data: bytes, pos: int, size: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of the block at ``pos`` (``size`` bytes before its trailer),
    after checking the trailer's checksum."""
    end = pos + size
    if pos < 0 or size < 4 or end + 5 > len(data):
        raise ValueError(f"block at {pos} (+{size}) runs past the end of the file")
    kind = data[end]
    stored = int.from_bytes(data[end + 1 : end + 5], "little")
    if mask(google_crc32c.extend(google_crc32c.value(data[pos:end]), data[end : end + 1])) != stored:
        raise ValueError(f"block at {pos} fails its crc32c")
    if kind == 1:  # snappy
        data = snappy_decompress(data[pos:end])
        pos, end = 0, len(data)
        if end < 4:
            raise ValueError("snappy block too short")
    elif kind != 0:
        raise UnknownCompression(f"block compression type {kind}")
    num_restarts = int.from_bytes(data[end - 4 : end], "little")
    limit = end - 4 - 4 * num_restarts
    if limit < pos:
        raise ValueError(f"block at {pos} has a bad restart array")
    out, key = [], b""
    while pos < limit:
        # Fast path: the three lengths are almost always single-byte varints.
        if pos + 3 <= limit and (data[pos] | data[pos + 1] | data[pos + 2]) < 0x80:
            shared, non_shared, vlen = data[pos], data[pos + 1], data[pos + 2]
            pos += 3
        else:
            shared, pos = varint(data, pos)
            non_shared, pos = varint(data, pos)
            vlen, pos = varint(data, pos)
        vstart = pos + non_shared
        if shared > len(key) or vstart + vlen > limit:
            raise ValueError(f"entry at {pos} runs past its block")
        key = key[:shared] + data[pos:vstart]
        pos = vstart + vlen
        out.append((key, data[vstart:pos]))
    return out


def data_blocks(data: bytes) -> list[tuple[int, int]]:
    """The (offset, size) of every data block of the table file ``data``, in order."""
    if len(data) < FOOTER_LEN:
        raise ValueError(f"{len(data)} bytes is shorter than the table footer")
    footer = data[-FOOTER_LEN:]
    if struct.unpack("<Q", footer[-8:])[0] != MAGIC:
        raise ValueError("bad magic number")
    # Skip the metaindex handle (TensorFlow writes no meta blocks), keep the index handle.
    p = varint(footer, varint(footer, 0)[1])[1]
    index_off, p = varint(footer, p)
    index_size, p = varint(footer, p)
    blocks = []
    for _, handle in read_block(data, index_off, index_size):
        off, q = varint(handle, 0)
        blocks.append((off, varint(handle, q)[0]))
    return blocks


def read_table(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of the table file ``data``, in file (sorted) order."""
    for off, size in data_blocks(data):
        yield from read_block(data, off, size)
