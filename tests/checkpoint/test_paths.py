"""What a PATH means (tpuckpt_viz.checkpoint.paths): every form docs/reference.md lists; errors.

Checkpoints here are real: copies of ``../shared/checkpoints/tf2onnx_regression/checkpoint``
under other prefixes (a bundle does not record its own prefix), and small ones that
``tf.train.Checkpoint`` writes into tmp folders or ``ram://``.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from tpuckpt_viz.checkpoint.paths import (
    in_progress,
    is_saved_model,
    resolve_checkpoint,
    run_checkpoints,
)
from tpuckpt_viz.checkpoint.reader import open_checkpoint
from tpuckpt_viz.checkpoint.records import list_records
from tpuckpt_viz.errors import UserError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "checkpoints"
SOURCE = SHARED / "tf2onnx_regression" / "checkpoint" / "model"  # W = 0.21396, b = 1.04953


def copy_as(folder: Path, name: str, source: Path = SOURCE) -> str:
    """Copy the bundle at prefix ``source`` to ``folder/name``; return the new prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in source.parent.glob(source.name + ".*"):
        if f.name.endswith(".meta"):
            continue
        shutil.copy(f, folder / (name + f.name[len(source.name):]))
    return str(folder / name)


def write_state(folder: Path, latest: str, all_paths: list[str] | None = None) -> None:
    lines = [f'model_checkpoint_path: "{latest}"']
    lines += [f'all_model_checkpoint_paths: "{p}"' for p in (all_paths or [latest])]
    (folder / "checkpoint").write_text("\n".join(lines) + "\n")


def one_line_error(path, *words) -> str:
    with pytest.raises(UserError) as info:
        resolve_checkpoint(str(path))
    message = str(info.value)
    assert "\n" not in message and message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


# ---------------------------------------------------------------------- folder forms

def test_folder_with_state_file(shared):
    folder = shared / "t2t_transformer_test_ckpt"
    resolved = resolve_checkpoint(str(folder))
    assert resolved.prefix == str(folder / "model.ckpt-1")
    assert resolved.format == "v2" and resolved.run_dir == str(folder)


def test_state_file_picks_its_latest_not_the_highest_number(tmp_path):
    copy_as(tmp_path, "ckpt-3")
    copy_as(tmp_path, "ckpt-9")
    write_state(tmp_path, "ckpt-3", ["ckpt-3"])
    assert resolve_checkpoint(str(tmp_path)).prefix == str(tmp_path / "ckpt-3")


def test_folder_without_state_file_takes_newest_index(tmp_path):
    for step in (2, 10, 9):
        copy_as(tmp_path, f"ckpt-{step}")
    assert resolve_checkpoint(str(tmp_path)).prefix == str(tmp_path / "ckpt-10")
    assert run_checkpoints(str(tmp_path)) == [str(tmp_path / f"ckpt-{s}") for s in (2, 9, 10)]


def test_state_file_with_stale_absolute_paths(tmp_path):
    copy_as(tmp_path, "ckpt-5")
    copy_as(tmp_path, "ckpt-7")  # newer by number: the state file must still win
    write_state(tmp_path, "/gone/elsewhere/ckpt-5",
                ["/gone/elsewhere/ckpt-5", "gs://bucket/run/ckpt-7"])
    resolved = resolve_checkpoint(str(tmp_path))
    assert resolved.prefix == str(tmp_path / "ckpt-5")
    assert run_checkpoints(str(tmp_path)) == [str(tmp_path / "ckpt-5"), str(tmp_path / "ckpt-7")]
    values = {k: float(open_checkpoint(str(tmp_path)).read(k)) for k in ("W", "b")}
    assert values["W"] == pytest.approx(0.21396, abs=1e-5)


def test_state_file_with_absolute_paths_that_exist(tmp_path):
    other = tmp_path / "elsewhere"
    prefix = copy_as(other, "ckpt-4")
    run = tmp_path / "run"
    copy_as(run, "ckpt-1")
    write_state(run, prefix)
    assert resolve_checkpoint(str(run)).prefix == prefix


@pytest.mark.parametrize("content", [b"\x00\xff\xfe garbage \x01" * 20,
                                     b"model_checkpoint_path: [unclosed\n", b""])
def test_garbage_state_file_falls_back_to_index_files(tmp_path, content):
    copy_as(tmp_path, "ckpt-1")
    copy_as(tmp_path, "ckpt-2")
    (tmp_path / "checkpoint").write_bytes(content)
    assert resolve_checkpoint(str(tmp_path)).prefix == str(tmp_path / "ckpt-2")
    assert len(run_checkpoints(str(tmp_path))) == 2


