"""Run test inputs through a model: a SavedModel, or a model builder plus a checkpoint.

Two sources, one entry point (:func:`run_inference`, called by the CLI's ``infer`` and the
Infer page):

- **SavedModel**: :func:`describe_saved_model` reads ``saved_model.pb`` like
  ``saved_model_cli show``; :func:`pick` chooses the tag set and signature; :func:`scan_signature`
  refuses signatures whose graph reads or writes files or runs Python (like
  ``saved_model_cli scan``); the model is loaded with ``tf.saved_model.load`` and, where that
  loader (or the call) fails, with the TF1 session loader, which still reads old exports
  (``float32_ref`` signatures, Keras 2 objects, TF 1.0 graphs).
- **Checkpoint**: :func:`load_builder` imports ``package.module:function`` (or loads a
  ``.keras`` file); :func:`restore_and_run` builds the model under the chosen device's
  strategy, restores the checkpoint into it and reports what matched.

Loaded models are cached per process (several dashboard sessions share them).
"""

from __future__ import annotations

import collections
import csv
import importlib
import io
import json
import math
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from . import config
from .devices import CPU_NAME, DeviceChoice, checkpoint_options, choose_device
from .errors import UserError, first_line
from .tfcompat import tf

DEFAULT_BUILDER = "tpuckpt_viz.demo:build_model"
DEFAULT_REPEATS = 5
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_CACHE_SIZE = 8

# Ops a serving signature has no business running: they read, write, list or delete files, or
# call back into Python. saved_model_cli's scan refuses ReadFile, WriteFile and PrintV2; this
# list adds the other file-system, Python and file-reading dataset/reader ops. Saver ops are on
# it too, but only count where the signature (or a load-time initializer) depends on them: the
# SaveV2/RestoreV2 nodes that every SavedModel holds for checkpointing are never reached from a
# serving output. InitializeTableFromTextFile(V2) is not listed: lookup tables read the
# SavedModel's own assets with it.
UNSAFE_OPS = frozenset({
    # files
    "ReadFile", "WriteFile", "MatchingFiles", "DeleteFile", "ImmutableConst",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice",
    "MergeV2Checkpoints", "LoadAndRemapMatrix", "GenerateVocabRemapping", "RecordInput",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNumericSummary",
    "DebugNumericSummaryV2", "DebugNanCount",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2",
    "TFRecordReader", "TFRecordReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "LMDBReader",
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "SaveDataset", "SaveDatasetV2", "LoadDataset",
    "ExperimentalLMDBDataset", "LMDBDataset", "SnapshotDataset", "SnapshotDatasetV2",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "CacheDatasetV2",
    "PrintV2",  # output_stream may name a file
    # Python
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
})

# Ops that change state: a signature that reaches one (a counter's incr, a train step) is run
# once, not warmed up and repeated for timing.
_MUTATING_PREFIXES = ("Assign", "ResourceApply", "Apply", "ScatterAdd", "ScatterSub",
                      "ScatterUpdate", "ResourceScatter", "ScatterNd",
                      "ResourceStridedSliceAssign",
                      "StridedSliceAssign", "TensorArrayWrite", "QueueEnqueue", "QueueDequeue",
                      "LookupTableInsert", "LookupTableRemove", "MutableHashTable")

# Add-on libraries whose custom ops a SavedModel may need (op name prefix -> package).
_CUSTOM_OP_PACKAGES = (
    ("SimpleML", "tensorflow_decision_forests"),
    ("YggdrasilDecisionForests", "tensorflow_decision_forests"),
    ("TokenizerFromLogits", "tensorflow_text"), ("SentencepieceOp", "tensorflow_text"),
    ("WordpieceTokenize", "tensorflow_text"), ("RegexSplitWithOffsets", "tensorflow_text"),
    ("WhitespaceTokenize", "tensorflow_text"), ("CaseFoldUTF8", "tensorflow_text"),
    ("NormalizeUTF8", "tensorflow_text"), ("UnicodeScriptTokenize", "tensorflow_text"),
    ("FastWordpiece", "tensorflow_text"), ("FastBertNormalize", "tensorflow_text"),
    ("TensorsToCoo", "tensorflow_recommenders_addons"),
    ("Addons>", "tensorflow_addons"),
)


# --------------------------------------------------------------------------------------------
# SavedModel description

@dataclass
class TensorInfo:
    """One input or output of a signature."""

    name: str  # the key in the signature (what a caller passes)
    tensor: str  # the graph tensor, e.g. "x:0" ("" when unknown)
    dtype: str  # "float32", "string", "float32_ref", ...
    shape: list[int] | None  # -1 for an unknown dimension; None for an unknown rank
    encoding: str = "dense"  # "dense", "coo_sparse" or "composite"


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


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else os.path.join(base, *parts)


def _norm_dir(path: str) -> str:
    """A stable cache key for a folder (realpath locally, the URI unchanged elsewhere)."""
    path = os.fspath(path)
    return path.rstrip("/") if "://" in path else os.path.realpath(path)


