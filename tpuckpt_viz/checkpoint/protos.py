"""The few TensorFlow protos a checkpoint's index and object graph need, without TensorFlow.

``tensorflow.core.protobuf.*_pb2`` import all of TensorFlow (their parent package's
``__init__``): seconds, and 600 MB that a worker reading shards does not need. The field
numbers and types below are public facts of the formats (TensorFlow's ``tensor_bundle.proto``,
``tensor_shape.proto``, ``tensor_slice.proto``, ``versions.proto``,
``trackable_object_graph.proto`` and ``checkpoint_state.proto``), declared here under the
package ``tpuckpt_viz.tf`` in a PRIVATE descriptor pool: registering them as ``tensorflow.*``
in protobuf's default pool would make a later ``import tensorflow`` fail with "duplicate
symbol". The tests decode every real checkpoint with these and with TensorFlow's own classes,
in one process, and compare.

Differences from TensorFlow's definitions, on purpose: enum fields (``DataType``,
``Endianness``) are declared ``int32`` (the same varint on the wire; values outside the enum
stay visible as numbers for the index validation); the object graph leaves out the fields
nothing here reads (``registered_saver``, ``has_checkpoint_values``), which protobuf keeps as
unknown fields.

Public classes: :data:`BundleHeaderProto`, :data:`BundleEntryProto`, :data:`TensorShapeProto`,
:data:`TensorSliceProto`, :data:`VersionDef`, :data:`TrackableObjectGraph`,
:data:`CheckpointState`.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "tpuckpt_viz.tf"

_T = descriptor_pb2.FieldDescriptorProto
_INT32, _INT64, _FIXED32, _BOOL = _T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_FIXED32, _T.TYPE_BOOL
_STRING, _DOUBLE, _MESSAGE = _T.TYPE_STRING, _T.TYPE_DOUBLE, _T.TYPE_MESSAGE
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
