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


# --------------------------------------------------------------------------------------------
# SavedModels that try to walk around the op scan (made by TensorFlow, then edited as a
# hostile author would edit saved_model.pb)

def _edit_pb(folder: Path, edit) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(folder) / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb.read_bytes())
    edit(proto.meta_graphs[0])
    pb.write_bytes(proto.SerializeToString())


def signature_map_swap(tf, folder: Path, target: Path) -> Path:
    """``serving_default`` in the object graph's signature map points at a function that
    writes ``target`` (hidden in a tf.cond branch); its signature_def still looks clean."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return {"y": 2.0 * x}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def evil(self, x):
            def write():
                tf.io.write_file(str(target), "pwned")
                return tf.constant(1.0)

            flag = tf.cond(tf.size(x) >= 0, write, lambda: tf.constant(0.0))
            return {"y": 2.0 * x * flag}

    m = Module()
    tf.saved_model.save(m, str(folder), signatures={
        "serving_default": m.double.get_concrete_function(),
        "evil": m.evil.get_concrete_function()})

    def edit(mg):
        nodes = mg.object_graph_def.nodes
        sigmap = next(c.node_id for c in nodes[0].children if c.local_name == "signatures")
        children = {c.local_name: c for c in nodes[sigmap].children}
        children["serving_default"].node_id = children["evil"].node_id
        keep = [c for c in nodes[sigmap].children if c.local_name != "evil"]
        del nodes[sigmap].children[:]
        nodes[sigmap].children.extend(keep)
        del mg.signature_def["evil"]

    _edit_pb(folder, edit)
    return folder


def tf1_restore_writes(tf, folder: Path, target: Path) -> Path:
    """A TF1 SavedModel whose saver_def.restore_op_name names a WriteFile node."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        w = v1.get_variable("w", [], initializer=v1.ones_initializer())
        y = tf.identity(x * w, name="y")
        write = tf.io.write_file(str(target), "pwned", name="evil_restore")
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(folder))
            sig = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            saver.saver_def.restore_op_name = write.name
            builder.add_meta_graph_and_variables(sess, ["serve"], saver=saver,
                                                 signature_def_map={"serving_default": sig})
            builder.save()
    return folder


def table_outside_assets(tf, folder: Path, path: str = "/etc/hostname") -> Path:
    """A serving function whose lookup table is initialized from ``path`` (an absolute path
    outside the SavedModel's assets): its output would be that file's lines."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, keys):
            table = tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)
            tf.raw_ops.InitializeTableFromTextFileV2(table_handle=table, filename=path,
                                                     key_index=-2, value_index=-1)
            return {"ids": tf.raw_ops.LookupTableFindV2(table_handle=table, keys=keys,
                                                        default_value=tf.constant(-1, tf.int64))}

    m = Module()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


def table_from_own_asset(tf, folder: Path, vocab: Path) -> Path:
    """The safe counterpart: a StaticHashTable read at load time from the model's own asset."""

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(str(vocab), tf.string, -2, tf.int64, -1), -1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, keys):
            return {"ids": self.table.lookup(keys)}

    m = Module()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


def csv_dataset(tf, folder: Path, path: str = "/etc/hostname") -> Path:
    """A serving function that returns the first line of ``path`` through a CsvDataset."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
        def serve(self, x):
            ds = tf.data.experimental.CsvDataset(path, [tf.string], field_delim="\x01")
            (line,) = ds.take(1).get_single_element()
            return {"line": line, "x": x}

    m = Module()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


def scalar_string_output(tf, folder: Path) -> Path:
    """A model whose only output is a scalar string."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def serve(self, x):
            return {"label": tf.strings.as_string(tf.reduce_sum(x))}

    m = Module()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


def wide_input(tf, folder: Path, rank: int = 14) -> Path:
    """A signature whose input is ``[None] * rank``: 4 ** 14 floats if every dim were 4."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None] * rank, tf.float32)])
        def serve(self, x):
            return {"n": tf.size(x)}

    m = Module()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


def odd_dtype_inputs(tf, folder: Path) -> Path:
    """serving_default's signature_def declares inputs of dtype resource, variant and 999."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.float32)] * 3)
        def serve(self, a, b, c):
            return {"y": a + b + c}

    m = Module()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})

    def edit(mg):
        sd = mg.signature_def["serving_default"]
        for name, dtype in zip(sorted(sd.inputs), (20, 21, 999)):
            sd.inputs[name].dtype = dtype

    _edit_pb(folder, edit)
    return folder


def allocating_model(tf, folder: Path) -> Path:
    """serving_default allocates ``n`` floats (``n`` is the input) and loops ``steps`` times."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)])
        def serve(self, n, steps):
            total = tf.reduce_sum(tf.ones(tf.reshape(n, [1]), tf.float32))
            (i,) = tf.while_loop(lambda i: i < steps, lambda i: (i + 1,),
                                 (tf.constant(0, tf.int64),))
            return {"total": total, "steps": i}

    m = Module()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder
