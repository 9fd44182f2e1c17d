"""The few TensorFlow protos a checkpoint's index and object graph need, without TensorFlow.

``tensorflow.core.protobuf.*_pb2`` import all of TensorFlow (their parent package's
``__init__``): seconds, and 600 MB that a worker reading shards does not need. The field
numbers and types below are public facts of the formats (TensorFlow's ``tensor_bundle.proto``,
``tensor_shape.proto``, ``tensor_slice.proto``, ``versions.proto``,
``trackable_object_graph.proto``, ``checkpoint_state.proto``; and for a TF1 graph's
collections ``meta_graph.proto``, ``saved_model.proto``, ``variable.proto``, ``graph.proto``,
``node_def.proto``), declared here under the
package ``tpuckpt_viz.tf`` in a PRIVATE descriptor pool: registering them as ``tensorflow.*``
in protobuf's default pool would make a later ``import tensorflow`` fail with "duplicate
symbol". The tests decode every real checkpoint with these and with TensorFlow's own classes,
in one process, and compare.

Differences from TensorFlow's definitions, on purpose: enum fields (``DataType``,
``Endianness``) are declared ``int32`` (the same varint on the wire; values outside the enum
stay visible as numbers for the index validation); the object graph leaves out the fields
nothing here reads (``registered_saver``, ``has_checkpoint_values``), which protobuf keeps as
unknown fields. The meta graph messages hold only what is read: a ``MetaGraphDef``'s
``meta_info_def`` (its ``tags``) and ``collection_def``; a ``VariableDef``'s names and flags; a
``SavedModel``'s ``meta_graphs``. A ``GraphDef`` (to tell a frozen graph from other protobufs)
declares every field with its wire type, so a file parses exactly where TensorFlow's parses at
that level, but keeps a node's ``attr`` values and the graph's ``library`` and ``debug_info``
as undecoded bytes.

Public classes: :data:`BundleHeaderProto`, :data:`BundleEntryProto`, :data:`TensorShapeProto`,
:data:`TensorSliceProto`, :data:`VersionDef`, :data:`TrackableObjectGraph`,
:data:`CheckpointState`, :data:`CollectionDef`, :data:`MetaGraphDef`, :data:`SavedModel`,
:data:`VariableDef`, :data:`GraphDef`, :data:`NodeDef`.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "tpuckpt_viz.tf"

_T = descriptor_pb2.FieldDescriptorProto
_INT32, _INT64, _FIXED32, _BOOL = _T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_FIXED32, _T.TYPE_BOOL
_STRING, _DOUBLE, _MESSAGE = _T.TYPE_STRING, _T.TYPE_DOUBLE, _T.TYPE_MESSAGE
_BYTES, _FLOAT = _T.TYPE_BYTES, _T.TYPE_FLOAT
_ONE, _MANY = _T.LABEL_OPTIONAL, _T.LABEL_REPEATED


def _message(name: str, fields: list, nested: tuple = (), oneofs: dict | None = None):
    """A DescriptorProto; ``fields`` are (name, number, type, label[, message type name])."""
    msg = descriptor_pb2.DescriptorProto(name=name)
    for f in fields:
        field = msg.field.add(name=f[0], number=f[1], type=f[2], label=f[3])
        if len(f) > 4:
            field.type_name = f".{PACKAGE}.{f[4]}"
    for n in nested:
        msg.nested_type.add().CopyFrom(n)
    for i, (oneof, members) in enumerate((oneofs or {}).items()):
        msg.oneof_decl.add(name=oneof)
        for f in msg.field:
            if f.name in members:
                f.oneof_index = i
    return msg


def _map_entry(name: str, key_type: int, value: tuple):
    """The nested ``<Name>Entry`` message of a ``map<>`` field: ``value`` is (type[, message
    type name])."""
    msg = _message(name, [("key", 1, key_type, _ONE), ("value", 2, *value[:1], _ONE,
                                                       *value[1:])])
    msg.options.map_entry = True
    return msg


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="tpuckpt_viz/tf_checkpoint.proto",
                                             package=PACKAGE, syntax="proto3")
    fdp.message_type.extend([
        _message("VersionDef", [("producer", 1, _INT32, _ONE), ("min_consumer", 2, _INT32, _ONE),
                                ("bad_consumers", 3, _INT32, _MANY)]),
        _message("TensorShapeProto", [
            ("dim", 2, _MESSAGE, _MANY, "TensorShapeProto.Dim"),
            ("unknown_rank", 3, _BOOL, _ONE),
        ], nested=(_message("Dim", [("size", 1, _INT64, _ONE), ("name", 2, _STRING, _ONE)]),)),
        _message("TensorSliceProto", [
            ("extent", 1, _MESSAGE, _MANY, "TensorSliceProto.Extent"),
        ], nested=(_message("Extent", [("start", 1, _INT64, _ONE), ("length", 2, _INT64, _ONE)],
                            oneofs={"has_length": ("length",)}),)),
        _message("BundleHeaderProto", [
            ("num_shards", 1, _INT32, _ONE),
            ("endianness", 2, _INT32, _ONE),  # enum Endianness { LITTLE = 0; BIG = 1; }
            ("version", 3, _MESSAGE, _ONE, "VersionDef"),
        ]),
        _message("BundleEntryProto", [
            ("dtype", 1, _INT32, _ONE),  # enum DataType
            ("shape", 2, _MESSAGE, _ONE, "TensorShapeProto"),
            ("shard_id", 3, _INT32, _ONE),
            ("offset", 4, _INT64, _ONE),
            ("size", 5, _INT64, _ONE),
            ("crc32c", 6, _FIXED32, _ONE),
            ("slices", 7, _MESSAGE, _MANY, "TensorSliceProto"),
        ]),
        _message("TrackableObjectGraph", [
            ("nodes", 1, _MESSAGE, _MANY, "TrackableObjectGraph.TrackableObject"),
        ], nested=(_message("TrackableObject", [
            ("children", 1, _MESSAGE, _MANY, "TrackableObjectGraph.TrackableObject.ObjectReference"),
            ("attributes", 2, _MESSAGE, _MANY,
             "TrackableObjectGraph.TrackableObject.SerializedTensor"),
            ("slot_variables", 3, _MESSAGE, _MANY,
             "TrackableObjectGraph.TrackableObject.SlotVariableReference"),
        ], nested=(
            _message("ObjectReference", [("node_id", 1, _INT32, _ONE),
                                         ("local_name", 2, _STRING, _ONE)]),
            _message("SerializedTensor", [("name", 1, _STRING, _ONE),
                                          ("full_name", 2, _STRING, _ONE),
                                          ("checkpoint_key", 3, _STRING, _ONE)]),
            _message("SlotVariableReference", [("original_variable_node_id", 1, _INT32, _ONE),
                                               ("slot_name", 2, _STRING, _ONE),
                                               ("slot_variable_node_id", 3, _INT32, _ONE)]),
        )),)),
        _message("CheckpointState", [
            ("model_checkpoint_path", 1, _STRING, _ONE),
            ("all_model_checkpoint_paths", 2, _STRING, _MANY),
            ("all_model_checkpoint_timestamps", 3, _DOUBLE, _MANY),
            ("last_preserved_timestamp", 4, _DOUBLE, _ONE),
        ]),
        # meta_graph.proto: only the collections and the tags.
        _message("CollectionDef", [
            ("node_list", 1, _MESSAGE, _ONE, "CollectionDef.NodeList"),
            ("bytes_list", 2, _MESSAGE, _ONE, "CollectionDef.BytesList"),
            ("int64_list", 3, _MESSAGE, _ONE, "CollectionDef.Int64List"),
            ("float_list", 4, _MESSAGE, _ONE, "CollectionDef.FloatList"),
            ("any_list", 5, _MESSAGE, _ONE, "CollectionDef.AnyList"),
        ], nested=(
            _message("NodeList", [("value", 1, _STRING, _MANY)]),
            _message("BytesList", [("value", 1, _BYTES, _MANY)]),
            _message("Int64List", [("value", 1, _INT64, _MANY)]),
            _message("FloatList", [("value", 1, _FLOAT, _MANY)]),
            # google.protobuf.Any: type_url = 1, value = 2
            _message("AnyList", [("value", 1, _MESSAGE, _MANY, "CollectionDef.AnyList.Any")],
                     nested=(_message("Any", [("type_url", 1, _STRING, _ONE),
                                              ("value", 2, _BYTES, _ONE)]),)),
        ), oneofs={"kind": ("node_list", "bytes_list", "int64_list", "float_list",
                            "any_list")}),
        _message("MetaGraphDef", [
            ("meta_info_def", 1, _MESSAGE, _ONE, "MetaGraphDef.MetaInfoDef"),
            ("collection_def", 4, _MESSAGE, _MANY, "MetaGraphDef.CollectionDefEntry"),
        ], nested=(
            _message("MetaInfoDef", [("meta_graph_version", 1, _STRING, _ONE),
                                     ("tags", 4, _STRING, _MANY),
                                     ("tensorflow_version", 5, _STRING, _ONE),
                                     ("tensorflow_git_version", 6, _STRING, _ONE)]),
            _map_entry("CollectionDefEntry", _STRING, (_MESSAGE, "CollectionDef")),
        )),
        # saved_model.proto
        _message("SavedModel", [
            ("saved_model_schema_version", 1, _INT64, _ONE),
            ("meta_graphs", 2, _MESSAGE, _MANY, "MetaGraphDef"),
        ]),
        # variable.proto (enums as int32, as above; save_slice_info_def left out)
        _message("VariableDef", [
            ("variable_name", 1, _STRING, _ONE),
            ("initializer_name", 2, _STRING, _ONE),
            ("snapshot_name", 3, _STRING, _ONE),
            ("is_resource", 5, _BOOL, _ONE),
            ("initial_value_name", 6, _STRING, _ONE),
            ("trainable", 7, _BOOL, _ONE),
            ("synchronization", 8, _INT32, _ONE),
            ("aggregation", 9, _INT32, _ONE),
        ]),
        # graph.proto and node_def.proto: every field at its wire type; nested messages that
        # nothing reads (attribute values, the function library, debug info) as bytes.
        _message("NodeDef", [
            ("name", 1, _STRING, _ONE),
            ("op", 2, _STRING, _ONE),
            ("input", 3, _STRING, _MANY),
            ("device", 4, _STRING, _ONE),
            ("attr", 5, _MESSAGE, _MANY, "NodeDef.AttrEntry"),
            ("experimental_debug_info", 6, _BYTES, _ONE),
            ("experimental_type", 7, _BYTES, _ONE),
        ], nested=(_map_entry("AttrEntry", _STRING, (_BYTES,)),)),
        _message("GraphDef", [
            ("node", 1, _MESSAGE, _MANY, "NodeDef"),
            ("library", 2, _BYTES, _ONE),
            ("version", 3, _INT32, _ONE),
            ("versions", 4, _MESSAGE, _ONE, "VersionDef"),
            ("debug_info", 5, _BYTES, _ONE),
        ]),
    ])
    return fdp


POOL = descriptor_pool.DescriptorPool()
POOL.Add(_file())


def _class(name: str):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


VersionDef = _class("VersionDef")
TensorShapeProto = _class("TensorShapeProto")
TensorSliceProto = _class("TensorSliceProto")
BundleHeaderProto = _class("BundleHeaderProto")
BundleEntryProto = _class("BundleEntryProto")
TrackableObjectGraph = _class("TrackableObjectGraph")
CheckpointState = _class("CheckpointState")
CollectionDef = _class("CollectionDef")
MetaGraphDef = _class("MetaGraphDef")
SavedModel = _class("SavedModel")
VariableDef = _class("VariableDef")
NodeDef = _class("NodeDef")
GraphDef = _class("GraphDef")
