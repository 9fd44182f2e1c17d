"""What running one signature of a SavedModel executes, read from its graph before loading it.

:func:`scan_signature` and :func:`check_safe` refuse signatures that read or write files or
call Python (like ``saved_model_cli scan``, but only over what the signature and the load-time
initializers reach); :func:`mutates_state` tells whether a run changes variables (then it is
not repeated for timing); :func:`example_features` reads the tf.Example features that a
serving graph parses, so that inputs for Estimator and TFX exports can be built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # datasets that read or write files (or run a serialized graph that the scan cannot see)
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset",
    "SqlDataset", "ExperimentalSqlDataset", "MatchingFilesDataset",
    "ExperimentalMatchingFilesDataset", "SaveDataset", "SaveDatasetV2", "LoadDataset",
    "ExperimentalLMDBDataset", "LMDBDataset", "SnapshotDataset", "SnapshotDatasetV2",
    "SnapshotDatasetReader", "SnapshotChunkDataset", "ListSnapshotChunksDataset",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "CacheDatasetV2", "CacheDataset",
    "DatasetFromGraph", "DistributedSave",
    "PrintV2",  # output_stream may name a file
    # Python
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
})
# Lookup-table initializers that read a file: fine when the file is one of the SavedModel's own
# assets (the loader passes its path), refused otherwise.
TABLE_FILE_OPS = frozenset({"InitializeTableFromTextFile", "InitializeTableFromTextFileV2"})
# What the TF1 loader's restore op (saver_def.restore_op_name) may do with files: read the
# SavedModel's variables/, whose path the loader feeds.
_RESTORE_OPS = frozenset({"Restore", "RestoreV2", "RestoreSlice"})
RESTORE_ORIGIN = "the TF1 saver's restore op"
_PROTO_OPS = frozenset({"DecodeProtoV2", "EncodeProto"})  # descriptor_source may name a file

# Ops that change state: a signature that reaches one (a counter's incr, a train step) is run
# once, not warmed up and repeated for timing.
_MUTATING_PREFIXES = ("Assign", "ResourceApply", "Apply", "ScatterAdd", "ScatterSub",
                      "ScatterUpdate", "ResourceScatter", "ScatterNd",
                      "ResourceStridedSliceAssign",
                      "StridedSliceAssign", "TensorArrayWrite", "QueueEnqueue", "QueueDequeue",
                      "LookupTableInsert", "LookupTableRemove", "MutableHashTable")
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


@dataclass
class Reached:
    """One node that loading the SavedModel and running a signature may execute."""

    node: Any  # NodeDef
    fdef: Any  # the FunctionDef it sits in, or None for the top-level graph
    origin: str  # what runs it: "signature 'x'", "the TF1 saver's restore op", ...
    args: Mapping[str, str] = field(default_factory=dict)  # fdef arg -> "asset"/"path:..."

    def where(self) -> str:
        place = f"function {self.fdef.signature.name}" if self.fdef is not None else "the graph"
        return f"{self.node.op} (node {self.node.name!r} in {place}, run by {self.origin})"


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


def _node_functions(node) -> list[str]:
    kind = node.WhichOneof("kind")
    if kind == "function":
        return list(node.function.concrete_functions)
    if kind == "bare_concrete_function":
        return [node.bare_concrete_function.concrete_function_name]
    return []


def signature_functions(mg, signature: str) -> list[str]:
    """The concrete functions that the TF2 loader calls for ``signature``.

    ``tf.saved_model.load`` builds ``.signatures`` from the object graph: the root's child
    ``signatures`` (a ``signature_map``) has one child per signature, a function node. That,
    not the ``signature_def``, is what runs; a file can make the two disagree.
    """
    nodes = mg.object_graph_def.nodes
    if not nodes:
        return []
    sigmap = next((c.node_id for c in nodes[0].children if c.local_name == "signatures"), None)
    if sigmap is None or not 0 <= sigmap < len(nodes):
        return []
    for child in nodes[sigmap].children:
        if child.local_name == signature and 0 <= child.node_id < len(nodes):
            return _node_functions(nodes[child.node_id])
    return []


def _init_functions(mg) -> list[tuple[str, str]]:
    """(function, origin) the TF2 loader runs at load time: resource creators and
    initializers (tables), and the restore functions of saveable objects."""
    nodes = mg.object_graph_def.nodes
    found = []
    for i, node in enumerate(nodes):
        if node.WhichOneof("kind") in ("resource", "asset"):
            for child in node.children:
                if 0 <= child.node_id < len(nodes):
                    found += [(f, f"the load-time initializer {child.local_name!r} of object "
                                  f"{i}") for f in _node_functions(nodes[child.node_id])]
        for name, saveable in node.saveable_objects.items():
            for ref in (saveable.restore_function,):
                if 0 < ref < len(nodes):
                    found += [(f, f"the load-time restore function of {name!r}")
                              for f in _node_functions(nodes[ref])]
    return found


def _bound_args(mg, fname: str, fdef) -> dict[str, str]:
    """What the TF2 loader binds to a function's captured inputs: "asset" for one of the
    SavedModel's assets, "const:NODE" for a captured constant, nothing else."""
    saved = mg.object_graph_def.concrete_functions.get(fname)
    if saved is None or not saved.bound_inputs:
        return {}
    nodes = mg.object_graph_def.nodes
    args = [a.name for a in fdef.signature.input_arg]
    bound = list(saved.bound_inputs)
    result = {}
    for arg, node_id in zip(args[len(args) - len(bound):], bound):
        if not 0 <= node_id < len(nodes):
            continue
        kind = nodes[node_id].WhichOneof("kind")
        if kind == "asset":
            result[arg] = "asset"
        elif kind == "constant":
            result[arg] = "const:" + nodes[node_id].constant.operation
    return result


