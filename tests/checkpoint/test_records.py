"""The variable table (tpuckpt_viz.checkpoint.records.list_records) on every real checkpoint we have.

Every folder under ``../shared/checkpoints`` that holds a checkpoint must open and list, with
exactly the keys, shapes and dtypes that ``tf.train.list_variables`` reports, unique readable
names and the record fields of the ``list`` contract (docs/reference.md). Then the facts
that SOURCES.md states for particular folders, and the session fixtures' checkpoints.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tpuckpt_viz.checkpoint.reader import open_checkpoint
from tpuckpt_viz.checkpoint.records import KINDS, list_records, slots_of
from tpuckpt_viz.errors import UserError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "checkpoints"

LIST_FIELDS = ["key", "name", "shape", "dtype", "numel", "nbytes", "kind", "layer", "slot_of",
               "slot"]
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
            "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
V1_FOLDERS = ["serving_bad_half_plus_two/00000123",
              "serving_session_bundle_half_plus_two/00000123"]


def _checkpoint_folders() -> list[str]:
    """Every folder that holds a checkpoint: prefix folders, SavedModels, V1 export folders."""
    found = set(V1_FOLDERS)
    for index in SHARED.rglob("*.index"):
        folder = index.parent
        if folder.name == "variables" and index.name == "variables.index":
            folder = folder.parent  # the SavedModel folder
        found.add(str(folder.relative_to(SHARED)))
    return sorted(found)


FOLDERS = _checkpoint_folders()


def _records(path) -> dict[str, dict]:
    return {r["key"]: r for r in list_records(open_checkpoint(str(path)))}


def test_found_the_shared_folders(shared):
    assert len(FOLDERS) >= 40
    assert "t2t_transformer_test_ckpt" in FOLDERS and "tfx_chicago_taxi_estimator" in FOLDERS


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_shared_folder_lists_like_tensorflow(shared, tf, folder):
    ckpt = open_checkpoint(str(shared / folder))
    records = list_records(ckpt)
    assert records, folder
    reader = tf.compat.v1.train.NewCheckpointReader(ckpt.prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    assert [r["key"] for r in records] == sorted(shapes)
    assert [k for k, _ in tf.train.list_variables(ckpt.prefix)] == sorted(shapes)
    names = [r["name"] for r in records]
    assert len(set(names)) == len(names), [n for n, c in Counter(names).items() if c > 1]
    keys = {r["key"] for r in records}
    for r in records:
        assert list(r) == LIST_FIELDS
        assert r["shape"] == list(shapes[r["key"]]) and all(type(d) is int for d in r["shape"])
        assert r["dtype"] == dtypes[r["key"]].name
        assert r["numel"] == math.prod(r["shape"])
        if r["dtype"] in ITEMSIZE:
            assert r["nbytes"] == r["numel"] * ITEMSIZE[r["dtype"]]
        assert r["kind"] in KINDS
        assert isinstance(r["name"], str) and r["name"]
        assert r["layer"] is None or isinstance(r["layer"], str)
        # slot and slot_of are set exactly on slots, and link to an existing variable
        assert (r["kind"] == "slot") == (r["slot_of"] is not None) == (r["slot"] is not None)
        if r["slot_of"] is not None:
            assert r["slot_of"] in keys and r["slot_of"] != r["key"]


# --------------------------------------------------------------- facts from SOURCES.md

def test_t2t_transformer(shared):
    records = _records(shared / "t2t_transformer_test_ckpt")
    assert len(records) == 250
    dtypes = Counter(r["dtype"] for r in records.values())
    assert dtypes == {"float32": 248, "int64": 1, "int32": 1}
    step = records["global_step"]
    assert (step["dtype"], step["kind"], step["shape"]) == ("int64", "counter", [])
    ckpt = open_checkpoint(str(shared / "t2t_transformer_test_ckpt"))
    assert int(ckpt.read("global_step")) == 1
    assert float(ckpt.read("training/beta1_power")) == pytest.approx(0.81)
    assert records["training/beta1_power"]["kind"] == "optimizer"
    adam = [r for r in records.values() if r["slot"] in ("Adam", "Adam_1")]
    assert adam and len(adam) == 2 * len({r["slot_of"] for r in adam})
    for r in adam:
        assert r["key"] == "training/" + r["slot_of"] + "/" + r["slot"]
        assert records[r["slot_of"]]["kind"] in ("weight", "bias", "norm")


@pytest.mark.parametrize("step", ["0", "999", "1000"])
def test_chicago_taxi_estimator(shared, step):
    prefix = shared / "tfx_chicago_taxi_estimator" / f"model.ckpt-{step}"
    records = _records(prefix)
    assert len(records) == 60
    int64 = sorted(k for k, r in records.items() if r["dtype"] == "int64")
    assert int64 == ["global_step", "training/Ftrl/iter"]
    assert sum(r["dtype"] == "float32" for r in records.values()) == 58
    assert records["global_step"]["kind"] == "counter"
    assert records["linear/linear_model/company_xf/weights"]["shape"] == [1010, 1]
    for key, r in records.items():
        if key.startswith(("dnn/", "linear/")):
            want = ({"accumulator"} if key.startswith("dnn/") else {"accumulator", "linear"})
            opt = "Adagrad" if key.startswith("dnn/") else "Ftrl"
            slots = slots_of(list(records.values()), key)
            assert {s["slot"] for s in slots} == want, key
            assert {s["key"] for s in slots} == {f"training/{opt}/{key}/{w}" for w in want}
            assert r["kind"] in ("weight", "bias")
    for name in ("training/Adagrad/learning_rate", "training/Ftrl/beta", "training/Ftrl/iter",
                 "training/Ftrl/learning_rate_power"):
        assert records[name]["kind"] == "optimizer", name


def test_t5x_mtf_partial(shared):
    ckpt = open_checkpoint(str(shared / "t5x_mtf_tiny_t5_PARTIAL"))
    records = {r["key"]: r for r in list_records(ckpt)}
    assert len(records) == 105
    bf16 = [r for r in records.values() if r["dtype"] == "bfloat16"]
    slots = [r for r in records.values() if r["key"].endswith("_slot_v")]
    assert len(bf16) == 52 and len(slots) == 52
    for r in slots:
        assert r["kind"] == "slot" and r["slot"] == "v" and r["dtype"] == "float32"
        assert r["slot_of"] == r["key"][: -len("_slot_v")]
        assert records[r["slot_of"]]["dtype"] == "bfloat16"
    assert records["global_step"]["kind"] == "counter"
    # listing works; reading a weight in the missing shard names the missing file
    in_shard_1 = [k for k in records if ckpt._missing_shard(k)]
    assert in_shard_1
    with pytest.raises(UserError, match=r"model\.ckpt-0\.data-00001-of-00002"):
        ckpt.read(in_shard_1[0])


def test_lingvo_index_only(shared):
    records = _records(shared / "lingvo_lenet_test_model_PARTIAL")
    assert len(records) == 23
    assert records["lenet5/conv0/w/var"]["kind"] == "weight"
    adam = [r for r in records.values() if r["slot"] in ("Adam", "Adam_1")]
    assert len(adam) == 12
    assert all(r["slot_of"] == r["key"].rsplit("/", 1)[0] for r in adam)


IRIS_TRIALS = sorted(p.relative_to(SHARED).as_posix() for p in
                     (SHARED / "tfx_iris_kerastuner_checkpoints").glob("trial_*/checkpoints/epoch_0"))


@pytest.mark.parametrize("trial", IRIS_TRIALS, ids=lambda t: t.split("/")[1][:12])
def test_iris_kerastuner_trials(shared, trial):
    # the prefix is named "checkpoint", like the state file beside it
    ckpt = open_checkpoint(str(shared / trial))
    assert ckpt.prefix.endswith("/epoch_0/checkpoint")
    records = {r["key"]: r for r in list_records(ckpt)}
    assert len(records) in (18, 24, 30)
    slots = [r for r in records.values() if r["kind"] == "slot"]
    assert {r["slot"] for r in slots} == {"m", "v"}
    for r in slots:
        assert r["key"] == r["slot_of"].replace(
            "/.ATTRIBUTES/", f"/.OPTIMIZER_SLOT/optimizer/{r['slot']}/.ATTRIBUTES/")
    weights = [r for r in records.values() if r["kind"] in ("weight", "bias")]
    assert len(slots) == 2 * len(weights)
    assert int(ckpt.read("optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE")) == 20
    assert records["optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"]["kind"] == "optimizer"


def test_iris_trial_sizes_cover_18_24_30(shared):
    sizes = {len(_records(shared / t)) for t in IRIS_TRIALS}
    assert len(IRIS_TRIALS) == 6 and sizes == {18, 24, 30}


def test_bert_lite(shared):
    ckpt = open_checkpoint(str(shared / "tfranking_bert_lite_tf2"))
    records = {r["key"]: r for r in list_records(ckpt)}
    assert len(records) == 25
    deep = ("model/layer_with_weights-4/_attention_layer/_key_dense/kernel"
            "/.ATTRIBUTES/VARIABLE_VALUE")
    assert records[deep]["name"] == "transformer/layer_0/self_attention/key/kernel"
    assert records[deep]["kind"] == "weight"
    assert int(ckpt.read("save_counter/.ATTRIBUTES/VARIABLE_VALUE")) == 1
    assert records["save_counter/.ATTRIBUTES/VARIABLE_VALUE"]["kind"] == "counter"


def test_tf2onnx_regression_values(shared):
    ckpt = open_checkpoint(str(shared / "tf2onnx_regression" / "checkpoint"))
    assert ckpt.prefix.endswith("/model")
    values = {k: float(ckpt.read(k)) for k in ckpt.entries}
    assert sorted(values) == ["W", "b"]
    assert values["W"] == pytest.approx(0.21396, abs=1e-5)
    assert values["b"] == pytest.approx(1.04953, abs=1e-5)


@pytest.mark.parametrize("folder,values", [
    ("serving_bad_half_plus_two/00000123", {"Variable": 0.5, "Variable_1": 2.0}),
    ("serving_session_bundle_half_plus_two/00000123", {"a": 0.5, "b": 2.0}),
    ("serving_saved_model_half_plus_two_cpu/00000123",
     {"a": 0.5, "b": 2.0, "c": 3.0, "a2": 0.5, "c2": 3.0}),
])
def test_known_values(shared, folder, values):
    ckpt = open_checkpoint(str(shared / folder))
    got = {k: float(ckpt.read(k)) for k in values}
    assert got == values


def test_savedmodel_folder_lists_its_variables(shared):
    ckpt = open_checkpoint(str(shared / "tftext_segmenter_hub_module"))
    assert ckpt.resolved.saved_model_dir.endswith("tftext_segmenter_hub_module")
    records = _records(shared / "tftext_segmenter_hub_module")
    assert len(records) == 6 and all(r["dtype"] == "float32" for r in records.values())
    assert any(r["shape"] == [90472, 8] for r in records.values())


# ------------------------------------------------------------------- made checkpoints

def test_keras3_kernel_has_two_slots(keras3_adam_ckpt):
    records = list(_records(keras3_adam_ckpt).values())
    kernel = next(r for r in records if r["name"] in ("dense/kernel", "sequential/dense/kernel"))
    assert kernel["kind"] == "weight" and kernel["shape"] == [3, 4]
    slots = slots_of(records, kernel["key"])
    assert sorted(s["slot"] for s in slots) == ["momentum", "velocity"]
    assert all(s["kind"] == "slot" and s["shape"] == [3, 4] for s in slots)
    # every trainable variable has its two Adam slots, and nothing else is a slot
    trainable = [r for r in records if r["kind"] in ("weight", "bias", "norm")]
    assert len(trainable) == 6
    assert sum(r["kind"] == "slot" for r in records) == 12
    assert all(len(slots_of(records, r["key"])) == 2 for r in trainable)
    moving = [r for r in records if r["kind"] == "stat"]
    assert sorted(r["name"].rsplit("/", 1)[-1] for r in moving) == ["moving_mean",
                                                                    "moving_variance"]


def test_tf1_saver(tf1_saver_ckpt, tf):
    ckpt = open_checkpoint(tf1_saver_ckpt)
    records = {r["key"]: r for r in list_records(ckpt)}
    assert sorted(records) == sorted(k for k, _ in tf.train.list_variables(tf1_saver_ckpt))
    # the partitioned variable is listed once, whole
    assert [k for k in records if k.startswith("embedding")] == [
        "embedding", "embedding/Adam", "embedding/Adam_1"]
    assert records["embedding"]["shape"] == [9, 2] and records["embedding"]["kind"] == "weight"
    assert ckpt.read("embedding").shape == (9, 2)
    for var in ("dense/kernel", "dense/bias", "embedding", "batch_normalization/gamma",
                "batch_normalization/beta"):
        assert {(s["key"], s["slot"]) for s in slots_of(list(records.values()), var)} == {
            (f"{var}/Adam", "Adam"), (f"{var}/Adam_1", "Adam_1")}, var
    assert records["beta1_power"]["kind"] == records["beta2_power"]["kind"] == "optimizer"
    assert records["global_step"]["kind"] == "counter"
    assert int(ckpt.read("global_step")) == 3
    assert records["batch_normalization/moving_mean"]["kind"] == "stat"
    assert not slots_of(list(records.values()), "batch_normalization/moving_mean")


def test_bf16_dtypes_and_nbytes(bf16_ckpt):
    prefix, values = bf16_ckpt
    records = {r["name"]: r for r in list_records(open_checkpoint(prefix))}
    want = {"bf16": ("bfloat16", 2), "f16": ("float16", 2), "i32": ("int32", 4),
            "flag": ("bool", 1), "text": ("string", None)}
    for name, (dtype, size) in want.items():
        r = records[name]
        assert r["dtype"] == dtype and r["shape"] == list(np.shape(values[name]))
        if size:
            assert r["nbytes"] == r["numel"] * size
    ckpt = open_checkpoint(prefix)
    key = "bf16/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(ckpt.read(key).astype(np.float32),
                                  values["bf16"].astype(np.float32))
    assert list(ckpt.read("text/.ATTRIBUTES/VARIABLE_VALUE")) == list(values["text"])


def test_slots_of_unknown_key_is_empty(keras3_adam_ckpt):
    assert slots_of(list(_records(keras3_adam_ckpt).values()), "no/such/key") == []


def test_paths_to_the_same_checkpoint_list_the_same(shared):
    folder = shared / "t2t_transformer_test_ckpt"
    forms = [folder, folder / "model.ckpt-1", folder / "model.ckpt-1.index",
             folder / "model.ckpt-1.data-00001-of-00002", Path(str(folder) + "/")]
    listings = [list_records(open_checkpoint(str(p))) for p in forms]
    assert all(lst == listings[0] for lst in listings)
