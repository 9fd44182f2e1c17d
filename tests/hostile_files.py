"""Hostile files for the tests of issue 14, built with the real libraries.

``write_index`` writes a bundle ``.index`` table (LevelDB format, as TensorFlow's
``TableBuilder`` does: blocks with a masked crc32c trailer, an index block, a 48-byte footer)
from entries of a checkpoint that TensorFlow wrote, so that an entry can be made to say what
TensorFlow's C++ reader cannot take (a negative dimension: a failed CHECK, SIGABRT).
Imported as ``from hostile_files import ...`` (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import google_crc32c

MAGIC = 0xDB4775248B80FB57


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _block(items: list[tuple[bytes, bytes]]) -> bytes:
    body, restarts = bytearray(), []
    for key, value in items:  # every entry a restart point: no shared prefixes
        restarts.append(len(body))
        body += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value
    if not restarts:
        restarts = [0]
    body += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(body)


def _with_trailer(block: bytes) -> bytes:
    return block + b"\x00" + struct.pack("<I", _masked_crc(block + b"\x00"))


def write_index(path: str | Path, header: bytes, entries: list[tuple[bytes, bytes]]) -> None:
    """Write a bundle index table: ``header`` (serialized BundleHeaderProto) under key ""
    and ``entries`` (key bytes, serialized BundleEntryProto), sorted by key."""
    items = [(b"", header)] + sorted(entries)
    out = bytearray()
    data = _block(items)
    data_handle = _varint(0) + _varint(len(data))
    out += _with_trailer(data)
    meta = _block([])
    meta_handle = _varint(len(out)) + _varint(len(meta))
    out += _with_trailer(meta)
    index = _block([(items[-1][0] + b"\xff", data_handle)])
    index_handle = _varint(len(out)) + _varint(len(index))
    out += _with_trailer(index)
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", MAGIC)
    Path(path).write_bytes(bytes(out + footer))


def rewrite_entries(prefix: str, change) -> str:
    """Rewrite ``prefix``.index with ``change(key, BundleEntryProto)`` applied to each entry
    (TensorFlow wrote the bundle; the data shards stay as they are). Returns the prefix."""
    from tpuckpt_viz.checkpoint import bundle

    index = bundle.read_index(prefix)
    entries = []
    for key, proto in index.entries.items():
        change(key, proto)
        entries.append((key.encode("utf-8", "surrogateescape"), proto.SerializeToString()))
    write_index(prefix + ".index", index.header.SerializeToString(), entries)
    return prefix


def tree_hashes(*folders) -> dict[str, str]:
    """Path -> sha256 of every file under ``folders`` (symlinks not followed)."""
    out = {}
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                p = os.path.join(dirpath, name)
                if os.path.islink(p) or not os.path.isfile(p):
                    out[p] = "special"
                    continue
                with open(p, "rb") as f:
                    out[p] = hashlib.sha256(f.read()).hexdigest()
    return out