def walk_nodes(mg, signature: str, include_init: bool = True) -> list[Reached]:
    """Every node that loading the SavedModel and running ``signature`` may execute.

    Seeds: the signature as the TF2 loader resolves it (the object graph's signature map) and
    as the TF1 loader does (``signature_def``: the top-level nodes its outputs depend on,
    transitively); with ``include_init``, the load-time work too: init ops and table
    initializers (collections and ``__saved_model_init_op``), the TF1 saver's restore op, and
    the TF2 loader's resource initializers and restore functions. Every function a reached
    node calls (call ops, function-valued attributes such as While's body and If's branches),
    transitively, counts whole: inside a tf.function every stateful op runs anyway
    (automatic control dependencies).
    """
    graph = mg.graph_def
    nodes = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    sd = mg.signature_def[signature] if signature in mg.signature_def else None
    stack: list[tuple[str, str]] = []
    if sd is not None:
        stack += [(_node_name(t), f"signature_def {signature!r}") for info in sd.outputs.values()
                  for t in _tensor_names(info)]
    func_stack: list[tuple[str, str, dict]] = [
        (f, f"signature {signature!r} (object graph)", {})
        for f in signature_functions(mg, signature)]
    if include_init:
        for key in ("saved_model_main_op", "legacy_init_op", "main_op", "table_initializer"):
            if key in mg.collection_def:
                stack += [(_node_name(n), f"the load-time {key}")
                          for n in mg.collection_def[key].node_list.value]
        if "__saved_model_init_op" in mg.signature_def:
            init = mg.signature_def["__saved_model_init_op"]
            stack += [(_node_name(t), "the load-time init op") for info in init.outputs.values()
                      for t in _tensor_names(info)]
        if mg.saver_def.restore_op_name:
            stack.append((_node_name(mg.saver_def.restore_op_name), RESTORE_ORIGIN))
        func_stack += [(f, origin, {}) for f, origin in _init_functions(mg)]
    # The loader feeds the SavedModel's variables/ path into the saver's filename tensor.
    # Its assets' paths go into their tensors the same way.
    fed = {name: "asset" for name in _asset_tensors(mg)}
    fed.update({name: "asset" for name in _asset_variable_reads(mg, set(fed), nodes)})
    if mg.saver_def.filename_tensor_name:
        fed[_node_name(mg.saver_def.filename_tensor_name)] = "saver_filename"
    found: list[Reached] = []
    seen: set[tuple[str, bool]] = set()  # the restore op's reads are judged on their own
    while stack:
        name, origin = stack.pop()
        key = (name, origin == RESTORE_ORIGIN)
        if key in seen or name not in nodes:
            continue
        seen.add(key)
        node = nodes[name]
        found.append(Reached(node, None, origin, fed))
        stack += [(_node_name(i), origin) for i in node.input]
        func_stack += [(f, origin, _passed_args(node, f, functions, fed))
                       for f in _called_functions(node, functions)]
    seen_funcs: set[tuple] = set()
    while func_stack:
        fname, origin, passed = func_stack.pop()
        fdef = functions.get(fname)
        if fdef is None:
            continue
        args = {**_bound_args(mg, fname, fdef), **passed}
        key = (fname, tuple(sorted(args.items())))
        if key in seen_funcs or len(seen_funcs) > 100_000:
            continue
        seen_funcs.add(key)
        for node in fdef.node_def:
            found.append(Reached(node, fdef, origin, args))
            for callee in _called_functions(node, functions):
                func_stack.append((callee, origin, _passed_args(node, callee, functions, args)))
    return found


def _passed_args(node, callee: str, functions, args: Mapping[str, str]) -> dict[str, str]:
    """The caller's asset/constant bindings that a call node hands on to ``callee``'s args."""
    if node.op not in _CALL_OPS or not args or callee not in functions:
        return {}
    inputs = [i for i in node.input if not i.startswith("^")]
    params = [a.name for a in functions[callee].signature.input_arg]
    return {p: args[_node_name(i)] for p, i in zip(params, inputs) if _node_name(i) in args}


def _source(ref: str, scope: Mapping[str, Any]) -> str:
    """The node (or function argument) that ``ref`` comes from, through Identity nodes."""
    name = _node_name(ref)
    for _ in range(8):
        node = scope.get(name)
        if node is None or node.op != "Identity" or not node.input:
            return name
        name = _node_name(node.input[0])
    return name


def _restores_own_variables(r: Reached, top: Mapping[str, Any]) -> bool:
    """Whether restore op ``r`` reads the checkpoint whose path the loader feeds (the
    SavedModel's own variables/), not a path of its own."""
    refs = [i for i in r.node.input if not i.startswith("^")]
    if not refs:
        return False
    scope = top if r.fdef is None else {n.name: n for n in r.fdef.node_def}
    return r.args.get(_source(refs[0], scope)) == "saver_filename"


def _const_value(node) -> str | None:
    if node is None or node.op != "Const":
        return None
    try:
        value = tf().make_ndarray(node.attr["value"].tensor)
    except Exception:  # noqa: BLE001 - not a readable constant
        return None
    if value.size != 1:
        return None
    item = value.reshape(-1)[0]
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def _inside_assets(value: str | None, model_dir: str | None) -> bool:
    if not value or not model_dir or "://" in model_dir:
        return False
    import os

    assets = os.path.realpath(os.path.join(model_dir, "assets"))
    return os.path.realpath(value).startswith(assets + os.sep)


def _asset_tensors(mg) -> set[str]:
    """The graph nodes whose value the TF1 loader sets to an asset's path: ``asset_file_def``,
    or the older ``saved_model_assets`` collection."""
    tf()  # quiet import first: the protos alone print TF's banner
    from tensorflow.core.protobuf import meta_graph_pb2

    names = {_node_name(a.tensor_info.name) for a in mg.asset_file_def}
    if "saved_model_assets" in mg.collection_def:
        for item in mg.collection_def["saved_model_assets"].any_list.value:
            asset = meta_graph_pb2.AssetFileDef()
            if item.Unpack(asset):
                names.add(_node_name(asset.tensor_info.name))
    return names