def test_state_file_itself_as_path(shared):
    folder = shared / "t2t_transformer_test_ckpt"
    assert resolve_checkpoint(str(folder / "checkpoint")).prefix == str(folder / "model.ckpt-1")


def test_prefix_named_like_the_state_file(shared):
    """KerasTuner names the prefix ``checkpoint``: the bundle wins over the state file."""
    trial = next((shared / "tfx_iris_kerastuner_checkpoints").glob("trial_*/checkpoints/epoch_0"))
    for path in (trial, trial / "checkpoint", trial / "checkpoint.index"):
        assert resolve_checkpoint(str(path)).prefix == str(trial / "checkpoint")


# ------------------------------------------------------------------------ file forms

@pytest.mark.parametrize("suffix", ["", "/", ".index", ".data-00000-of-00002",
                                    ".data-00001-of-00002"])
def test_prefix_forms(shared, suffix):
    prefix = shared / "t2t_transformer_test_ckpt" / "model.ckpt-1"
    resolved = resolve_checkpoint(str(prefix) + suffix)
    assert resolved.prefix == str(prefix) and resolved.format == "v2"
    assert resolved.run_dir is None and resolved.saved_model_dir is None


def test_trailing_slash_prefix_beside_a_folder_of_the_same_name(tmp_path):
    prefix = copy_as(tmp_path, "ckpt")
    (tmp_path / "ckpt").mkdir()  # a folder named like the prefix must not win
    assert resolve_checkpoint(prefix + "/").prefix == prefix


def test_single_shard_data_file(tmp_path):
    prefix = copy_as(tmp_path, "model")
    assert resolve_checkpoint(prefix + ".data-00000-of-00001").prefix == prefix


def test_data_file_without_index(tmp_path):
    prefix = copy_as(tmp_path, "model")
    Path(prefix + ".index").unlink()
    one_line_error(prefix + ".data-00000-of-00001", ".index")


def test_missing_index_file(tmp_path):
    one_line_error(tmp_path / "model.index", "does not exist")


@pytest.mark.parametrize("folder", ["serving_saved_model_half_plus_two_cpu/00000123",
                                    "tfrust_regression_model", "tftext_segmenter_hub_module"])
def test_saved_model_folder(shared, folder):
    path = shared / folder
    assert is_saved_model(str(path))
    resolved = resolve_checkpoint(str(path) + "/")
    assert resolved.prefix == str(path / "variables" / "variables")
    assert resolved.saved_model_dir == str(path) and resolved.format == "v2"


def test_saved_model_without_saved_model_pb_still_browses(shared):
    path = shared / "serving_tf_text_regression" / "01"
    assert resolve_checkpoint(str(path)).prefix == str(path / "variables" / "variables")


def test_saved_model_without_variables(shared):
    one_line_error(shared / "serving_matrix_half_plus_two" / "1", "no variables")


def test_v1_tensorslice_file(shared):
    path = shared / "serving_bad_half_plus_two" / "00000123" / "export"
    resolved = resolve_checkpoint(str(path))
    assert (resolved.prefix, resolved.format) == (str(path), "v1")
    ckpt = open_checkpoint(str(path))
    assert {r["key"] for r in list_records(ckpt)} == {"Variable", "Variable_1"}
    assert float(ckpt.read("Variable")) == 0.5 and float(ckpt.read("Variable_1")) == 2.0


def test_v1_folder_with_stale_state_file(shared):
    """The state file names /tmp/bad_half_plus_two/00000123/export: found by its base name."""
    folder = shared / "serving_bad_half_plus_two" / "00000123"
    resolved = resolve_checkpoint(str(folder))
    assert (resolved.prefix, resolved.format) == (str(folder / "export"), "v1")
    assert run_checkpoints(str(folder)) == [str(folder / "export")]


def test_v1_session_bundle_folder(shared):
    folder = shared / "serving_session_bundle_half_plus_two" / "00000123"
    resolved = resolve_checkpoint(str(folder))
    assert resolved.prefix == str(folder / "export-00000-of-00001") and resolved.format == "v1"


def test_not_a_checkpoint_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    one_line_error(path, "not a TensorFlow checkpoint")


# ------------------------------------------------------------------------ runs

