"""What a file is, told by its bytes rather than its name.

People pass whatever their training wrote: a Keras HDF5 file without an extension, a ``.keras``
zip, a TFLite flatbuffer, a frozen GraphDef, an ONNX model. The first bytes say which; files this
tool reads go to their reader, the others get a message that names the format and what to do.
Nothing here imports TensorFlow: a ``.pb`` is told a frozen GraphDef with the project's own
definition of the message (:mod:`tpuckpt_viz.checkpoint.protos`).
"""

from __future__ import annotations

import os
import re

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
# HDF5 may sit after a user block of 512, 1024, 2048, ... bytes.
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)


def is_local(path: str) -> bool:
    """Whether ``path`` is on the local filesystem (no ``scheme://``)."""
    return "://" not in str(path)


def open_binary(path: str):
    """A seekable binary file object for ``path``: the local file, else fsspec (gs:// and
    other buckets, through :mod:`tpuckpt_viz.checkpoint.remote`), else ``tf.io.gfile``
    (ram://)."""
    if is_local(path):
        return open(path, "rb")
    from tpuckpt_viz.checkpoint import remote

    if remote.handles(path):  # gs:// and other fsspec URLs
        return remote.open_file(path)
    from tpuckpt_viz.tfcompat import tf

    return tf().io.gfile.GFile(path, "rb")


def is_file(path: str) -> bool:
    if is_local(path):
        return os.path.isfile(path)
    from tpuckpt_viz.checkpoint import remote

    if remote.handles(path):
        try:
            return remote.info(path)["type"] == "file"
        except remote.RemoteError:
            return False
    from tpuckpt_viz.tfcompat import tf

    try:
        return tf().io.gfile.exists(path) and not tf().io.gfile.isdir(path)
    except Exception:
        return False


def head(path: str, size: int = 4104) -> bytes:
    """The first ``size`` bytes of a file (b"" when it cannot be read)."""
    try:
        with open_binary(path) as f:
            return f.read(size)
    except Exception:
        return b""


def sniff(path: str) -> str | None:
    """``"hdf5"``, ``"zip"``, ``"tflite"``, ``"onnx"`` or None, from the file's first bytes."""
    data = head(path)
    if any(data[o:o + 8] == HDF5_MAGIC for o in _HDF5_OFFSETS):
        return "hdf5"
    if data[:4] == ZIP_MAGIC:
        return "zip"
    if data[4:8] == b"TFL3":
        return "tflite"
    name = os.path.basename(str(path).rstrip("/")).lower()
    if name.endswith(".onnx") or (data[:1] == b"\x08" and b"onnx" in data[:512].lower()):
        return "onnx"
    return None


# TensorFlow's rules for node and op names (graph import refuses others).
_NODE_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/>]*")
_OP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_>]*")


def _is_graphdef(path: str) -> bool:
    """Whether the file parses as a GraphDef with nodes that TensorFlow would import: our
    GraphDef keeps attribute values and the function library undecoded, so other protobufs
    that parse at the top level are told by their node and op names."""
    try:
        from tpuckpt_viz.checkpoint import protos

        with open_binary(path) as f:
            raw = f.read(256 << 20)
        graph = protos.GraphDef()
        graph.ParseFromString(raw)
    except Exception:
        return False
    return len(graph.node) > 0 and all(
        _NODE_NAME.fullmatch(n.name) and _OP_NAME.fullmatch(n.op) for n in graph.node)


def foreign_message(path: str) -> str | None:
    """A one-line message for a model file of another kind (TFLite, ONNX, frozen GraphDef),
    or None when the file is none of them."""
    kind = sniff(path)
    if kind == "tflite":
        return (f"{path} is a TensorFlow Lite flatbuffer (.tflite), not a checkpoint: its weights "
                "are constants of a converted graph; open the checkpoint or SavedModel it was "
                "converted from, or inspect it with tf.lite.Interpreter")
    if kind == "onnx":
        return (f"{path} is an ONNX model, not a TensorFlow checkpoint: open it with onnx or "
                "Netron, or pass the TensorFlow checkpoint it was exported from")
    name = os.path.basename(str(path).rstrip("/"))
    if name.endswith(".pb") and name != "saved_model.pb" and _is_graphdef(path):
        return (f"{path} is a frozen TensorFlow GraphDef: its weights were folded into "
                "constants and it holds no variables; pass the checkpoint or SavedModel it "
                "was frozen from")
    return None