def _asset_variable_reads(mg, assets: set[str], nodes: Mapping[str, Any]) -> list[str]:
    """ReadVariableOp nodes of variables that hold an asset's path and nothing else (TF2
    exports keep asset paths in variables assigned from the asset tensors at load time)."""
    values: dict[str, set[bool]] = {}
    for node in mg.graph_def.node:
        if node.op == "AssignVariableOp" and len(node.input) >= 2:
            handle = _source(node.input[0], nodes)
            values.setdefault(handle, set()).add(_source(node.input[1], nodes) in assets)
    held = {h for h, kinds in values.items() if kinds == {True}}
    return [n.name for n in mg.graph_def.node
            if n.op == "ReadVariableOp" and n.input and _source(n.input[0], nodes) in held]


def _reads_own_asset(r: Reached, top: Mapping[str, Any], model_dir: str | None) -> bool:
    """Whether table initializer ``r`` reads one of the SavedModel's own assets: a path the
    loader feeds from assets/ (an asset tensor, a function argument bound to an asset), or a
    constant path inside the SavedModel's assets/ folder."""
    refs = [i for i in r.node.input if not i.startswith("^")]
    if len(refs) < 2:
        return False
    scope = top if r.fdef is None else {n.name: n for n in r.fdef.node_def}
    source = _source(refs[1], scope)
    binding = r.args.get(source)
    if binding == "asset":
        return True
    if binding and binding.startswith("const:"):
        return _inside_assets(_const_value(top.get(binding[len("const:"):])), model_dir)
    return _inside_assets(_const_value(scope.get(source)), model_dir)


def unsafe_nodes(mg, signature: str, model_dir: str | None = None) -> list[Reached]:
    """The reached nodes (see :func:`walk_nodes`) that touch files or call Python."""
    bad = []
    top = {n.name: n for n in mg.graph_def.node}
    for r in walk_nodes(mg, signature):
        op = r.node.op
        if op in _RESTORE_OPS and r.origin == RESTORE_ORIGIN and _restores_own_variables(r, top):
            continue  # reads the SavedModel's variables/, whose path the loader feeds
        if op in UNSAFE_OPS:
            bad.append(r)
        elif op in TABLE_FILE_OPS and not _reads_own_asset(r, top, model_dir):
            bad.append(r)
        elif op in _PROTO_OPS and r.node.attr["descriptor_source"].s not in (b"", b"local://"):
            bad.append(r)
    return bad


def scan_signature(path: str, tags=None, signature: str | None = None) -> list[str]:
    """The unsafe ops (see ``UNSAFE_OPS``, ``TABLE_FILE_OPS``) that loading the SavedModel and
    running ``signature`` would execute, sorted."""
    mg, _, sig = meta_graph(path, tags, signature)
    return sorted({r.node.op for r in unsafe_nodes(mg, sig.name, path)})


def check_safe(path: str, tags=None, signature: str | None = None,
               allow_unsafe: bool | None = None) -> None:
    """Raise :class:`UserError` where loading the SavedModel or running the signature would
    touch files outside its own folder or call Python, naming the ops and where they sit,
    unless that is allowed (``allow_unsafe``, or the setting TPUCKPT_ALLOW_UNSAFE_OPS). Read
    from saved_model.pb before anything is loaded."""
    if allow_unsafe or config.get_bool("allow_unsafe_ops"):
        return
    mg, _, sig = meta_graph(path, tags, signature)
    bad = unsafe_nodes(mg, sig.name, path)
    if bad:
        ops = sorted({r.node.op for r in bad})
        where = "; ".join(dict.fromkeys(r.where() for r in bad[:4]))
        more = f"; and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise UserError(f"refusing to run signature {sig.name!r} of {path}: it uses "
                        f"file-system or Python ops ({', '.join(ops)}): {where}{more}; if you "
                        "trust this model, pass --allow-unsafe-ops (infer, serve) or set "
                        "TPUCKPT_ALLOW_UNSAFE_OPS=1")


def mutates_state(mg, signature: str) -> bool:
    """Whether running ``signature`` of MetaGraphDef ``mg`` assigns variables or tables."""
    return any(r.node.op.startswith(_MUTATING_PREFIXES)
               for r in walk_nodes(mg, signature, include_init=False))


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

    for r in walk_nodes(mg, sig.name, include_init=False):
        node, fdef = r.node, r.fdef
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
