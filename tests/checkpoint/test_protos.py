"""The project's own proto definitions (checkpoint/protos.py) against TensorFlow's, and the
read path of a V2 bundle without TensorFlow (issue 13): bundle index and object graph; a TF1
graph's collections (``.meta`` files, TF1 SavedModels) and frozen-GraphDef detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tpuckpt_viz.checkpoint import bundle, protos, table
from tpuckpt_viz.checkpoint.objectgraph import OBJECT_GRAPH_KEY

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "checkpoints"
INDEXES = sorted(str(p)[:-len(".index")] for p in SHARED.rglob("*.index"))
TF2 = SHARED / "serving_saved_model_half_plus_two_tf2_cpu" / "00000123" / "variables" / "variables"
T2T = SHARED / "t2t_transformer_test_ckpt"


def _fields(msg) -> dict:
    """Every set field by number, recursively (the numbers are what the wire format holds)."""
    out = {}
    for field, value in msg.ListFields():
        if field.type == field.TYPE_MESSAGE:
            value = ([_fields(v) for v in value] if field.is_repeated
                     else _fields(value))
        elif field.is_repeated:
            value = list(value)
        out[field.number] = value
    return out


def test_private_pool_leaves_tensorflow_importable_and_decodes_alike():
    # This module was imported first (top of this file): TensorFlow's own protos still load.
    from tensorflow.core.protobuf import tensor_bundle_pb2, trackable_object_graph_pb2
    from tensorflow.python.training.checkpoint_state_pb2 import CheckpointState

    assert "tensorflow" not in protos.BundleEntryProto.DESCRIPTOR.full_name
    assert len(INDEXES) > 10
    graphs = 0
    for prefix in INDEXES:
        data = Path(prefix + ".index").read_bytes()
        try:
            items = list(table.read_table(data))
        except ValueError:
            continue  # damaged on purpose in the corpus; test_bundle covers those
        for key, value in items:
            if not key:
                ours, theirs = (protos.BundleHeaderProto.FromString(value),
                                tensor_bundle_pb2.BundleHeaderProto.FromString(value))
            else:
                ours, theirs = (protos.BundleEntryProto.FromString(value),
                                tensor_bundle_pb2.BundleEntryProto.FromString(value))
            assert _fields(ours) == _fields(theirs), (prefix, key)
            assert ours.SerializeToString() == theirs.SerializeToString(), (prefix, key)
        index = bundle.read_index(prefix)
        raw = bundle.read_scalar_string(index, OBJECT_GRAPH_KEY)
        if raw is not None:
            graphs += 1
            ours = protos.TrackableObjectGraph.FromString(raw)
            theirs = trackable_object_graph_pb2.TrackableObjectGraph.FromString(raw)
            theirs_known = _fields(theirs)
            for node in theirs_known.get(1, []):  # fields 4 and 5 are left out on purpose
                node.pop(4, None)
                node.pop(5, None)
            assert _fields(ours) == theirs_known, prefix
    assert graphs >= 3
    text = 'model_checkpoint_path: "a"\nall_model_checkpoint_paths: "a"\n'
    from google.protobuf import text_format

    assert (text_format.Parse(text, protos.CheckpointState()).SerializeToString()
            == text_format.Parse(text, CheckpointState()).SerializeToString())


def test_string_tensors_read_like_tensorflow(tmp_path):
    from tpuckpt_viz.tfcompat import tf

    tf = tf()
    strings = np.array([[b"a", b""], [b"\xff\x00x", b"long" * 100]], dtype=object)
    prefix = tf.train.Checkpoint(s=tf.Variable(strings), t=tf.Variable(b"one")).write(
        str(tmp_path / "s"))
    index = bundle.read_index(prefix)
    reader = tf.train.load_checkpoint(prefix)
    for key in ("s/.ATTRIBUTES/VARIABLE_VALUE", "t/.ATTRIBUTES/VARIABLE_VALUE"):
        want = np.asarray(reader.get_tensor(key), dtype=object).reshape(-1).tolist()
        assert bundle.read_strings(index, key) == want
    data = Path(bundle.data_path(prefix, 0, 1))
    raw = bytearray(data.read_bytes())
    entry = index.entries["s/.ATTRIBUTES/VARIABLE_VALUE"]
    raw[entry.offset + entry.size - 1] ^= 1  # a flipped byte: the caller falls back to TF
    data.write_bytes(bytes(raw))
    assert bundle.read_strings(bundle.read_index(prefix), "s/.ATTRIBUTES/VARIABLE_VALUE") is None


_CHILD = r"""
import contextlib, io, json, sys
from tpuckpt_viz import cli
codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        codes.append(cli.main(argv))
modules = sorted(m for m in ("tensorflow", "pandas", "keras", "streamlit") if m in sys.modules)
# TensorFlow's own protos still import after ours (a private pool: no "duplicate symbol").
from tensorflow.core.protobuf import tensor_bundle_pb2, trackable_object_graph_pb2
from tensorflow.python.training import checkpoint_state_pb2
print(json.dumps({"codes": codes, "modules": modules}))
"""


@pytest.mark.parametrize("path", [TF2, T2T], ids=["tf2_object_graph", "t2t_two_shards"])
def test_list_and_stats_of_a_bundle_import_no_tensorflow(path):
    runs = [["list", str(path), "--format", "json"], ["stats", str(path), "--format", "json"]]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(runs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"codes": [0, 0], "modules": []}, proc.stderr[-2000:]


# ------------------------------------------------------------------ TF1 meta graphs (.meta)

def _tf_variable_names(collection) -> list[str]:
    """Op names of a collection's variables, decoded with TensorFlow's own VariableDef."""
    from tensorflow.core.framework import variable_pb2

    names = []
    if collection.HasField("bytes_list"):
        for raw in collection.bytes_list.value:
            try:
                names.append(variable_pb2.VariableDef.FromString(raw).variable_name)
            except Exception:
                continue
    if collection.HasField("node_list"):
        names.extend(collection.node_list.value)
    return [n.split(":", 1)[0] for n in names if n]


def _compare_meta_graph(ours, theirs, where) -> int:
    """Ours against TensorFlow's decoding of one MetaGraphDef: tags, collections (kind and
    values; each VariableDef field by field) and the graph's nodes. Returns the number of
    VariableDefs compared."""
    from tensorflow.core.framework import graph_pb2, variable_pb2

    assert list(ours.meta_info_def.tags) == list(theirs.meta_info_def.tags), where
    assert (ours.meta_info_def.tensorflow_version
            == theirs.meta_info_def.tensorflow_version), where
    assert sorted(ours.collection_def) == sorted(theirs.collection_def), where
    variables = 0
    for name, theirs_c in theirs.collection_def.items():
        ours_c = ours.collection_def[name]
        kind = theirs_c.WhichOneof("kind")
        assert ours_c.WhichOneof("kind") == kind, (where, name)
        if kind is None:
            continue
        if kind == "any_list":
            assert ([(a.type_url, a.value) for a in ours_c.any_list.value]
                    == [(a.type_url, a.value) for a in theirs_c.any_list.value]), (where, name)
        else:
            assert list(getattr(ours_c, kind).value) == list(getattr(theirs_c, kind).value), \
                (where, name)
        if kind == "bytes_list":
            for raw in theirs_c.bytes_list.value:
                try:
                    want = _fields(variable_pb2.VariableDef.FromString(raw))
                except Exception:
                    continue  # not a VariableDef (a queue runner, a saver, ...)
                want.pop(4, None)  # save_slice_info_def: left out on purpose
                assert _fields(protos.VariableDef.FromString(raw)) == want, (where, name)
                variables += 1
    # The graph itself, as formats.foreign_message decodes a .pb.
    raw = theirs.graph_def.SerializeToString()
    graph, want = protos.GraphDef.FromString(raw), graph_pb2.GraphDef.FromString(raw)
    assert [(n.name, n.op, list(n.input), n.device, sorted(n.attr)) for n in graph.node] == \
        [(n.name, n.op, list(n.input), n.device, sorted(n.attr)) for n in want.node], where
    assert _fields(graph.versions) == _fields(want.versions), where
    return variables


@pytest.fixture(scope="module")
def tf1_saved_model(tf, tmp_path_factory):
    """A TF1 SavedModel written by SavedModelBuilder: two meta graphs (tags {serve} and
    {train, gpu}); ``w`` averaged by an ExponentialMovingAverage (in both
    ``trainable_variables`` and ``moving_average_variables``), a hand-written batch norm's
    ``bn/pop_mean`` (``moving_average_variables`` only) and a local (metric) variable."""
    v1 = tf.compat.v1
    folder = tmp_path_factory.mktemp("tf1_sm") / "export"
    graph = tf.Graph()
    with graph.as_default():
        w = v1.get_variable("w", [3, 2])
        b = v1.get_variable("b", [2], initializer=v1.zeros_initializer())
        step = v1.train.get_or_create_global_step()
        ema = tf.train.ExponentialMovingAverage(0.9)
        ema.apply([w])
        pop_mean = v1.get_variable("bn/pop_mean", [2], trainable=False)
        v1.add_to_collection(v1.GraphKeys.MOVING_AVERAGE_VARIABLES, pop_mean)
        v1.get_variable("acc/count", [], trainable=False,
                        collections=[v1.GraphKeys.LOCAL_VARIABLES])
        assert step is not None and b is not None
        with v1.Session(graph=graph) as sess:
            sess.run([v1.global_variables_initializer(), v1.local_variables_initializer()])
            builder = v1.saved_model.Builder(str(folder))
            builder.add_meta_graph_and_variables(sess, ["serve"])
            builder.add_meta_graph(["train", "gpu"])
            builder.save()
    return folder


def test_meta_graphs_decode_like_tensorflow(shared, tf1_saver_ckpt, tf1_saved_model, tf):
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    from tpuckpt_viz.checkpoint import metagraph

    metas = sorted(shared.rglob("*.meta")) + [Path(tf1_saver_ckpt + ".meta")]
    models = sorted(shared.rglob("saved_model.pb")) + [tf1_saved_model / "saved_model.pb"]
    assert len(metas) >= 8 and len(models) >= 20
    variables = graphs = damaged = 0
    for path in list(metas):
        raw = path.read_bytes()
        try:
            theirs = meta_graph_pb2.MetaGraphDef.FromString(raw)
        except Exception:  # t5x's .meta is damaged: ours refuses it too
            with pytest.raises(Exception):
                protos.MetaGraphDef.FromString(raw)
            damaged += 1
            metas.remove(path)
            continue
        variables += _compare_meta_graph(protos.MetaGraphDef.FromString(raw), theirs, path)
        graphs += 1
    tagged = set()
    for path in models:
        raw = path.read_bytes()
        theirs = saved_model_pb2.SavedModel.FromString(raw)
        ours = protos.SavedModel.FromString(raw)
        assert len(ours.meta_graphs) == len(theirs.meta_graphs), path
        for o, t in zip(ours.meta_graphs, theirs.meta_graphs):
            variables += _compare_meta_graph(o, t, path)
            tagged.add(tuple(sorted(t.meta_info_def.tags)))
            graphs += 1
    assert variables >= 50 and graphs >= 30 and damaged <= 1
    assert {("serve",), ("gpu", "train"), ("serve", "train"), ()} <= tagged
    # The hints the listing takes from them, against names decoded with TensorFlow's classes.
    for path in metas:
        graph = meta_graph_pb2.MetaGraphDef.FromString(path.read_bytes())
        names = {n for name, _ in metagraph.COLLECTIONS if name in graph.collection_def
                 for n in _tf_variable_names(graph.collection_def[name])}
        ours = metagraph.hints_from_meta_graph(
            protos.MetaGraphDef.FromString(path.read_bytes()), names | {"not/a/variable"})
        assert set(ours) == names, path
    saver = protos.MetaGraphDef.FromString(Path(tf1_saver_ckpt + ".meta").read_bytes())
    hints = metagraph.hints_from_meta_graph(saver, ["global_step", "dense/kernel",
                                                    "batch_normalization/moving_mean"])
    assert hints == {"global_step": ("counter", None), "dense/kernel": ("trainable", None)}
    sm = protos.SavedModel.FromString((tf1_saved_model / "saved_model.pb").read_bytes())
    keys = ["w", "b", "global_step", "w/ExponentialMovingAverage", "bn/pop_mean", "acc/count"]
    want = {"global_step": ("counter", None), "w": ("trainable", None),
            "b": ("trainable", None), "bn/pop_mean": ("stat", None),
            "acc/count": ("metric", None)}
    assert [metagraph.hints_from_meta_graph(g, keys) for g in sm.meta_graphs] == [want, want]


def test_graph_pb_files_are_told_like_tensorflow(shared, tf, tmp_path):
    """formats.foreign_message tells a frozen GraphDef from other ``.pb`` files with our
    GraphDef: the same verdict as TensorFlow's on every real .pb and on written ones."""
    from tensorflow.core.framework import graph_pb2

    from tpuckpt_viz.checkpoint import formats

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        tf.identity(tf.matmul(x, tf.constant([[1.0], [2.0]])), name="y")
    frozen = tmp_path / "frozen.pb"
    frozen.write_bytes(graph.as_graph_def().SerializeToString())
    (tmp_path / "text.pb").write_bytes(b"not a protobuf at all \xff\xfe")
    (tmp_path / "empty.pb").write_bytes(b"")
    # Parses as a GraphDef at the top level, not as TensorFlow's (a broken attribute value).
    broken = graph_pb2.GraphDef()
    broken.node.add(name="x", op="Const")
    (tmp_path / "broken_attr.pb").write_bytes(broken.SerializeToString()
                                             + b"\x0a\x09\x2a\x07\x0a\x01k\x12\x02\xff\xff")
    files = sorted(shared.rglob("*.pb")) + sorted(tmp_path.glob("*.pb"))
    told = unnamed = 0
    for path in files:
        raw = path.read_bytes()
        try:
            nodes = graph_pb2.GraphDef.FromString(raw).node
        except Exception:
            nodes = None
        if nodes:  # ours decodes the same nodes
            ours, theirs = protos.GraphDef.FromString(raw), graph_pb2.GraphDef.FromString(raw)
            assert [(n.name, n.op, list(n.input), n.device, sorted(n.attr)) for n in ours.node] \
                == [(n.name, n.op, list(n.input), n.device, sorted(n.attr))
                    for n in theirs.node], path
        message = formats.foreign_message(str(path))
        is_graph = message is not None and "frozen TensorFlow GraphDef" in message
        # A graph: TensorFlow parses it, and its nodes have names and ops (TF-DF's
        # data_spec.pb parses as a GraphDef of nameless nodes: not a frozen graph).
        want = bool(nodes) and all(n.name and n.op for n in nodes)
        assert is_graph == (want and path.name != "saved_model.pb"), path
        told += is_graph
        unnamed += bool(nodes) and not want
    assert told >= 1 and unnamed >= 1