def has_saved_model_pb(path: str) -> bool:
    gfile = tf().io.gfile
    return any(gfile.exists(_join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt"))


_PROTO_CACHE: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_PROTO_LOCK = threading.Lock()


def _read_saved_model(path: str):
    """The ``SavedModel`` proto of folder ``path`` (cached while the file is unchanged)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    gfile = tf().io.gfile
    path = os.fspath(path)
    pb, pbtxt = _join(path, "saved_model.pb"), _join(path, "saved_model.pbtxt")
    file = pb if gfile.exists(pb) else pbtxt if gfile.exists(pbtxt) else None
    if file is None:
        if not gfile.isdir(path):
            raise UserError(f"{path} is not a folder: pass a SavedModel folder "
                            "(the one holding saved_model.pb)")
        hint = ("open its variables/ folder in Browse to see the weights"
                if gfile.isdir(_join(path, "variables"))
                else "pass the folder that holds saved_model.pb")
        raise UserError(f"{path} has no saved_model.pb: it is not a SavedModel; {hint}")
    stat = gfile.stat(file)
    key = (_norm_dir(path), file, stat.length, stat.mtime_nsec)
    with _PROTO_LOCK:
        if key in _PROTO_CACHE:
            _PROTO_CACHE.move_to_end(key)
            return _PROTO_CACHE[key]
    proto = saved_model_pb2.SavedModel()
    try:
        with gfile.GFile(file, "rb") as f:
            data = f.read()
        if file.endswith(".pbtxt"):
            text_format.Parse(data.decode("utf-8"), proto)
        else:
            proto.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"cannot parse {file}: {first_line(exc)}: is the SavedModel complete?")
    with _PROTO_LOCK:
        _PROTO_CACHE[key] = proto
        while len(_PROTO_CACHE) > 16:
            _PROTO_CACHE.popitem(last=False)
    return proto


def _dtype_name(enum: int) -> str:
    try:
        return tf().dtypes.as_dtype(enum).name
    except Exception:  # noqa: BLE001 - DT_INVALID (init op signatures) and unknown enums
        from tensorflow.core.framework import types_pb2

        return types_pb2.DataType.Name(enum).lower().replace("dt_", "") if enum else "invalid"


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
    return TensorInfo(key, tensor, _dtype_name(info.dtype), shape, enc)


def describe_saved_model(path: str) -> list[MetaGraphInfo]:
    """Tag sets and signatures of the SavedModel in folder ``path``, read from saved_model.pb.

    Like ``saved_model_cli show --all``, without loading the model. The load-time signature
    ``__saved_model_init_op`` is left out: it is not something to run.
    """
    proto = _read_saved_model(path)
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
    if tags is None:
        return None
    if isinstance(tags, str):
        tags = tags.split(",")
    result = frozenset(t.strip() for t in tags if t and t.strip())
    return result or None


def _fmt_tags(tags: Iterable[str]) -> str:
    return ",".join(sorted(tags)) or "(empty)"


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
                            + " or --tag ".join(_fmt_tags(m.tags) for m in meta_graphs))
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


# --------------------------------------------------------------------------------------------
# Walking the graph that a signature runs

def _node_name(ref: str) -> str:
    """'^name', 'name:1', 'name' -> 'name' (GraphDef inputs)."""
    return ref.lstrip("^").split(":")[0]


def _called_functions(node, functions: Mapping[str, Any]) -> Iterable[str]:
    if node.op in functions:  # a function called by name as an op
        yield node.op
    for attr in node.attr.values():
        if attr.HasField("func"):
            yield attr.func.name
        if attr.HasField("list"):
            for f in attr.list.func:
                yield f.name


def _tensor_names(info) -> list[str]:
    kind = info.WhichOneof("encoding")
    if kind == "name":
        return [info.name]
    if kind == "coo_sparse":
        c = info.coo_sparse
        return [c.values_tensor_name, c.indices_tensor_name, c.dense_shape_tensor_name]
    if kind == "composite_tensor":
        return [n for comp in info.composite_tensor.components for n in _tensor_names(comp)]
    return []


def _init_functions(mg) -> list[str]:
    """Concrete functions the TF2 loader runs at load time: resource creators and initializers."""
    nodes = mg.object_graph_def.nodes
    names = []
    for node in nodes:
        if node.WhichOneof("kind") not in ("resource", "asset"):
            continue
        for child in node.children:
            if child.node_id >= len(nodes):
                continue
            target = nodes[child.node_id]
            kind = target.WhichOneof("kind")
            if kind == "function":
                names.extend(target.function.concrete_functions)
            elif kind == "bare_concrete_function":
                names.append(target.bare_concrete_function.concrete_function_name)
    return names


def _walk(mg, signature: str, include_init: bool = True) -> list[tuple[Any, Any]]:
    """(NodeDef, FunctionDef or None) for every node that running ``signature`` may execute.

    In the top-level GraphDef: the nodes the signature's outputs depend on (data and control
    inputs, transitively), plus the load-time init ops where ``include_init``. Every function
    those nodes call (through call ops or function-valued attributes such as While's body),
    transitively, counts whole: inside a tf.function every stateful op runs anyway
    (automatic control dependencies).
    """
    graph = mg.graph_def
    nodes = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    sd = mg.signature_def[signature]
    stack = [_node_name(t) for info in sd.outputs.values() for t in _tensor_names(info)]
    func_stack: list[str] = []
    if include_init:
        for key in ("saved_model_main_op", "legacy_init_op", "main_op", "table_initializer"):
            if key in mg.collection_def:
                stack.extend(_node_name(n) for n in mg.collection_def[key].node_list.value)
        if "__saved_model_init_op" in mg.signature_def:
            init = mg.signature_def["__saved_model_init_op"]
            stack.extend(_node_name(t) for info in init.outputs.values()
                         for t in _tensor_names(info))
        func_stack.extend(_init_functions(mg))
    found: list[tuple[Any, Any]] = []
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        found.append((node, None))
        stack.extend(_node_name(i) for i in node.input)
        func_stack.extend(_called_functions(node, functions))
    seen_funcs: set[str] = set()
    while func_stack:
        fname = func_stack.pop()
        if fname in seen_funcs or fname not in functions:
            continue
        seen_funcs.add(fname)
        fdef = functions[fname]
        for node in fdef.node_def:
            found.append((node, fdef))
            func_stack.extend(_called_functions(node, functions))
    return found


def _meta_graph(path: str, tags=None, signature: str | None = None):
    """(MetaGraphDef proto, MetaGraphInfo, SignatureInfo) chosen by :func:`pick`."""
    proto = _read_saved_model(path)
    mg_info, sig = pick(describe_saved_model(path), tags, signature)
    return proto.meta_graphs[mg_info.index], mg_info, sig


def scan_signature(path: str, tags=None, signature: str | None = None) -> list[str]:
    """The unsafe ops (see ``UNSAFE_OPS``) that running ``signature`` would execute, sorted."""
    mg, _, sig = _meta_graph(path, tags, signature)
    return sorted({node.op for node, _ in _walk(mg, sig.name)} & UNSAFE_OPS)


def check_safe(path: str, tags=None, signature: str | None = None,
               allow_unsafe: bool | None = None) -> None:
    """Raise :class:`UserError` where the signature uses unsafe ops, unless they are allowed."""
    if allow_unsafe or config.get_bool("allow_unsafe_ops"):
        return
    bad = scan_signature(path, tags, signature)
    if bad:
        _, _, sig = _meta_graph(path, tags, signature)
        raise UserError(f"refusing to run signature {sig.name!r} of {path}: it uses "
                        f"file-system or Python ops ({', '.join(bad)}); if you trust this model, "
                        "set TPUCKPT_ALLOW_UNSAFE_OPS=1")


def _mutates_state(mg, signature: str) -> bool:
    return any(node.op.startswith(_MUTATING_PREFIXES)
               for node, _ in _walk(mg, signature, include_init=False))


def _const_strings(ref: str, nodes: Mapping[str, Any]) -> list[str]:
    node = nodes.get(_node_name(ref))
    if node is None or node.op != "Const":
        return []
    value = tf().make_ndarray(node.attr["value"].tensor)
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in np.atleast_1d(value).ravel()]


def example_features(path: str, tags=None, signature: str | None = None) -> dict[str, str]:
    """Feature name -> dtype of the tf.Example strings that ``signature`` parses.

    Read from the ParseExample / ParseExampleV2 / ParseSingleExample ops the signature runs,
    so that inputs for Estimator and TFX exports can be built with :func:`make_examples`.
    Empty where the signature parses no tf.Example.
    """
    mg, _, sig = _meta_graph(path, tags, signature)
    top = {n.name: n for n in mg.graph_def.node}
    features: dict[str, str] = {}

    def types(node, attr):
        return [_dtype_name(t) for t in node.attr[attr].list.type]

    for node, fdef in _walk(mg, sig.name, include_init=False):
        scope = top if fdef is None else {n.name: n for n in fdef.node_def}
        inputs = [i for i in node.input if not i.startswith("^")]
        if node.op == "ParseExample":
            ns, nd = node.attr["Nsparse"].i, node.attr["Ndense"].i
            sparse = [k for r in inputs[2:2 + ns] for k in _const_strings(r, scope)]
            dense = [k for r in inputs[2 + ns:2 + ns + nd] for k in _const_strings(r, scope)]
            pairs = [*zip(dense, types(node, "Tdense")), *zip(sparse, types(node, "sparse_types"))]
        elif node.op == "ParseExampleV2" and len(inputs) >= 5:
            sparse = _const_strings(inputs[2], scope)
            dense = _const_strings(inputs[3], scope)
            ragged = _const_strings(inputs[4], scope)
            pairs = [*zip(dense, types(node, "Tdense")), *zip(sparse, types(node, "sparse_types")),
                     *zip(ragged, types(node, "ragged_value_types"))]
        elif node.op == "ParseSingleExample":
            dense = [k.decode() for k in node.attr["dense_keys"].list.s]
            sparse = [k.decode() for k in node.attr["sparse_keys"].list.s]
            pairs = [*zip(dense, types(node, "Tdense")), *zip(sparse, types(node, "sparse_types"))]
        else:
            continue
        for name, dtype in pairs:
            features.setdefault(name, dtype)
    return features


# --------------------------------------------------------------------------------------------
# Inputs

def _np_dtype(dtype: str):
    name = str(dtype).replace("_ref", "")
    if name == "string":
        return object
    return tf().dtypes.as_dtype(name).as_numpy_dtype


def _fmt_shape(shape) -> str:
    return "unknown" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _expect(name: str, dtype: str, shape) -> str:
    return f"expected {dtype} values of shape {_fmt_shape(shape)}"


def _to_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bytes, str)):
        return _to_bytes(value)
    return str(value).encode("utf-8")


def _convert(value, dtype: str, shape, name: str) -> np.ndarray:
    """``value`` (nested lists, numbers, strings, an array) as an array of ``dtype``."""
    dtype = str(dtype).replace("_ref", "")
    where = f"input {name!r}"
    try:
        if dtype == "string":
            arr = np.array(value, dtype=object)
            return np.frompyfunc(_to_bytes, 1, 1)(arr).astype(object) if arr.ndim else \
                np.array(_to_bytes(arr.item()), dtype=object)
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise UserError(f"{where}: {first_line(exc)}; {_expect(name, dtype, shape)}")
    target = np.dtype(_np_dtype(dtype))
    if arr.dtype.kind in "USO":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise UserError(f"{where}: not numbers; {_expect(name, dtype, shape)}") from None
    if target.kind == "b":
        if arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
            raise UserError(f"{where}: booleans must be true/false or 0/1; "
                            f"{_expect(name, dtype, shape)}")
    elif target.kind in "iu":
        if arr.dtype.kind == "f" or arr.dtype.kind == "c":
            if not np.isfinite(arr).all() or (arr != np.round(arr.real)).any():
                raise UserError(f"{where}: {dtype} takes whole numbers; "
                                f"{_expect(name, dtype, shape)}")
            arr = arr.real
        if arr.size:
            info = np.iinfo(target)
            if arr.min() < info.min or arr.max() > info.max:
                raise UserError(f"{where}: values outside {dtype}'s range "
                                f"[{info.min}, {info.max}]; {_expect(name, dtype, shape)}")
    elif target.kind == "f" and arr.dtype.kind == "c":
        raise UserError(f"{where}: complex numbers; {_expect(name, dtype, shape)}")
    return arr.astype(target)


def _read_file_value(path: str, dtype: str, shape, name: str):
    gfile = tf().io.gfile
    if not gfile.exists(path):
        raise UserError(f"input {name!r}: file {path} not found")
    lower = path.lower()
    with gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        if lower.endswith(".npy"):
            return np.load(io.BytesIO(data), allow_pickle=False)
        if lower.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                keys = list(npz.keys())
                key = name if name in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise UserError(f"input {name!r}: {path} holds arrays {', '.join(keys)} "
                                    f"and none is named {name!r}: save one array, or name it "
                                    f"{name!r}")
                return npz[key]
    except (ValueError, OSError) as exc:  # pickled object arrays, truncated files
        raise UserError(f"input {name!r}: cannot read {path}: {first_line(exc)}")
    # .csv: rows of values; a first row that is not numeric is a header (numeric inputs only).
    rows = [r for r in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if r]
    if rows and str(dtype) != "string":
        try:
            [float(v) for v in rows[0]]
        except ValueError:
            rows = rows[1:]
    if not rows:
        raise UserError(f"input {name!r}: {path} holds no rows")
    return rows


def parse_input_value(value, dtype: str, shape=None, *, name: str = "input",
                      example_spec: Mapping[str, str] | Callable[[], Mapping[str, str]]
                      | None = None
                      ) -> np.ndarray:
    """One input value as an array of the signature's ``dtype``.

    ``value``: an array or nested lists, or text: a JSON literal (``[[1],[2],[5]]``; parsed
    with ``json.loads``, never evaluated) or the path of a ``.npy``, ``.npz`` (the array named
    like the input, else the only one; ``allow_pickle=False``) or ``.csv`` file. For a string
    input, text that is not JSON is taken as one string, and a JSON object (feature -> values)
    or a list of objects (one per example) becomes serialized tf.Example strings, typed by
    ``example_spec`` (see :func:`example_features`).

    The declared ``shape`` is only used in messages: declared shapes are often wrong
    (half_plus_three declares a scalar and takes [n, 1]), so TensorFlow decides at run time.
    """
    dtype = str(dtype).replace("_ref", "")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower().endswith((".npy", ".npz", ".csv")):
            value = _read_file_value(text, dtype, shape, name)
        else:
            try:
                value = json.loads(text)
            except ValueError:
                if dtype == "string":
                    return np.array(text.encode("utf-8"), dtype=object)
                exists = False
                try:
                    exists = bool(text) and tf().io.gfile.exists(text)
                except Exception:  # noqa: BLE001 - odd text is not a path
                    pass
                if exists:
                    raise UserError(f"input {name!r}: {text} is not a .npy, .npz or .csv file; "
                                    f"{_expect(name, dtype, shape)}")
                raise UserError(f"input {name!r}: {text[:60]!r} is neither a JSON literal nor a "
                                f".npy/.npz/.csv file; {_expect(name, dtype, shape)}")
    if dtype == "string" and _is_examples(value):
        spec = example_spec() if callable(example_spec) else example_spec
        rows = value if isinstance(value, list) else None
        if rows is not None:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            value = {k: [row.get(k) for row in rows] for k in keys}
        return np.array(make_examples(value, spec or None), dtype=object)
    return _convert(value, dtype, shape, name)


def _is_examples(value) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def make_inputs(signature_inputs, mode: str = "random", batch: int = 4, seed: int = 0
                ) -> dict[str, np.ndarray]:
    """Generated inputs for ``signature_inputs`` (TensorInfo list, or name -> (dtype, shape)).

    Unknown dimensions become ``batch``; an unknown rank becomes a scalar (it broadcasts,
    and old TF1 placeholders of unknown rank are mostly scalars). ``mode``: "random" (normal
    floats, integers 0..9, random booleans), "zeros" or "ones". String inputs get empty
    strings (an empty string is also a valid, empty tf.Example).
    """
    if mode not in ("random", "zeros", "ones"):
        raise UserError(f"unknown fill {mode!r}: use random, zeros or ones")
    if isinstance(signature_inputs, Mapping):
        items = [(k, v[0], v[1]) for k, v in signature_inputs.items()]
    else:
        items = [(t.name, t.dtype, t.shape) for t in signature_inputs]
    rng = np.random.default_rng(seed)
    result = {}
    for name, dtype, shape in items:
        dims = () if shape is None else tuple(batch if d is None or d < 0 else d for d in shape)
        dtype = str(dtype).replace("_ref", "")
        if dtype == "string":
            result[name] = np.full(dims, b"", dtype=object)
            continue
        target = np.dtype(_np_dtype(dtype))
        if mode == "zeros":
            arr = np.zeros(dims)
        elif mode == "ones":
            arr = np.ones(dims)
        elif target.kind == "b":
            arr = rng.integers(0, 2, size=dims)
        elif target.kind in "iu":
            arr = rng.integers(0, 10, size=dims)
        else:
            arr = rng.standard_normal(size=dims)
        result[name] = np.asarray(arr).astype(target)
    return result


def make_examples(features: Mapping[str, Any], dtypes: Mapping[str, str] | None = None
                  ) -> list[bytes]:
    """Serialized ``tf.train.Example`` strings: ``features`` maps a name to one value per example.

    ``{"x": [1, 2]}`` gives two examples, x=1 and x=2; a value may itself be a list (a
    multi-valued feature) or None (feature left out). ``dtypes`` (feature -> "float32",
    "int64", "string"; see :func:`example_features`) picks the feature's list type; without
    it the Python values decide (floats -> float_list, ints -> int64_list, text -> bytes_list).
    """
    from tensorflow.core.example import example_pb2

    columns = {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v])
               for k, v in features.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise UserError("tf.Example features have different numbers of values "
                        f"({', '.join(f'{k}: {len(v)}' for k, v in columns.items())}): "
                        "give one value per example for each feature")
    count = lengths.pop() if lengths else 0
    dtypes = dict(dtypes or {})
    out = []
    for i in range(count):
        example = example_pb2.Example()
        for key, column in columns.items():
            value = column[i]
            if value is None:
                continue
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
            kind = _feature_kind(key, values, dtypes.get(key))
            feature = example.features.feature[key]
            try:
                if kind == "float":
                    feature.float_list.value.extend(float(v) for v in values)
                elif kind == "int":
                    feature.int64_list.value.extend(int(v) for v in values)
                else:
                    feature.bytes_list.value.extend(_to_bytes(v) for v in values)
            except (TypeError, ValueError) as exc:
                raise UserError(f"tf.Example feature {key!r}: {first_line(exc)}; expected "
                                f"{dtypes.get(key) or kind} values")
        out.append(example.SerializeToString())
    return out


def _feature_kind(key: str, values: list, dtype: str | None) -> str:
    if dtype:
        dtype = dtype.replace("_ref", "")
        if dtype == "string":
            return "bytes"
        if dtype.startswith(("float", "bfloat", "half", "double")):
            return "float"
        return "int"
    if any(isinstance(v, (str, bytes)) for v in values):
        return "bytes"
    if all(isinstance(v, (bool, int, np.integer)) for v in values):
        return "int"
    return "float"


# --------------------------------------------------------------------------------------------
# Results

@dataclass
class InferenceResult:
    """What one inference run produced.

    ``latency_ms``: the median wall time of ``repeats`` runs after one warm-up run (the
    outputs are the warm-up's); a signature that changes state (assigns a variable) is run
    once, and that single run, tracing included, is the latency.
    """

    device: str
    device_reasons: list[str]
    outputs: dict[str, np.ndarray]
    latency_ms: float
    restore: dict | None
    source: str  # "saved_model" | "checkpoint"
    tags: tuple[str, ...] | None = None
    signature: str | None = None
    path: str = ""  # the SavedModel folder or checkpoint prefix that ran
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    runs: int = 1


def _jsonable(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, complex):
        return [_jsonable(value.real), _jsonable(value.imag)]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def result_to_json(result: InferenceResult) -> dict:
    """The ``infer --format json`` object: device, outputs (nested lists), latency_ms, restore.

    NaN and Infinity become null; strings are decoded as UTF-8.
    """
    outputs = {}
    for name, arr in result.outputs.items():
        arr = np.asarray(arr)
        if arr.dtype == getattr(tf().bfloat16, "as_numpy_dtype", None):
            arr = arr.astype(np.float32)
        outputs[name] = _jsonable(arr.tolist())
    return {
        "device": result.device,
        "outputs": outputs,
        "latency_ms": _jsonable(float(result.latency_ms)),
        "restore": None if result.restore is None else _jsonable_dict(result.restore),
    }


def _jsonable_dict(d: Mapping) -> dict:
    return {k: (_jsonable(list(v)) if isinstance(v, (list, tuple)) else _jsonable(v))
            for k, v in d.items()}


def compare_outputs(a, b) -> dict[str, dict]:
    """Per output present on both sides: ``max_abs_diff`` and ``mean_abs_diff`` of b - a.

    ``a`` and ``b`` are output dicts or :class:`InferenceResult`s (the same inputs through two
    checkpoints). Differences are null where the shapes differ or the values are not numbers.
    """
    a = a.outputs if isinstance(a, InferenceResult) else a
    b = b.outputs if isinstance(b, InferenceResult) else b
    result = {}
    for name in sorted(set(a) & set(b)):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        entry: dict[str, float | None] = {"max_abs_diff": None, "mean_abs_diff": None}
        if x.shape == y.shape and x.dtype.kind in "biuf" and y.dtype.kind in "biuf":
            diff = np.abs(y.astype(np.float64) - x.astype(np.float64))
            if diff.size:
                entry = {"max_abs_diff": _jsonable(float(np.max(diff))),
                         "mean_abs_diff": _jsonable(float(np.mean(diff)))}
            else:
                entry = {"max_abs_diff": 0.0, "mean_abs_diff": 0.0}
        result[name] = entry
    return result


def _timed(call: Callable[[], dict], repeats: int) -> tuple[dict, float, int]:
    """(outputs, latency_ms, runs): one warm-up run, then the median of ``repeats`` runs."""
    start = time.perf_counter()
    outputs = call()
    first = (time.perf_counter() - start) * 1000.0
    if repeats <= 1:
        return outputs, first, 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return outputs, statistics.median(times), repeats + 1


class _LRU:
    """A small thread-safe cache whose entries each carry their own lock (loads run outside
    the cache lock, so one slow load does not block every other session)."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.items: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()

    def entry(self, key: tuple, factory: Callable[[], Any]):
        with self.lock:
            item = self.items.get(key)
            if item is None:
                item = factory()
                self.items[key] = item
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            self.items.move_to_end(key)
            return item

    def drop(self, key: tuple, item) -> None:
        with self.lock:
            if self.items.get(key) is item:
                del self.items[key]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_SAVED_MODELS = _LRU(_CACHE_SIZE)
_RESTORED = _LRU(_CACHE_SIZE)


def clear_caches() -> None:
    """Forget every loaded model (tests; the dashboard's "reload" button)."""
    _SAVED_MODELS.clear()
    _RESTORED.clear()
    with _PROTO_LOCK:
        _PROTO_CACHE.clear()


# --------------------------------------------------------------------------------------------
# Loading and running SavedModels

def _missing_op_hint(exc: BaseException) -> str | None:
    match = re.search(r"Op type not registered '([^']+)'", str(exc))
    if not match:
        return None
    op = match.group(1)
    package = next((p for prefix, p in _CUSTOM_OP_PACKAGES if op.startswith(prefix)), None)
    where = f" (from {package})" if package else ""
    return (f"it needs the custom op {op!r}{where}, which this TensorFlow does not have: "
            f"install {package or 'the library that defines it'} and import it before loading")


class _SavedModelEntry:
    """One SavedModel loaded on one device: the TF2 object, else a TF1 session."""

    def __init__(self, path: str, tags: tuple[str, ...], device: str, tf1_graph: bool):
        self.path, self.tags, self.device = path, tags, device
        self.tf1_graph = tf1_graph  # a TF1 export (no object graph): feeds are shape-checked
        self.lock = threading.Lock()
        self.tf2 = None
        self.tf2_error: BaseException | None = None
        self.tf2_tried = False
        self.session = None
        self.tf1_meta = None
        self.tf1_error: BaseException | None = None
        self.use_tf1: set[str] = set()  # signatures whose TF2 call failed and TF1 ran

    def _load_tf2(self):
        with self.lock:
            if not self.tf2_tried:
                self.tf2_tried = True
                t = tf()
                try:
                    with t.device(self.device):
                        self.tf2 = t.saved_model.load(self.path, tags=list(self.tags) or None)
                except Exception as exc:  # noqa: BLE001 - any failure: try the TF1 loader
                    self.tf2_error = exc
        return self.tf2

    def _load_tf1(self):
        with self.lock:
            if self.session is None and self.tf1_error is None:
                t = tf()
                v1 = t.compat.v1
                cfg = v1.ConfigProto(allow_soft_placement=True)
                if self.device == CPU_NAME:
                    cfg.device_count["GPU"] = 0
                graph = t.Graph()
                session = v1.Session(graph=graph, config=cfg)
                try:
                    with graph.as_default():
                        # clear_devices: exports pin ops to the GPU they were made on.
                        self.tf1_meta = v1.saved_model.loader.load(
                            session, list(self.tags), self.path, clear_devices=True)
                    self.session = session
                except Exception as exc:  # noqa: BLE001 - reported with the TF2 error
                    session.close()
                    self.tf1_error = exc
        return self.session

    def _call_tf2(self, signature: str, inputs: dict[str, np.ndarray]) -> Callable[[], dict]:
        t = tf()
        fn = self.tf2.signatures[signature]
        _, spec = fn.structured_input_signature
        if self.tf1_graph:
            # TF2 wraps a TF1 graph without checking feeds (half_plus_two would take [2] for
            # its [-1, 1] input and broadcast); TF Serving and the TF1 session refuse such
            # feeds. The shapes here are the graph's own static ones (not the signature's
            # declarations, which can be wrong), so refusing matches what the session does;
            # the caller then asks the TF1 session, whose own message is what the user sees.
            for k, v in inputs.items():
                if k in spec and not spec[k].shape.is_compatible_with(np.shape(v)):
                    raise ValueError(f"Cannot feed value of shape {np.shape(v)} for input {k!r}, "
                                     f"which has shape {spec[k].shape}")
        with t.device(self.device):
            tensors = {k: t.constant(v, dtype=spec[k].dtype if k in spec else None)
                       for k, v in inputs.items()}

        def call():
            with t.device(self.device):
                out = fn(**tensors)
            if not isinstance(out, Mapping):
                out = {"output_0": out}
            return {k: _numpy(v) for k, v in out.items()}

        return call

    def _call_tf1(self, signature: str, inputs: dict[str, np.ndarray]) -> Callable[[], dict]:
        sd = self.tf1_meta.signature_def[signature]
        feed = {sd.inputs[k].name: v for k, v in inputs.items()}
        fetch = {k: sd.outputs[k].name for k in sd.outputs}
        session = self.session
        return lambda: {k: np.asarray(v) for k, v in session.run(fetch, feed).items()}

    def run(self, sig: SignatureInfo, inputs: dict[str, np.ndarray], repeats: int
            ) -> tuple[dict, float, int]:
        name = sig.name
        tf2_call_error = None
        if name not in self.use_tf1 and self._load_tf2() is not None \
                and name in self.tf2.signatures:
            try:
                return _timed(self._call_tf2(name, inputs), repeats)
            except Exception as exc:  # noqa: BLE001 - try TF1 before blaming the inputs
                tf2_call_error = exc
        if self._load_tf1() is None:
            first = tf2_call_error or self.tf2_error or self.tf1_error
            if tf2_call_error is not None:
                raise _input_error(sig, tf2_call_error)
            hint = _missing_op_hint(self.tf1_error) or _missing_op_hint(first)
            raise UserError(f"cannot load SavedModel {self.path} (tags {_fmt_tags(self.tags)}): "
                            + (hint or tf_error_text(first)))
        try:
            result = _timed(self._call_tf1(name, inputs), repeats)
        except Exception as exc:  # noqa: BLE001 - TensorFlow rejected the inputs
            raise _input_error(sig, exc)
        self.use_tf1.add(name)
        return result


_NOISE = re.compile(r"^(Graph execution error:?|Detected at node|\[\[|File |Traceback|Node:|"
                    r"Call arguments received|\s*$)")


def tf_error_text(exc: BaseException, limit: int = 240) -> str:
    """The line of a TensorFlow error that says what went wrong.

    ``str()`` of an op error starts with "Graph execution error:" and a stack of
    "Detected at node" lines; the cause is the first line that is none of those.
    """
    text = str(getattr(exc, "message", "") or exc)
    for line in text.splitlines():
        line = line.strip()
        if line and not _NOISE.match(line):
            line = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", line)
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return first_line(exc, limit)


def _numpy(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _input_error(sig: SignatureInfo, exc: BaseException) -> UserError:
    hint = _missing_op_hint(exc)
    if hint:
        return UserError(f"signature {sig.name!r} cannot run: {hint}")
    return UserError(f"signature {sig.name!r} rejected the inputs: {tf_error_text(exc)} "
                     f"(it declares {_declared(sig.inputs)})")


def _declared(specs: list[TensorInfo], limit: int = 6) -> str:
    """'x: float32 [-1, 1]; y: ...' for messages, cut after ``limit`` inputs."""
    if not specs:
        return "no inputs"
    text = "; ".join(f"{t.name}: {t.dtype} {_fmt_shape(t.shape)}" for t in specs[:limit])
    return text + (f"; and {len(specs) - limit} more" if len(specs) > limit else "")


def _saved_model_inputs(path: str, tags, sig: SignatureInfo, inputs, batch: int, fill: str
                        ) -> dict[str, np.ndarray]:
    given = dict(inputs or {})
    known = {t.name: t for t in sig.inputs}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"signature {sig.name!r} has no input {', '.join(map(repr, unknown))}: "
                        f"its inputs are {', '.join(known) or '(none)'}")
    unsupported = [t.name for t in sig.inputs if t.encoding != "dense"]
    if unsupported:
        raise UserError(f"signature {sig.name!r} takes sparse or composite inputs "
                        f"({', '.join(unsupported)}), which infer cannot feed yet: pick another "
                        "signature")
    spec_cache: dict[str, Mapping[str, str]] = {}

    def spec():
        if "spec" not in spec_cache:
            spec_cache["spec"] = example_features(path, tags, sig.name)
        return spec_cache["spec"]

    result = {}
    missing = [t for t in sig.inputs if t.name not in given]
    strings = [t for t in missing if t.dtype == "string"]
    if len(strings) == 1 and len([t for t in sig.inputs if t.dtype == "string"]) == 1 and spec():
        # One string input and the graph parses tf.Examples: generate real examples (an empty
        # one fails wherever a feature has no default).
        features = make_inputs({k: (d, [-1]) for k, d in spec().items()}, fill, batch)
        columns = {k: arr.tolist() for k, arr in features.items()}
        result[strings[0].name] = np.array(make_examples(columns, spec()), dtype=object)
        missing = [t for t in missing if t is not strings[0]]
    result.update(make_inputs(missing, fill, batch))
    for name, value in given.items():
        t = known[name]
        result[name] = parse_input_value(value, t.dtype, t.shape, name=name, example_spec=spec)
    return {t.name: result[t.name] for t in sig.inputs}


def run_saved_model(path: str, tags=None, signature: str | None = None, inputs=None,
                    device: str | DeviceChoice = "auto", batch: int = 4, fill: str = "random",
                    allow_unsafe: bool | None = None, repeats: int = DEFAULT_REPEATS
                    ) -> InferenceResult:
    """Run one signature of the SavedModel in folder ``path`` (see :func:`run_inference`)."""
    path = os.fspath(path)
    mg, mg_info, sig = _meta_graph(path, tags, signature)
    check_safe(path, mg_info.tags, sig.name, allow_unsafe)
    arrays = _saved_model_inputs(path, mg_info.tags, sig, inputs, batch, fill)
    choice = device if isinstance(device, DeviceChoice) else choose_device(device)
    reasons = list(choice.reasons)
    name = choice.name
    if choice.kind == "tpu":
        name = CPU_NAME
        reasons.append("SavedModel serving graphs run on GPU/CPU, not TPU")
    if _mutates_state(mg, sig.name):
        repeats = 1
    key = (_norm_dir(path), mg_info.tags, name)
    tf1_graph = not mg.object_graph_def.nodes
    entry = _SAVED_MODELS.entry(key, lambda: _SavedModelEntry(path, mg_info.tags, name,
                                                              tf1_graph))
    try:
        outputs, latency, runs = entry.run(sig, arrays, repeats)
    except UserError:
        if entry.session is None and entry.tf2 is None:
            _SAVED_MODELS.drop(key, entry)  # nothing loaded: try afresh next time
        raise
    return InferenceResult(name, reasons, outputs, latency, None, "saved_model",
                           mg_info.tags, sig.name, path, arrays, runs)


# --------------------------------------------------------------------------------------------
# Builder + checkpoint

def load_builder(spec: str | None = None) -> Callable[[], Any]:
    """The model builder named by ``spec``: a function that returns a fresh Keras model.

    ``spec`` is ``package.module:function`` (imported with importlib; ``function`` may be a
    dotted attribute path) or the path of a ``.keras`` file (loaded with ``safe_mode=True``
    each time the builder is called). Empty: ``TPUCKPT_MODEL``, else the demo's builder.
    """
    spec = (spec or config.get("model") or DEFAULT_BUILDER).strip()
    if spec.lower().endswith(".keras"):
        if not tf().io.gfile.exists(spec):
            raise UserError(f"model file {spec} not found: pass --model package.module:function "
                            "or an existing .keras file")

        def build_from_file():
            tf()  # keras needs TensorFlow imported (quietly) first
            import keras  # Keras 3: tf.keras may be a shim without keras.saving

            try:
                return keras.saving.load_model(spec, safe_mode=True)
            except Exception as exc:  # noqa: BLE001 - unreadable or unsafe .keras file
                raise UserError(f"cannot load {spec}: {first_line(exc)}")

        return build_from_file
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--model {spec!r}: expected package.module:function or a .keras file")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--model {spec}: cannot import {module_name!r} ({first_line(exc)}): "
                        "is it installed or on PYTHONPATH?")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--model {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"--model {spec}: {attr} is not a function")
    return obj


def _var_name(v) -> str:
    return str(getattr(v, "path", None) or getattr(v, "name", None) or v)


def _walk_checkpoint(graph, start: int, live) -> tuple[dict[int, str], set[str], int]:
    """Match the saved object graph from node ``start`` against live object ``live``.

    Returns ({id(live object): checkpoint key of its VARIABLE_VALUE}, every checkpoint key of
    a matched node, matched nodes). This is the matching ``tf.train.Checkpoint.read`` itself
    does: from the root, children are paired by their local names. We repeat it here over the
    saved ``TrackableObjectGraph`` proto and ``tf.train.TrackableView.children`` (public API
    since TF 2.11) because the restore status keeps its matches in private attributes that
    change between releases, and ``assert_consumed()`` only says *that* something is off.
    Raw keys cannot be compared directly: Keras 3 saves a kernel under whichever path the
    object graph reaches first (``optimizer/_trainable_variables/0/...``), not under the model.
    """
    view = tf().train.TrackableView
    variables: dict[int, str] = {}
    used: set[str] = set()
    seen = {start}
    queue = [(start, live)]
    count = 0
    while queue:
        node_id, obj = queue.pop()
        node = graph.nodes[node_id]
        count += 1
        for attr in node.attributes:
            used.add(attr.checkpoint_key)
            if attr.name == "VARIABLE_VALUE":
                variables[id(obj)] = attr.checkpoint_key
        if not node.children:
            continue
        try:
            children = view.children(obj)
        except Exception:  # noqa: BLE001 - an object that cannot list its children matches none
            continue
        for child in node.children:
            target = children.get(child.local_name)
            if target is None or child.node_id in seen:
                continue
            seen.add(child.node_id)
            queue.append((child.node_id, target))
    return variables, used, count


def _restore_report(prefix: str, model) -> tuple[dict, str | None]:
    """(report, attach name) for restoring checkpoint ``prefix`` into ``model``.

    The model is looked for under the root's child ``model`` (``tf.train.Checkpoint(model=...)``),
    else under another root child, else at the root (Keras 2 ``save_weights``); the candidate
    that matches most variables wins. attach name "" means the root itself; None: nothing matched.
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    try:
        reader = tf().train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
    except UnicodeDecodeError:
        raise UserError(f"checkpoint {prefix} has variable names that are not UTF-8: "
                        "TensorFlow cannot restore it into a model; open it in Browse") from None
    except Exception as exc:  # noqa: BLE001 - unreadable index, missing shards
        raise UserError(f"cannot read checkpoint {prefix}: {first_line(exc)}") from None
    keys = sorted(k for k in shapes if k != OBJECT_GRAPH_KEY)
    model_vars = list(model.variables)
    empty = {"status": "nothing matched", "matched": 0,
             "unmatched_model": [_var_name(v) for v in model_vars], "unused_checkpoint": keys}
    if not reader.has_tensor(OBJECT_GRAPH_KEY):
        return empty, None
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    except Exception as exc:  # noqa: BLE001 - truncated data shard, corrupt proto
        raise UserError(f"cannot read the object graph of checkpoint {prefix}: "
                        f"{first_line(exc)}: is its data file complete?") from None
    if not graph.nodes:
        return empty, None
    root = graph.nodes[0]
    candidates = [("model", c.node_id) for c in root.children if c.local_name == "model"]
    candidates += [(c.local_name, c.node_id) for c in root.children if c.local_name != "model"]
    candidates.append(("", 0))
    best = None
    ids = {id(v) for v in model_vars}
    for attach, node_id in candidates:
        variables, used, _ = _walk_checkpoint(graph, node_id, model)
        hits = sum(1 for i in variables if i in ids)
        if best is None or hits > best[0]:
            best = (hits, attach, variables, used)
        if attach == "model" and hits == len(model_vars):
            break
    hits, attach, variables, used = best
    if hits == 0:
        return empty, None
    mismatched = []
    for v in model_vars:
        key = variables.get(id(v))
        if key is not None and key in shapes and list(shapes[key]) != list(v.shape):
            mismatched.append(f"{_var_name(v)} is {list(shapes[key])} in the checkpoint and "
                              f"{list(v.shape)} in the model")
    if mismatched:
        more = f" (and {len(mismatched) - 2} more)" if len(mismatched) > 2 else ""
        raise UserError(f"checkpoint {prefix} does not fit the model: {'; '.join(mismatched[:2])}"
                        f"{more}: is --model the builder that wrote it?")
    unmatched = [_var_name(v) for v in model_vars if id(v) not in variables]
    report = {
        "status": "ok" if not unmatched else "partial",
        "matched": hits,
        "unmatched_model": unmatched,
        "unused_checkpoint": sorted(k for k in keys if k not in used),
    }
    return report, attach


def _model_input_specs(model) -> list[TensorInfo]:
    specs = []
    for i, t in enumerate(getattr(model, "inputs", None) or []):
        shape = getattr(t, "shape", None)
        dims = None if shape is None else [-1 if d is None else int(d) for d in shape]
        dtype = str(getattr(t, "dtype", "float32"))
        dtype = getattr(dtype, "name", dtype)
        specs.append(TensorInfo(getattr(t, "name", None) or f"input_{i}", "", dtype, dims))
    return specs


class _RestoredModel:
    def __init__(self, prefix: str, spec: str, choice: DeviceChoice):
        self.prefix, self.spec, self.choice = prefix, spec, choice
        self.lock = threading.Lock()
        self.model = None
        self.report: dict | None = None
        self.fn = None
        self.specs: list[TensorInfo] = []
        self.output_names: list[str] = []

    def load(self, sample: Mapping[str, np.ndarray] | None) -> None:
        with self.lock:
            if self.model is not None:
                return
            t = tf()
            builder = load_builder(self.spec)
            choice = self.choice
            strategy = choice.strategy or t.distribute.get_strategy()
            device_scope = (t.device(choice.name) if choice.kind != "tpu"
                            else _nullcontext())
            with strategy.scope(), device_scope:
                try:
                    model = builder()
                except UserError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the user's builder failed
                    raise UserError(f"model builder {self.spec} failed: {first_line(exc)}")
                if not list(getattr(model, "variables", [])) and sample:
                    model(_model_args(model, sample, self.spec), training=False)  # build it
            if not hasattr(model, "variables"):
                raise UserError(f"model builder {self.spec} returned {type(model).__name__}, "
                                "not a Keras model")
            if not model.variables:
                raise UserError(f"the model from {self.spec} has no variables until it is "
                                "called: pass --input values so it can be built")
            report, attach = _restore_report(self.prefix, model)
            if attach is None:
                raise UserError(
                    f"checkpoint {self.prefix} matched none of the model's "
                    f"{len(model.variables)} variables: is --model the builder that wrote it? "
                    f"(builder: {self.spec})")
            ckpt = t.train.Checkpoint(root=model) if attach == "" else \
                t.train.Checkpoint(**{attach: model})
            try:
                ckpt.read(self.prefix, options=checkpoint_options(choice)).expect_partial()
            except Exception as exc:  # noqa: BLE001 - dtype mismatches, unreadable shards
                raise UserError(f"cannot restore {self.prefix} into the model: {first_line(exc)}")
            self.specs = _model_input_specs(model)
            self.output_names = list(getattr(model, "output_names", None) or [])

            @t.function(reduce_retracing=True)
            def forward(x):
                return model(x, training=False)

            self.fn = forward
            self.model = model
            self.report = report

    def call(self, args) -> Callable[[], dict]:
        t = tf()
        choice = self.choice

        if choice.kind == "tpu":
            strategy = choice.strategy or t.distribute.get_strategy()

            def call():
                out = strategy.run(self.fn, args=(args,))
                out = t.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], out)
                return self._named(out)
        else:
            def call():
                with t.device(choice.name):
                    out = self.fn(args)
                return self._named(out)
        return call

    def _named(self, out) -> dict[str, np.ndarray]:
        if isinstance(out, Mapping):
            return {str(k): _numpy(v) for k, v in out.items()}
        if isinstance(out, (list, tuple)):
            names = self.output_names if len(self.output_names) == len(out) else \
                [f"output_{i}" for i in range(len(out))]
            return {n: _numpy(v) for n, v in zip(names, out)}
        name = self.output_names[0] if len(self.output_names) == 1 else "output_0"
        return {name: _numpy(out)}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _model_args(model, arrays: Mapping[str, np.ndarray], spec: str):
    """What to pass to ``model(...)``: the one array, or a dict keyed by input name."""
    names = [t.name for t in _model_input_specs(model)]
    if len(arrays) == 1 and len(names) <= 1:
        return next(iter(arrays.values()))
    unknown = sorted(set(arrays) - set(names)) if names else []
    if unknown:
        raise UserError(f"the model from {spec} has no input {', '.join(map(repr, unknown))}: "
                        f"its inputs are {', '.join(names)}")
    return dict(arrays)


def _resolve_prefix(path: str) -> str:
    """The checkpoint prefix that ``path`` names (a folder means its latest checkpoint)."""
    try:
        from . import sources
    except ImportError:
        sources = None
    if sources is not None and hasattr(sources, "resolve_checkpoint"):
        return sources.resolve_checkpoint(path).prefix
    gfile = tf().io.gfile
    path = os.fspath(path)
    stripped = re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
    if gfile.exists(stripped + ".index"):
        return stripped
    if gfile.isdir(path):
        latest = tf().train.latest_checkpoint(path)
        if latest:
            return latest
    raise UserError(f"no checkpoint at {path}: pass a folder with a 'checkpoint' file, "
                    "a prefix (without .index) or a SavedModel folder")


def restore_and_run(ckpt_prefix: str, builder_spec: str | None = None, inputs=None,
                    device: str | DeviceChoice = "auto", batch: int = 4, fill: str = "random",
                    repeats: int = DEFAULT_REPEATS) -> InferenceResult:
    """Build the model, restore checkpoint ``ckpt_prefix`` into it and run ``inputs`` through it.

    The model is built under the chosen device's strategy (TPUStrategy on a TPU) and restored
    with ``tf.train.Checkpoint(model=model).read(...)``; ``result.restore`` reports what
    matched (see :func:`_restore_report`); nothing matched raises :class:`UserError`. On a TPU
    the call goes through ``strategy.run`` (outputs of the first replica); elsewhere
    ``model(x, training=False)`` under ``tf.device``. Built and restored models are cached per
    (prefix, builder, device).
    """
    spec = (builder_spec or config.get("model") or DEFAULT_BUILDER).strip()
    choice = device if isinstance(device, DeviceChoice) else choose_device(device)
    prefix = os.fspath(ckpt_prefix)
    given = {k: v for k, v in (inputs or {}).items()}
    key = (prefix, spec, choice.kind, choice.name)
    entry = _RESTORED.entry(key, lambda: _RestoredModel(prefix, spec, choice))
    try:
        # Inputs typed by the model's declared inputs where it has them; plain float32 arrays
        # otherwise (subclassed models).
        sample = {k: (v if isinstance(v, np.ndarray) else
                      parse_input_value(v, "float32", None, name=k)) for k, v in given.items()}
        entry.load(sample)
    except UserError:
        _RESTORED.drop(key, entry)
        raise
    specs = {t.name: t for t in entry.specs}
    arrays: dict[str, np.ndarray] = {}
    if len(given) == 1 and len(specs) == 1:  # one input: any name will do
        (gname, value), t = next(iter(given.items())), next(iter(specs.values()))
        arrays[gname] = parse_input_value(value, t.dtype, t.shape, name=gname)
    else:
        for name, value in given.items():
            t = specs.get(name)
            arrays[name] = parse_input_value(value, t.dtype if t else "float32",
                                             t.shape if t else None, name=name)
        arrays.update(make_inputs([t for n, t in specs.items() if n not in given], fill, batch))
    if not arrays:
        raise UserError(f"the model from {spec} declares no inputs: pass --input NAME=VALUE")
    args = _model_args(entry.model, arrays, spec)
    try:
        outputs, latency, runs = _timed(entry.call(args), repeats)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - TensorFlow rejected the inputs
        expected = _declared(entry.specs) if entry.specs else "inputs it does not declare"
        raise UserError(f"the model rejected the inputs: {tf_error_text(exc)} "
                        f"(it expects {expected})")
    return InferenceResult(choice.name, list(choice.reasons), outputs, latency,
                           dict(entry.report), "checkpoint", None, None, prefix, arrays, runs)


# --------------------------------------------------------------------------------------------
# The one entry point

def _serving_version_dir(path: str, broken_too: bool = False) -> str | None:
    """TensorFlow Serving's layout: a folder of numbered versions -> the highest SavedModel.

    ``broken_too``: also accept a version folder that holds only ``variables/`` (so that the
    error names that folder).
    """
    gfile = tf().io.gfile
    try:
        if not gfile.isdir(path):
            return None
        names = gfile.listdir(path)
    except Exception:  # noqa: BLE001 - not a folder, unreachable bucket
        return None
    versions = sorted((int(n.strip("/")), n.strip("/")) for n in names if n.strip("/").isdigit())
    for _, name in reversed(versions):
        candidate = _join(path, name)
        if has_saved_model_pb(candidate) or (broken_too and _is_saved_model(candidate)):
            return candidate
    return None


def _is_saved_model(path: str) -> bool:
    """A SavedModel folder, or one that lacks only saved_model.pb (sources' rule)."""
    try:
        from . import sources
    except ImportError:
        sources = None
    if sources is not None and hasattr(sources, "is_saved_model"):
        return bool(sources.is_saved_model(path))
    gfile = tf().io.gfile
    return has_saved_model_pb(path) or gfile.exists(_join(path, "variables", "variables.index"))


def run_inference(path: str, model: str | None = None, tags=None, signature: str | None = None,
                  inputs: Mapping[str, Any] | None = None, device: str = "auto", batch: int = 4,
                  fill: str = "random", *, allow_unsafe: bool | None = None,
                  repeats: int = DEFAULT_REPEATS) -> InferenceResult:
    """Run test inputs through the model at ``path``; what ``infer`` and the Infer page call.

    ``path``: a SavedModel folder (or a TensorFlow Serving folder of numbered versions: the
    highest) runs the signature that :func:`pick` chooses, on GPU or CPU; anything else is a
    checkpoint (a folder means its latest one) restored into the builder ``model`` (default:
    ``TPUCKPT_MODEL``, else the demo's). A folder with ``variables/`` but no saved_model.pb is
    an error unless a builder is named, which then gets those variables. ``inputs`` maps an
    input name to an array or to text for :func:`parse_input_value`; inputs left out are
    generated (``fill``: random, zeros, ones; unknown dimensions = ``batch``). ``latency_ms`` is
    the median of ``repeats`` timed runs after one warm-up (see :class:`InferenceResult`).
    """
    path = os.fspath(path)
    args = (tags, signature, inputs, device, batch, fill, allow_unsafe, repeats)
    if has_saved_model_pb(path):
        return run_saved_model(path, *args)
    version = _serving_version_dir(path)
    if version is not None:
        return run_saved_model(version, *args)
    builder_named = bool(model or config.get("model"))
    broken = path if _is_saved_model(path) else _serving_version_dir(path, broken_too=True)
    if broken is not None and not builder_named:
        _read_saved_model(broken)  # raises: "... has no saved_model.pb: it is not a SavedModel"
    prefix = _resolve_prefix(broken or path)
    return restore_and_run(prefix, model, inputs, device, batch, fill, repeats)
