"""The project's own proto definitions (checkpoint/protos.py) against TensorFlow's, and the
read path of a V2 bundle without TensorFlow (issue 13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
