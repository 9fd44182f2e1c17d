"""What a SavedModel holds, read from ``saved_model.pb`` without loading the model.

:func:`describe_saved_model` lists the meta graphs' tag sets and signatures (names, dtypes,
shapes) like ``saved_model_cli show --all``; :func:`pick` chooses the tag set and signature
to run. TensorFlow Serving's layout (a folder of numbered versions) is understood too.
"""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from tpuckpt_viz.checkpoint import storage
from tpuckpt_viz.errors import UserError, first_line
from tpuckpt_viz.tfcompat import tf


@dataclass
class TensorInfo:
    """One input or output of a signature (or of a Keras model)."""

    name: str  # the key in the signature (what a caller passes)
    tensor: str  # the graph tensor, e.g. "x:0" ("" when unknown)
    dtype: str  # "float32", "string", "float32_ref", ...
    shape: list[int] | None  # -1 for an unknown dimension; None for an unknown rank
    encoding: str = "dense"  # "dense", "coo_sparse" or "composite"

    def describe(self) -> str:
        """'x: float32 [-1, 1]' for tables and messages."""
        return f"{self.name}: {self.dtype} {fmt_shape(self.shape)}"


@dataclass
class SignatureInfo:
    name: str
    method_name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


@dataclass
class MetaGraphInfo:
    """One meta graph of a SavedModel: its tag set and its signatures (sorted by name)."""

    tags: tuple[str, ...]  # sorted
    signatures: list[SignatureInfo]
    index: int = 0  # position in saved_model.pb
    tensorflow_version: str = ""

    def signature(self, name: str) -> SignatureInfo | None:
        return next((s for s in self.signatures if s.name == name), None)


def fmt_shape(shape) -> str:
    return "unknown" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def fmt_tags(tags: Iterable[str]) -> str:
    return ",".join(sorted(tags)) or "(empty)"


def declared(specs: list[TensorInfo], limit: int = 6) -> str:
    """'x: float32 [-1, 1]; y: ...' for messages, cut after ``limit`` inputs."""
    if not specs:
        return "no inputs"
    text = "; ".join(t.describe() for t in specs[:limit])
    return text + (f"; and {len(specs) - limit} more" if len(specs) > limit else "")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else os.path.join(base, *parts)


def norm_dir(path: str) -> str:
    """A stable cache key for a folder (realpath locally, the URI unchanged elsewhere)."""
    path = os.fspath(path)
    return path.rstrip("/") if "://" in path else os.path.realpath(path)


