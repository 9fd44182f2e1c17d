"""What running one signature of a SavedModel executes, read from its graph before loading it.

:func:`scan_signature` and :func:`check_safe` refuse signatures that read or write files or
call Python (like ``saved_model_cli scan``, but only over what the signature and the load-time
initializers reach); :func:`mutates_state` tells whether a run changes variables (then it is
not repeated for timing); :func:`example_features` reads the tf.Example features that a
serving graph parses, so that inputs for Estimator and TFX exports can be built.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from tpuckpt_viz import config
from tpuckpt_viz.errors import UserError
from tpuckpt_viz.inference.savedmodel import dtype_name, meta_graph
from tpuckpt_viz.tfcompat import tf

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


def scan_signature(path: str, tags=None, signature: str | None = None) -> list[str]:
    """The unsafe ops (see ``UNSAFE_OPS``) that running ``signature`` would execute, sorted."""
    mg, _, sig = meta_graph(path, tags, signature)
    return sorted({node.op for node, _ in _walk(mg, sig.name)} & UNSAFE_OPS)


def check_safe(path: str, tags=None, signature: str | None = None,
               allow_unsafe: bool | None = None) -> None:
    """Raise :class:`UserError` where the signature uses unsafe ops, unless they are allowed
    (``allow_unsafe``, or the setting TPUCKPT_ALLOW_UNSAFE_OPS)."""
    if allow_unsafe or config.get_bool("allow_unsafe_ops"):
        return
    bad = scan_signature(path, tags, signature)
    if bad:
        _, _, sig = meta_graph(path, tags, signature)
        raise UserError(f"refusing to run signature {sig.name!r} of {path}: it uses "
                        f"file-system or Python ops ({', '.join(bad)}); if you trust this model, "
                        "pass --allow-unsafe-ops (infer, serve) or set TPUCKPT_ALLOW_UNSAFE_OPS=1")


def mutates_state(mg, signature: str) -> bool:
    """Whether running ``signature`` of MetaGraphDef ``mg`` assigns variables or tables."""
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
    so that inputs for Estimator and TFX exports can be built with ``make_examples``.
    Empty where the signature parses no tf.Example.
    """
    mg, _, sig = meta_graph(path, tags, signature)
    top = {n.name: n for n in mg.graph_def.node}
    features: dict[str, str] = {}

    def types(node, attr):
        return [dtype_name(t) for t in node.attr[attr].list.type]

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
