"""Paths people pass (issue 11): a TF1 ``.meta`` and what its collections say, ``saved_model.pb``,
numbered SavedModel versions, a folder of unrelated checkpoints, formats told by their bytes.

Every file here is written by TensorFlow itself (a TF1 graph saved by ``Saver``, a TFLite
flatbuffer from ``TFLiteConverter``, a GraphDef from ``tf.io.write_graph``) or comes from
``../shared/checkpoints``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tpuckpt_viz.cli import commands as cli


def run(capsys, *args):
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def listed(capsys, path) -> dict:
    status, out, err = run(capsys, "list", path, "--format", "json")
    assert status == 0, err
    return {r["name"]: r for r in json.loads(out)}


@pytest.fixture(scope="session")
def tf1_handwritten_bn(tf, tmp_path_factory):
    """A TF1 graph with a hand-written batch norm (``bn/pop_mean``, ``bn/pop_var``: not
    trainable, in ``moving_average_variables``), a trainable variable whose name reads like a
    statistic (``mixture/mean``) and one that reads like a slot (``layer/w/Momentum``), a frozen
    (non-trainable) embedding table and the global step; saved by ``Saver`` with its ``.meta``.
    Returns the prefix."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        zeros, ones = v1.zeros_initializer(), v1.ones_initializer()
        v1.get_variable("layer/w", [3, 4])
        v1.get_variable("layer/w/Momentum", [3, 4])
        v1.get_variable("mixture/mean", [4])
        pop_mean = v1.get_variable("bn/pop_mean", [4], trainable=False, initializer=zeros)
        pop_var = v1.get_variable("bn/pop_var", [4], trainable=False, initializer=ones)
        for var in (pop_mean, pop_var):
            v1.add_to_collection(v1.GraphKeys.MOVING_AVERAGE_VARIABLES, var)
        v1.get_variable("frozen/emb_table", [5, 2], trainable=False)
        step = v1.train.get_or_create_global_step()
        saver = v1.train.Saver()
        folder = tmp_path_factory.mktemp("tf1bn")
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            prefix = saver.save(sess, str(folder / "model.ckpt"), global_step=step)
    return prefix


def test_meta_collections_come_before_name_rules(capsys, tf1_handwritten_bn, tmp_path):
    recs = listed(capsys, tf1_handwritten_bn)
    assert recs["bn/pop_mean"]["kind"] == recs["bn/pop_var"]["kind"] == "stat"
    assert recs["mixture/mean"]["kind"] == "weight"  # trainable: never a statistic
    assert recs["layer/w/Momentum"]["kind"] == "weight"  # trainable: never a slot
    assert recs["layer/w/Momentum"]["slot_of"] is None
    assert recs["frozen/emb_table"]["kind"] == "weight"  # not trainable, still a weight
    assert recs["global_step"]["kind"] == "counter"
    # The .meta file itself opens its checkpoint.
    assert listed(capsys, tf1_handwritten_bn + ".meta").keys() == recs.keys()
    # Without the .meta the name rules decide: pop_mean/pop_var are statistics by name too.
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(tf1_handwritten_bn + suffix, bare / ("model.ckpt-0" + suffix))
    names_only = listed(capsys, bare / "model.ckpt-0")
    assert names_only["bn/pop_mean"]["kind"] == "stat"
    assert names_only["mixture/mean"]["kind"] == "stat"
    assert names_only["layer/w/Momentum"]["kind"] == "slot"


def test_meta_without_its_checkpoint(capsys, tf1_handwritten_bn, tmp_path):
    lone = tmp_path / "lonely.meta"
    shutil.copy(tf1_handwritten_bn + ".meta", lone)
    status, _, err = run(capsys, "list", lone)
    assert status == 1 and "lonely.index" in err and "Traceback" not in err


def test_saved_model_pb_and_numbered_versions(capsys, shared):
    folder = shared / "serving_saved_model_half_plus_two_cpu" / "00000123"
    assert listed(capsys, folder / "saved_model.pb").keys() == listed(capsys, folder).keys()
    versions = shared / "serving_saved_model_half_plus_two_2_versions"
    from tpuckpt_viz.checkpoint.paths import resolve_checkpoint, run_checkpoints

    newest = str(versions / "00000124" / "variables" / "variables")
    assert resolve_checkpoint(str(versions)).prefix == newest
    assert run_checkpoints(str(versions)) == [newest]
    assert set(listed(capsys, versions)) >= {"a", "b"}


def test_folder_of_unrelated_checkpoints_says_which_was_opened(capsys, tf, tmp_path):
    for name, value in (("alpha", 1.0), ("beta_model", 2.0)):
        tf.train.Checkpoint(v=tf.Variable([value])).write(str(tmp_path / name))
    status, out, err = run(capsys, "list", tmp_path, "--format", "json")
    assert status == 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "unrelated" in lines[0]
    from tpuckpt_viz.checkpoint.paths import other_checkpoints, resolve_checkpoint

    opened = resolve_checkpoint(str(tmp_path)).prefix
    others = other_checkpoints(str(tmp_path))
    assert len(others) == 1 and others[0] != opened
    assert opened in lines[0] and others[0] in lines[0]
    # Saves of one run are not unrelated: no note.
    run_dir = tmp_path / "run"
    for step in (1, 2):
        tf.train.Checkpoint(v=tf.Variable([1.0])).write(str(run_dir / f"ckpt-{step}"))
    assert other_checkpoints(str(run_dir)) == []


def test_other_model_formats_get_a_message(capsys, tf, tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def double(x):
        return 2.0 * x

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [double.get_concrete_function()], double)
    (tmp_path / "model.tflite").write_bytes(converter.convert())
    graph = tf.Graph()
    with graph.as_default():
        tf.constant([1.0, 2.0], name="w")
    tf.io.write_graph(graph.as_graph_def(), str(tmp_path), "frozen.pb", as_text=False)
    for name, words in (("model.tflite", "TensorFlow Lite"), ("frozen.pb", "frozen")):
        status, _, err = run(capsys, "list", tmp_path / name)
        assert status == 1, name
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # Told by bytes: the flatbuffer without its extension is still named.
    shutil.copy(tmp_path / "model.tflite", tmp_path / "renamed")
    status, _, err = run(capsys, "list", tmp_path / "renamed")
    assert status == 1 and "TensorFlow Lite" in err