def _clean_list(path: str) -> dict:
    """``list PATH --format json`` in a fresh interpreter: its records and which heavy
    modules it imported."""
    code = textwrap.dedent("""
        import contextlib, io, json, sys
        from tpuckpt_viz import cli
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = cli.main(["list", sys.argv[1], "--format", "json"])
        print(json.dumps({"code": code, "records": json.loads(out.getvalue() or "null"),
                          "heavy": sorted(m for m in ("tensorflow", "numpy", "h5py", "pandas")
                                          if m in sys.modules)}))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_tf1_checkpoint_with_its_meta_lists_without_tensorflow(shared, tf1_saver_ckpt,
                                                                tf1_saved_model):
    """A Saver's V2 bundle with its ``.meta`` beside it, and TF1 SavedModels: listed in a clean
    process, the collections' kinds applied, and neither TensorFlow nor numpy imported. A V1
    TensorSlice file still needs TensorFlow's reader."""
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records

    for path in (tf1_saver_ckpt, str(shared / "tfx_chicago_taxi_estimator" / "model.ckpt-1000"),
                 str(tf1_saved_model),
                 str(shared / "serving_saved_model_half_plus_two_cpu" / "00000123")):
        got = _clean_list(path)
        assert got["code"] == 0 and got["heavy"] == [], (path, got["heavy"])
        # The same records as this process (TensorFlow loaded) lists.
        want = json.loads(json.dumps(list_records(open_checkpoint(path))))
        assert got["records"] == want, path
    saver = {r["key"]: r["kind"] for r in _clean_list(tf1_saver_ckpt)["records"]}
    assert saver["global_step"] == "counter"
    assert saver["batch_normalization/moving_mean"] != "weight"
    sm = {r["key"]: r["kind"] for r in _clean_list(str(tf1_saved_model))["records"]}
    assert sm["bn/pop_mean"] == "stat", sm
    v1 = _clean_list(str(shared / "serving_session_bundle_half_plus_two" / "00000123"))
    assert v1["code"] == 0 and "tensorflow" in v1["heavy"]
    assert sorted(r["key"] for r in v1["records"]) == ["a", "b"]
