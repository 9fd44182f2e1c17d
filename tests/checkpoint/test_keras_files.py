"""Keras weight files (issue 11): Keras 3 ``.weights.h5`` / ``.keras`` written here by the
installed Keras, Keras 2 ``.h5`` and TF 2.11-2.15 optimizer checkpoints from
``tests/fixtures/tf215`` (written by TensorFlow 2.15; see its README).

Every expected value comes from Keras or h5py directly: variable paths from ``model.weights``
and ``optimizer.variables``, slot links from the optimizer's own lists, values from h5py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from tpuckpt_viz.cli import commands as cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf215"


def run(capsys, *args):
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def cli_json(capsys, *args):
    status, out, err = run(capsys, *args, "--format", "json")
    assert status == 0, err
    return json.loads(out)


def tree_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- Keras 3 ---------------------------------------------------------------------------------

def test_keras_archive_names_and_links_every_slot(capsys, keras3_run):
    before = tree_hashes(keras3_run["folder"])
    records = cli_json(capsys, "list", keras3_run["keras"])
    by_key = {r["key"]: r for r in records}
    by_name = {r["name"]: r for r in records}
    # Every model weight under its Keras path, its value the one Keras holds.
    with zipfile.ZipFile(keras3_run["keras"]) as z:
        z.extract("model.weights.h5", keras3_run["folder"] / "unpacked_by_the_test")
    with h5py.File(keras3_run["folder"] / "unpacked_by_the_test" / "model.weights.h5") as f:
        for path, value in keras3_run["values"].items():
            rec = by_name[path]
            np.testing.assert_array_equal(f[rec["key"]][()], value)
            assert rec["shape"] == list(value.shape)
    assert by_name["hidden/kernel"]["kind"] == "weight"
    assert by_name["hidden/bias"]["kind"] == "bias"
    assert by_name["bn/gamma"]["kind"] == by_name["bn/beta"]["kind"] == "norm"
    assert by_name["bn/moving_mean"]["kind"] == "stat"
    assert by_name["lstm/lstm_cell/recurrent_kernel"]["key"] == "layers/lstm/cell/vars/1"
    # optimizer/vars/<i> is the i-th of optimizer.variables, named as Keras names it.
    for i, path in enumerate(keras3_run["optimizer_paths"]):
        assert by_key[f"optimizer/vars/{i}"]["name"] == path
    assert by_name[keras3_run["optimizer_paths"][0]]["kind"] == "optimizer"  # iteration
    # Every slot linked to the variable Keras built it for.
    assert len(keras3_run["links"]) == 2 * len(keras3_run["trainable"])
    for slot_path, (var_path, _) in keras3_run["links"].items():
        rec = by_name[slot_path]
        assert rec["kind"] == "slot"
        assert by_key[rec["slot_of"]]["name"] == var_path, slot_path
        assert rec["slot"] in ("momentum", "velocity")
    # Read inside the zip: nothing unpacked or written next to the file.
    shutil.rmtree(keras3_run["folder"] / "unpacked_by_the_test")
    assert tree_hashes(keras3_run["folder"]) == before


def test_bare_weights_file_links_only_what_it_proves(capsys, keras3_run):
    records = cli_json(capsys, "list", keras3_run["weights"])
    by_key = {r["key"]: r for r in records}
    names = {r["name"] for r in records}
    assert set(keras3_run["weight_paths"]) <= names
    shapes = {}
    for r in records:
        if not r["key"].startswith("optimizer/"):
            shapes.setdefault((tuple(r["shape"]), r["dtype"]), []).append(r["key"])
    truth = {}
    for i, path in enumerate(keras3_run["optimizer_paths"]):
        if path in keras3_run["links"]:
            truth[f"optimizer/vars/{i}"] = keras3_run["links"][path][0]
    linked = 0
    for key, var_path in truth.items():
        rec = by_key[key]
        assert rec["kind"] == "slot"
        unique = len(shapes[(tuple(rec["shape"]), rec["dtype"])]) == 1
        if unique:
            assert by_key[rec["slot_of"]]["name"] == var_path
            linked += 1
        else:
            assert rec["slot_of"] is None, key  # never guessed
    assert linked >= 4  # the LSTM's and the Dense kernels have shapes of their own


def test_stats_are_numpy_on_the_dataset(capsys, keras3_run):
    records = cli_json(capsys, "stats", keras3_run["weights"], "--match", "kernel")
    with h5py.File(keras3_run["weights"]) as f:
        for rec in records:
            x = np.asarray(f[rec["key"]][()], np.float64).reshape(-1)
            assert rec["mean"] == pytest.approx(x.mean(), rel=1e-5, abs=1e-7)
            assert rec["l2"] == pytest.approx(np.sqrt((x ** 2).sum()), rel=1e-5)
            assert rec["min"] == pytest.approx(x.min()) and rec["max"] == pytest.approx(x.max())
    assert {r["name"] for r in records} >= {"hidden/kernel", "out/kernel",
                                            "lstm/lstm_cell/kernel"}


def test_chunks_are_slices_and_bounded(keras3_run):
    from tpuckpt_viz.checkpoint.reader import open_checkpoint

    ckpt = open_checkpoint(str(keras3_run["weights"]))
    key = "layers/lstm/cell/vars/0"  # [2, 8] float32: 64 bytes
    chunks = list(ckpt.chunks(key, chunk_bytes=32))
    assert [c.size for c in chunks] == [8, 8]
    np.testing.assert_array_equal(np.concatenate(chunks), ckpt.read(key).reshape(-1))
    assert ckpt.format == "keras" and ckpt.signature
    # A plain .weights.h5 dataset is streamed like a bundle shard: its byte range in the file.
    plan = ckpt.plan(key)
    assert plan.streamable and plan.ranges[0].nbytes == 64
    with open(keras3_run["weights"], "rb") as f:
        f.seek(plan.ranges[0].offset)
        raw = np.frombuffer(f.read(64), np.float32)
    np.testing.assert_array_equal(raw, ckpt.read(key).reshape(-1))
    # Inside a .keras zip (Keras stores its weights member uncompressed): the byte range in
    # the archive itself; chunks() still reads through h5py, in slabs.
    archive = open_checkpoint(str(keras3_run["keras"]))
    plan = archive.plan(key)
    assert plan.streamable and plan.ranges[0].path == str(keras3_run["keras"])
    with zipfile.ZipFile(keras3_run["keras"]) as z:
        assert z.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED
    with open(keras3_run["keras"], "rb") as f:
        f.seek(plan.ranges[0].offset)
        raw = np.frombuffer(f.read(64), np.float32)
    np.testing.assert_array_equal(raw, ckpt.read(key).reshape(-1))
    assert [c.size for c in archive.chunks(key, chunk_bytes=32)] == [8, 8]


def test_steps_of_a_modelcheckpoint_run(capsys, keras3_run):
    rows = cli_json(capsys, "steps", keras3_run["run"], "--match", "^hidden/kernel$")
    assert [r["step"] for r in rows] == [1, 2, 3]  # the epoch in the file name
    files = sorted(keras3_run["run"].iterdir())
    for row, path in zip(rows, files):
        with h5py.File(path) as f:
            value = f["layers/dense/vars/0"][()]
        assert row["l2"] == pytest.approx(float(np.linalg.norm(value)), rel=1e-5)
    assert rows[0]["delta_l2"] is None and rows[1]["delta_l2"] > 0
    # The folder opens its latest epoch.
    listed = cli_json(capsys, "list", keras3_run["run"])
    assert any(r["name"] == "hidden/kernel" for r in listed)


def test_keras_file_diffs_against_tf_checkpoint_by_name(capsys, keras3_run):
    rows = cli_json(capsys, "diff", keras3_run["weights"], keras3_run["tf"])
    by_name = {r["name"]: r for r in rows}
    for path in keras3_run["weight_paths"]:
        row = by_name[path]
        assert row["key_a"] and row["key_b"], path
        assert row["status"] == "same", path  # the same model, the same values
    assert by_name["hidden/kernel"]["key_b"].endswith("/.ATTRIBUTES/VARIABLE_VALUE")


def test_layer_table_matches_keras(tf):
    """The weight order per layer class that names ``vars/<i>`` without config.json, checked
    against the layers Keras 3 builds."""
    import keras

    from tpuckpt_viz.checkpoint.keras import LAYER_WEIGHTS, to_snake_case

    layers = {
        "Dense": (keras.layers.Dense(2), (None, 3)),
        "Conv2D": (keras.layers.Conv2D(2, 3), (None, 5, 5, 1)),
        "Conv1D": (keras.layers.Conv1D(2, 3, use_bias=False), (None, 5, 1)),
        "DepthwiseConv2D": (keras.layers.DepthwiseConv2D(3), (None, 5, 5, 2)),
        "SeparableConv2D": (keras.layers.SeparableConv2D(2, 3), (None, 5, 5, 2)),
        "Conv2DTranspose": (keras.layers.Conv2DTranspose(2, 3), (None, 5, 5, 2)),
        "Embedding": (keras.layers.Embedding(5, 2), (None, 3)),
        "BatchNormalization": (keras.layers.BatchNormalization(center=False), (None, 3)),
        "LayerNormalization": (keras.layers.LayerNormalization(), (None, 3)),
        "GroupNormalization": (keras.layers.GroupNormalization(groups=1), (None, 3)),
        "PReLU": (keras.layers.PReLU(), (None, 3)),
        "EinsumDense": (keras.layers.EinsumDense("ab,bc->ac", (2,), bias_axes="c"), (None, 3)),
    }
    for class_name, (layer, shape) in layers.items():
        layer.build(shape)
        cfg = layer.get_config()
        table = LAYER_WEIGHTS[to_snake_case(class_name)](cfg)
        own = layer._trainable_variables + layer._non_trainable_variables
        assert [n for n, _ in table] == [v.name for v in own], class_name
        assert [t for _, t in table] == [v.trainable for v in own], class_name
    cell = keras.layers.LSTMCell(2)
    cell.build((None, 3))
    assert [n for n, _ in LAYER_WEIGHTS["lstm_cell"]({})] == [v.name for v in cell.weights]


def test_keras_file_without_extension_is_told_by_its_bytes(capsys, keras3_run, tmp_path):
    plain = tmp_path / "weights_no_extension"
    shutil.copy(keras3_run["weights"], plain)
    records = cli_json(capsys, "list", plain)
    assert "hidden/kernel" in {r["name"] for r in records}


# -- Keras 2 HDF5 (TF 2.15) -------------------------------------------------------------------

EXPECTED = json.loads((FIXTURES / "expected.json").read_text()) if FIXTURES.is_dir() else {}


def strip(name: str) -> str:
    return name.rsplit(":", 1)[0]


@pytest.mark.parametrize("fixture", ["keras2_full.h5", "keras2_full_legacy_adam.h5"])
def test_keras2_full_model(capsys, fixture):
    before = tree_hashes(FIXTURES)
    expected = EXPECTED[fixture]
    records = cli_json(capsys, "list", FIXTURES / fixture)
    by_name = {r["name"]: r for r in records}
    by_key = {r["key"]: r for r in records}
    with h5py.File(FIXTURES / fixture) as f:
        for name in expected["weights"]:
            rec = by_name[strip(name)]
            np.testing.assert_allclose(f[rec["key"]][()], expected["values"][name])
            assert rec["kind"] in ("weight", "bias", "norm", "stat")
    assert by_name["bn/moving_variance"]["kind"] == "stat"
    # Every optimizer slot linked as TensorFlow 2.15 linked it; nothing of the optimizer is
    # a weight.
    assert expected["slots"]
    for slot, (var, _) in expected["slots"].items():
        rec = by_name[strip(slot)]
        assert rec["kind"] == "slot"
        assert by_key[rec["slot_of"]]["name"] == strip(var), slot
    for rec in records:
        if rec["key"].startswith("optimizer_weights/"):
            assert rec["kind"] in ("slot", "optimizer"), rec
    assert tree_hashes(FIXTURES) == before


def test_keras2_steps_read_the_iterations(capsys):
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.engine.diff import checkpoint_step

    assert checkpoint_step(open_checkpoint(str(FIXTURES / "keras2_full.h5"))) == \
        EXPECTED["keras2_full.h5"]["iterations"]


def test_keras2_weights_only(capsys):
    records = cli_json(capsys, "list", FIXTURES / "keras2_weights.h5")
    names = {r["name"] for r in records}
    assert names == {strip(n) for n in EXPECTED["keras2_weights.h5"]["weights"]}
    assert {r["kind"] for r in records} == {"weight", "bias", "norm", "stat"}


def test_keras2_file_pairs_with_tf215_checkpoint(capsys):
    rows = cli_json(capsys, "diff", FIXTURES / "keras2_full.h5", FIXTURES / "ckpt_adam")
    by_name = {r["name"]: r for r in rows}
    for name in EXPECTED["keras2_full.h5"]["weights"]:
        row = by_name[strip(name)]
        assert row["key_a"] and row["key_b"], name
    for slot in EXPECTED["keras2_full.h5"]["slots"]:  # Adam/m/<var> on both sides
        row = by_name[strip(slot)]
        assert row["key_a"] and row["key_b"], slot


# -- TF 2.11-2.15 optimizers in object-based checkpoints --------------------------------------

@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "rmsprop", "adagrad"])
def test_tf215_optimizer_slots_are_linked(capsys, name):
    expected = EXPECTED[f"ckpt_{name}"]
    records = cli_json(capsys, "list", FIXTURES / f"ckpt_{name}")
    by_name = {r["name"]: r for r in records}
    by_key = {r["key"]: r for r in records}
    assert expected["slots"]
    for slot, (var, _) in expected["slots"].items():
        rec = by_name[strip(slot)]
        assert rec["kind"] == "slot", slot
        assert by_key[rec["slot_of"]]["name"] == strip(var), slot
        assert rec["slot"] == strip(slot).split("/")[1]
    scalars = [r for r in records if r["key"].startswith(("optimizer/_iterations/",
                                                           "optimizer/_learning_rate/"))]
    assert len(scalars) == 2 and {r["kind"] for r in scalars} == {"optimizer"}


def test_tf215_saved_model(capsys):
    records = cli_json(capsys, "list", FIXTURES / "saved_model_adam")
    expected = EXPECTED["saved_model_adam"]
    by_name = {r["name"]: r for r in records}
    by_key = {r["key"]: r for r in records}
    for slot, (var, _) in expected["slots"].items():
        rec = by_name[strip(slot)]
        assert by_key[rec["slot_of"]]["name"] == strip(var)
    # saved_model.pb opens its SavedModel.
    again = cli_json(capsys, "list", FIXTURES / "saved_model_adam" / "saved_model.pb")
    assert [r["key"] for r in again] == [r["key"] for r in records]


def test_keras_file_on_a_bucket_filesystem(capsys, keras3_run):
    """A Keras file on an fsspec filesystem (memory:// stands in for gs://) is read through a
    seekable file object, never copied to disk."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    url = f"memory://keras-{uuid.uuid4().hex}/model.keras"
    with fs.open(url, "wb") as f:
        f.write(keras3_run["keras"].read_bytes())
    remote_records = cli_json(capsys, "list", url)
    local_records = cli_json(capsys, "list", keras3_run["keras"])
    assert remote_records == local_records
    stats = cli_json(capsys, "stats", url, "--match", "^hidden/kernel$")
    kernel = keras3_run["values"]["hidden/kernel"]
    assert stats[0]["l2"] == pytest.approx(float(np.linalg.norm(kernel)), rel=1e-5)


def test_infer_runs_a_keras_archive_and_restores_weights_files(capsys, keras3_run):
    """``infer model.keras`` runs the archive itself (its input named as the Keras Input);
    ``infer w.01.weights.h5 --model model.keras`` restores that epoch into it. Outputs checked
    against Keras directly."""
    import keras

    x = [[[0.5, -1.0], [0.25, 2.0], [1.0, 0.0]]]
    model = keras.saving.load_model(str(keras3_run["keras"]), safe_mode=True)
    expected = model(np.asarray(x, np.float32), training=False).numpy()
    result = cli_json(capsys, "infer", keras3_run["keras"], "--input", f"x={json.dumps(x)}",
                      "--device", "cpu")
    (out,) = result["outputs"].values()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    first = sorted(keras3_run["run"].iterdir())[0]
    model.load_weights(str(first))
    expected_first = model(np.asarray(x, np.float32), training=False).numpy()
    result = cli_json(capsys, "infer", first, "--model", keras3_run["keras"],
                      "--input", f"x={json.dumps(x)}", "--device", "cpu")
    (out,) = result["outputs"].values()
    np.testing.assert_allclose(out, expected_first, rtol=1e-5, atol=1e-6)
    assert result["restore"]["status"] == "ok"
    assert not np.allclose(expected_first, expected)  # epoch 1 is not the final model


_CLEAN_CHILD = r"""
import contextlib, io, json, sys
from tpuckpt_viz import cli
codes = []
for path in sys.argv[1:]:
    for command in ("list", "stats"):
        with contextlib.redirect_stdout(io.StringIO()):
            codes.append(cli.main([command, path, "--format", "json"]))
print(json.dumps({"codes": codes, "heavy": sorted(
    m for m in ("tensorflow", "keras", "pandas", "streamlit") if m in sys.modules)}))
"""


def test_keras_files_list_and_stats_without_tensorflow(keras3_run):
    """Keras files are read with h5py alone: importing keras would import TensorFlow."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    paths = [str(keras3_run["keras"]), str(keras3_run["weights"]),
             str(FIXTURES / "keras2_full.h5")]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CLEAN_CHILD, *paths], capture_output=True,
                          text=True, timeout=120, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"codes": [0] * 6, "heavy": []}, proc.stderr[-2000:]