def test_run_skips_temp_folders_and_missing_index(tmp_path):
    copy_as(tmp_path, "ckpt-1")
    copy_as(tmp_path, "ckpt-2")
    # a TF2 save in progress: its parts sit in a *_temp_<hex> folder until they are merged
    temp = tmp_path / f"ckpt-3_temp_{uuid.uuid4().hex}"
    copy_as(temp, "part-00000-of-00001")
    # a save whose .index is not written yet, though the state file already names it
    ckpt4 = copy_as(tmp_path, "ckpt-4")
    Path(ckpt4 + ".index").unlink()
    # a prefix with "_temp" in its own name
    copy_as(tmp_path, f"ckpt-5_temp_{uuid.uuid4().hex}")
    write_state(tmp_path, "ckpt-4", ["ckpt-1", "ckpt-2", "ckpt-4"])
    assert run_checkpoints(str(tmp_path)) == [str(tmp_path / "ckpt-1"), str(tmp_path / "ckpt-2")]
    assert resolve_checkpoint(str(tmp_path)).prefix == str(tmp_path / "ckpt-2")
    assert in_progress(str(temp)) and not in_progress(str(tmp_path / "ckpt-2"))
    one_line_error(temp, "in progress")


def test_run_of_a_prefix_or_saved_model_is_that_checkpoint(shared):
    prefix = shared / "tfx_chicago_taxi_estimator" / "model.ckpt-999"
    assert run_checkpoints(str(prefix)) == [str(prefix)]
    sm = shared / "tfrust_regression_model"
    assert run_checkpoints(str(sm)) == [str(sm / "variables" / "variables")]


def test_run_of_real_estimator_folder(shared):
    folder = shared / "tfx_chicago_taxi_estimator"
    assert run_checkpoints(str(folder)) == [str(folder / f"model.ckpt-{s}")
                                            for s in (0, 999, 1000)]


# ----------------------------------------------------------------- other formats

def test_keras_files_open_as_keras(tf, tmp_path):
    """Keras files are read (tests/checkpoint/test_keras_files.py covers them): they resolve to the
    file itself, told by its bytes."""
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.save(str(tmp_path / "model.keras"))
    model.save_weights(str(tmp_path / "model.weights.h5"))
    for name in ("model.keras", "model.weights.h5"):
        resolved = resolve_checkpoint(str(tmp_path / name))
        assert resolved.format == "keras" and resolved.prefix == str(tmp_path / name)


def test_file_named_like_keras_but_not_hdf5(tmp_path):
    (tmp_path / "broken.weights.h5").write_text("not an HDF5 file")
    one_line_error(tmp_path / "broken.weights.h5", "neither HDF5 nor a .keras zip")


def test_orbax_folder_is_named(tmp_path):
    folder = tmp_path / "checkpoints" / "100"
    (folder / "default").mkdir(parents=True)
    (folder / "_CHECKPOINT_METADATA").write_text('{"item_handlers": null}')
    (folder / "default" / "_METADATA").write_text("{}")
    one_line_error(folder, "Orbax")


# ------------------------------------------------------------------------ errors

def test_missing_path(tmp_path):
    one_line_error(tmp_path / "nope" / "ckpt-1", "does not exist")


def test_missing_prefix_lists_the_ones_that_exist(tmp_path):
    copy_as(tmp_path, "ckpt-8")
    message = one_line_error(tmp_path / "ckpt-9", "does not exist")
    assert "ckpt-8" in message


def test_empty_path():
    one_line_error("", "no path")


def test_empty_folder(tmp_path):
    one_line_error(tmp_path, "empty")


def test_folder_of_unrelated_files(tmp_path):
    (tmp_path / "README.txt").write_text("not a checkpoint")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "sub").mkdir()
    message = one_line_error(tmp_path, "no TensorFlow checkpoint")
    assert "README.txt" in message and "sub" in message


def test_folder_of_folders_points_at_them(shared):
    message = one_line_error(shared / "tfx_iris_kerastuner_checkpoints", "trial_")


# ------------------------------------------------------------------------ ram://

def test_ram_filesystem(tf):
    folder = f"ram://tpuckpt-{uuid.uuid4().hex}"
    ckpt = tf.train.Checkpoint(w=tf.Variable([[1.0, 2.0], [3.0, 4.0]]))
    manager = tf.train.CheckpointManager(ckpt, folder, max_to_keep=None)
    first = manager.save(checkpoint_number=1)
    ckpt.w.assign_add(tf.ones([2, 2]))
    second = manager.save(checkpoint_number=2)
    assert resolve_checkpoint(first).prefix == first
    assert resolve_checkpoint(first + ".index").prefix == first
    assert resolve_checkpoint(folder).prefix == second
    assert run_checkpoints(folder) == [first, second]
    opened = open_checkpoint(folder)
    records = {r["key"]: r for r in list_records(opened)}
    w = records["w/.ATTRIBUTES/VARIABLE_VALUE"]
    assert w["shape"] == [2, 2] and w["kind"] == "weight" and w["name"] == "w"
    assert opened.read("w/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [[2, 3], [4, 5]]
    with pytest.raises(UserError):
        resolve_checkpoint(folder + "/ckpt-7")