def has_saved_model_pb(path: str) -> bool:
    gfile = tf().io.gfile
    return any(gfile.exists(join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt"))


def serving_version_dir(path: str, broken_too: bool = False) -> str | None:
    """TensorFlow Serving's layout: a folder of numbered versions -> the highest SavedModel.

    ``broken_too``: also accept a version folder that holds only ``variables/`` (so that the
    error names that folder).
    """
    from tpuckpt_viz.checkpoint.paths import is_saved_model

    gfile = tf().io.gfile
    try:
        if not gfile.isdir(path):
            return None
        names = gfile.listdir(path)
    except Exception:  # noqa: BLE001 - not a folder, unreachable bucket
        return None
    versions = sorted((int(n.strip("/")), n.strip("/")) for n in names if n.strip("/").isdigit())
    for _, name in reversed(versions):
        candidate = join(path, name)
        if has_saved_model_pb(candidate) or (broken_too and is_saved_model(candidate)):
            return candidate
    return None


_PROTO_CACHE: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_PROTO_LOCK = threading.Lock()


def clear_cache() -> None:
    with _PROTO_LOCK:
        _PROTO_CACHE.clear()


def read_saved_model(path: str):
    """The ``SavedModel`` proto of folder ``path`` (cached while the file is unchanged)."""
    from google.protobuf import text_format
    tf()  # quiet import first: the protos alone print TF's banner
    from tensorflow.core.protobuf import saved_model_pb2

    gfile = tf().io.gfile
    path = os.fspath(path)
    pb, pbtxt = join(path, "saved_model.pb"), join(path, "saved_model.pbtxt")
    file = pb if gfile.exists(pb) else pbtxt if gfile.exists(pbtxt) else None
    if file is None:
        if not gfile.isdir(path):
            raise UserError(f"{path} is not a folder: pass a SavedModel folder "
                            "(the one holding saved_model.pb)")
        hint = ("open its variables/ folder in Browse to see the weights"
                if gfile.isdir(join(path, "variables"))
                else "pass the folder that holds saved_model.pb")
        raise UserError(f"{path} has no saved_model.pb: it is not a SavedModel; {hint}")
    stat = gfile.stat(file)
    key = (norm_dir(path), file, stat.length, stat.mtime_nsec)
    with _PROTO_LOCK:
        if key in _PROTO_CACHE:
            _PROTO_CACHE.move_to_end(key)
            return _PROTO_CACHE[key]
    proto = saved_model_pb2.SavedModel()
    try:
        data = storage.read_all(file)  # a regular file only: a named pipe would never end
        if file.endswith(".pbtxt"):
            text_format.Parse(data.decode("utf-8"), proto)
        else:
            proto.ParseFromString(data)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"cannot parse {file}: {first_line(exc)}: is the SavedModel complete?")
    with _PROTO_LOCK:
        _PROTO_CACHE[key] = proto
        while len(_PROTO_CACHE) > 16:
            _PROTO_CACHE.popitem(last=False)
    return proto


def dtype_name(enum: int) -> str:
    try:
        return tf().dtypes.as_dtype(enum).name
    except Exception:  # noqa: BLE001 - DT_INVALID (init op signatures) and unknown enums
        from tensorflow.core.framework import types_pb2

        if not enum:
            return "invalid"
        try:
            return types_pb2.DataType.Name(enum).lower().replace("dt_", "")
        except ValueError:  # a number no TensorFlow knows
            return f"dtype_{enum}"


def _tensor_info(key: str, info) -> TensorInfo:
    encoding = info.WhichOneof("encoding") or "name"
    if encoding == "name":
        tensor, enc = info.name, "dense"
    elif encoding == "coo_sparse":
        tensor, enc = info.coo_sparse.values_tensor_name, "coo_sparse"
    else:
        tensor, enc = "", "composite"
    if enc == "composite" or info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = [int(d.size) for d in info.tensor_shape.dim]
    return TensorInfo(key, tensor, dtype_name(info.dtype), shape, enc)


def describe_saved_model(path: str) -> list[MetaGraphInfo]:
    """Tag sets and signatures of the SavedModel in folder ``path``, read from saved_model.pb.

    Like ``saved_model_cli show --all``, without loading the model. The load-time signature
    ``__saved_model_init_op`` is left out: it is not something to run.
    """
    proto = read_saved_model(path)
    result = []
    for index, mg in enumerate(proto.meta_graphs):
        sigs = []
        for name in sorted(mg.signature_def):
            if name.startswith("__saved_model"):
                continue
            sd = mg.signature_def[name]
            sigs.append(SignatureInfo(
                name, sd.method_name,
                [_tensor_info(k, sd.inputs[k]) for k in sorted(sd.inputs)],
                [_tensor_info(k, sd.outputs[k]) for k in sorted(sd.outputs)]))
        result.append(MetaGraphInfo(tuple(sorted(mg.meta_info_def.tags)), sigs, index,
                                    mg.meta_info_def.tensorflow_version))
    return result


def _norm_tags(tags) -> frozenset[str] | None:
    """None: the default rule. A string "train,serve" ("" is the default rule too), or a
    collection of tags (an empty one is the empty tag set)."""
    if tags is None:
        return None
    if isinstance(tags, str):
        return frozenset(t.strip() for t in tags.split(",") if t.strip()) or None
    return frozenset(t.strip() for t in tags if t and t.strip())


def pick(meta_graphs: list[MetaGraphInfo], tags=None, signature: str | None = None
         ) -> tuple[MetaGraphInfo, SignatureInfo]:
    """Choose the meta graph and signature to run.

    ``tags`` (a set, a list or "train,serve") must equal a meta graph's tag set; by default the
    tag set {serve}, else the only one. ``signature`` by default is ``serving_default``, else
    the only one. Where no rule picks, :class:`UserError` lists the choices.
    """
    if not meta_graphs:
        raise UserError("the SavedModel holds no meta graph: re-export it")
    wanted = _norm_tags(tags)
    choices = "; ".join(repr(tuple(m.tags)) for m in meta_graphs)
    if wanted is not None:
        mg = next((m for m in meta_graphs if set(m.tags) == wanted), None)
        if mg is None:
            raise UserError(f"no meta graph with tag set {tuple(sorted(wanted))!r}: this "
                            f"SavedModel has tag sets {choices}; pass --tag "
                            + " or --tag ".join(fmt_tags(m.tags) for m in meta_graphs))
    else:
        mg = next((m for m in meta_graphs if set(m.tags) == {"serve"}), None)
        if mg is None:
            if len(meta_graphs) != 1:
                raise UserError(f"no meta graph tagged 'serve' and more than one to choose from "
                                f"({choices}): pass --tag")
            mg = meta_graphs[0]
    names = [s.name for s in mg.signatures]
    if signature:
        sig = mg.signature(signature)
        if sig is None:
            raise UserError(f"no signature {signature!r} under tag set {mg.tags!r}: choose one of "
                            f"{', '.join(names) or '(none)'}")
    else:
        sig = mg.signature("serving_default")
        if sig is None:
            if len(names) != 1:
                raise UserError(f"no serving_default signature under tag set {mg.tags!r}: pass "
                                f"--signature with one of {', '.join(names) or '(none)'}")
            sig = mg.signatures[0]
    return mg, sig


def meta_graph(path: str, tags=None, signature: str | None = None):
    """(MetaGraphDef proto, MetaGraphInfo, SignatureInfo) chosen by :func:`pick`."""
    proto = read_saved_model(path)
    mg_info, sig = pick(describe_saved_model(path), tags, signature)
    return proto.meta_graphs[mg_info.index], mg_info, sig
