"""Kind, slot and slot-link rules (tpuckpt_viz.checkpoint.kinds): one table row per real key pattern.

The first table calls ``grouping.classify`` directly with the keys that surround each pattern
in real checkpoints; the second checks the same rules on the real checkpoints under
``../shared/checkpoints`` and the ones the session fixtures write, through the catalog.
"""

from __future__ import annotations

import pytest

from tpuckpt_viz.checkpoint.kinds import classify, readable_names
from tpuckpt_viz.checkpoint.objectgraph import OBJECT_GRAPH_KEY, object_path
from tpuckpt_viz.checkpoint.reader import open_checkpoint
from tpuckpt_viz.checkpoint.records import list_records

V = "/.ATTRIBUTES/VARIABLE_VALUE"
K3_KERNEL = "optimizer/_trainable_variables/0" + V
K3_MOMENTUM = "optimizer/_variables/2" + V
K3_VELOCITY = "optimizer/_variables/3" + V
K3_SLOTS = {K3_MOMENTUM: (K3_KERNEL, "momentum"), K3_VELOCITY: (K3_KERNEL, "velocity")}
K2_KERNEL = "layer_with_weights-0/kernel" + V


def row(id, key, kind, slot=None, slot_of=None, *, others=(), name=None, dtype="float32",
        ndim=2, graph=None):
    """One pattern: ``key`` among ``others`` -> (kind, slot, slot_of)."""
    return pytest.param(key, name, dtype, ndim, set(others), graph or {},
                        (kind, slot, slot_of), id=id)


ROWS = [
    # Keras 3: the object graph links slots to the raw key of the variable.
    row("keras3-kernel", K3_KERNEL, "weight", name="dense/kernel", graph=K3_SLOTS,
        others=[K3_MOMENTUM, K3_VELOCITY]),
    row("keras3-momentum", K3_MOMENTUM, "slot", "momentum", K3_KERNEL,
        name="adam/dense_kernel_momentum", graph=K3_SLOTS, others=[K3_KERNEL]),
    row("keras3-velocity", K3_VELOCITY, "slot", "velocity", K3_KERNEL,
        name="adam/dense_kernel_velocity", graph=K3_SLOTS, others=[K3_KERNEL]),
    row("keras3-iterations", "optimizer/_iterations" + V, "optimizer", name="adam/iteration",
        dtype="int64", ndim=0),
    row("keras3-learning-rate", "optimizer/_learning_rate" + V, "optimizer",
        name="adam/learning_rate", ndim=0),
    # Keras 2 / TF2: .OPTIMIZER_SLOT keys.
    row("keras2-slot-m", "layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/m" + V, "slot",
        "m", K2_KERNEL, others=[K2_KERNEL]),
    row("keras2-slot-v", "layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/v" + V, "slot",
        "v", K2_KERNEL, others=[K2_KERNEL]),
    row("keras2-iter", "optimizer/iter" + V, "optimizer", dtype="int64", ndim=0),
    # TF1 slot suffixes "<var>/<slot>", linked only when "<var>" exists.
    *[row(f"tf1-{s}", f"dense/kernel/{s}", "slot", s, "dense/kernel", others=["dense/kernel"])
      for s in ("Adam", "Adam_1", "Momentum", "RMSProp", "RMSProp_1", "Adagrad",
                "accumulator", "linear", "adam_m", "adam_v")],
    row("tf1-lingvo-var", "lenet5/conv0/w/var/Adam", "slot", "Adam", "lenet5/conv0/w/var",
        others=["lenet5/conv0/w/var"]),
    row("tf1-adam-of-missing-var", "gone/kernel/Adam", "weight"),
    row("tf1-adam_1-of-missing-var", "gone/bias/Adam_1", "weight", ndim=1),
    # Mesh TensorFlow / T5 Adafactor.
    *[row(f"mtf-{s}", f"encoder/block_000/layer_000/SelfAttention/q_{s}", "slot",
          s.split("_")[-1], "encoder/block_000/layer_000/SelfAttention/q",
          others=["encoder/block_000/layer_000/SelfAttention/q"])
      for s in ("slot_v", "slot_vr", "slot_vc")],
    row("mtf-slot-of-missing-var", "encoder/gone_slot_v", "weight"),
    # Optimizer scopes: "training/<Optimizer>/<var>/<slot>" and "training/<Optimizer>/<scalar>".
    row("estimator-adagrad-slot", "training/Adagrad/dnn/hiddenlayer_0/kernel/accumulator",
        "slot", "accumulator", "dnn/hiddenlayer_0/kernel", others=["dnn/hiddenlayer_0/kernel"]),
    row("estimator-ftrl-linear", "training/Ftrl/linear/linear_model/bias_weights/linear", "slot",
        "linear", "linear/linear_model/bias_weights",
        others=["linear/linear_model/bias_weights"]),
    row("estimator-slot-of-missing-var", "training/Adagrad/gone/kernel/accumulator", "weight"),
    row("ftrl-beta-is-optimizer", "training/Ftrl/beta", "optimizer", ndim=0),
    row("adagrad-learning-rate", "training/Adagrad/learning_rate", "optimizer", ndim=0),
    row("ftrl-iter", "training/Ftrl/iter", "optimizer", dtype="int64", ndim=0),
    # tensor2tensor: Adam slots under the "training" name scope.
    row("t2t-adam", "training/transformer/body/ffn/conv1/kernel/Adam", "slot", "Adam",
        "transformer/body/ffn/conv1/kernel", others=["transformer/body/ffn/conv1/kernel"]),
    row("t2t-adam_1", "training/transformer/body/ffn/conv1/kernel/Adam_1", "slot", "Adam_1",
        "transformer/body/ffn/conv1/kernel", others=["transformer/body/ffn/conv1/kernel"]),
    row("beta1_power", "beta1_power", "optimizer", ndim=0),
    row("training/beta2_power", "training/beta2_power", "optimizer", ndim=0),
    # Counters.
    row("global_step", "global_step", "counter", dtype="int64", ndim=0),
    row("save_counter", "save_counter" + V, "counter", name="save_counter", dtype="int64",
        ndim=0),
    row("tf2-global_step", "step" + V, "counter", name="global_step", dtype="int64", ndim=0),
    # Running statistics and moving averages.
    row("moving_mean", "batch_normalization/moving_mean", "stat", ndim=1),
    row("moving_variance", "bn/moving_variance", "stat", ndim=1),
    row("ema", "dense/kernel/ExponentialMovingAverage", "stat", others=["dense/kernel"]),
    # Normalization parameters.
    row("LayerNorm-gamma", "bert/encoder/layer_0/output/LayerNorm/gamma", "norm", ndim=1),
    row("batch_normalization-beta", "batch_normalization/beta", "norm", ndim=1),
    row("rms_norm-scale", "decoder/block_000/layer_000/rms_norm/scale", "norm",
        dtype="bfloat16", ndim=1),
    row("t2t-layer_norm_scale", "body/layer_prepostprocess/layer_norm/layer_norm_scale", "norm",
        ndim=1),
    row("t2t-layer_norm_bias", "body/layer_prepostprocess/layer_norm/layer_norm_bias", "norm",
        ndim=1),
    # Metrics.
    row("keras-metric-total", "keras_api/metrics/0/total" + V, "metric", ndim=0),
    row("keras-metric-count", "keras_api/metrics/1/count" + V, "metric", ndim=0),
    # Biases and weights.
    row("bias", "dense/bias", "bias", ndim=1),
    row("biases", "conv1/biases", "bias", ndim=1),
    row("b", "fc/b", "bias", ndim=1),
    row("kernel", "dense/kernel", "weight"),
    row("embeddings", "embedding/embeddings", "weight"),
    row("weights", "linear/linear_model/company_xf/weights", "weight"),
    # Everything else.
    row("object-graph", OBJECT_GRAPH_KEY, "other", dtype="string", ndim=0),
    row("int-scalar", "train_stats/problem_0_steps", "other", dtype="int32", ndim=0),
]


@pytest.mark.parametrize("key,name,dtype,ndim,others,graph,expected", ROWS)
def test_classify(key, name, dtype, ndim, others, graph, expected):
    keys = others | {key}
    names = {k: object_path(k) for k in keys}
    if name:
        names[key] = name
    group = classify(key, names[key], dtype, ndim, keys, graph, names)
    assert (group.kind, group.slot, group.slot_of) == expected


def test_slot_layer_is_its_variables_layer():
    keys = {"dense/kernel", "dense/kernel/Adam"}
    group = classify("dense/kernel/Adam", "dense/kernel/Adam", "float32", 2, keys, {},
                     {k: k for k in keys})
    assert group.layer == "dense"


def test_readable_names_fall_back_to_object_path_when_full_names_repeat():
    keys = ["a" + V, "b" + V, "c" + V]
    names = readable_names(keys, {"a" + V: "Variable", "b" + V: "Variable", "c" + V: "dense/k"})
    assert names == {"a" + V: "a", "b" + V: "b", "c" + V: "dense/k"}
    # A full_name that equals another key's object path must not collide either.
    names = readable_names(keys, {"a" + V: "b"})
    assert len(set(names.values())) == 3


# ------------------------------------------------------------------ real checkpoints

def _records(path):
    return {r["key"]: r for r in list_records(open_checkpoint(str(path)))}


IRIS = "tfx_iris_kerastuner_checkpoints/trial_0768efe3e8ad9c25728f72279e08e4e0/checkpoints/epoch_0"
T2T_KERNEL = "transformer/body/encoder/layer_0/ffn/conv1/kernel"

SHARED_ROWS = [
    ("t2t_transformer_test_ckpt", "training/" + T2T_KERNEL + "/Adam", "slot", "Adam",
     T2T_KERNEL),
    ("t2t_transformer_test_ckpt", "training/" + T2T_KERNEL + "/Adam_1", "slot", "Adam_1",
     T2T_KERNEL),
    ("t2t_transformer_test_ckpt", T2T_KERNEL, "weight", None, None),
    ("t2t_transformer_test_ckpt", "training/beta1_power", "optimizer", None, None),
    ("t2t_transformer_test_ckpt", "global_step", "counter", None, None),
    ("t2t_transformer_test_ckpt",
     "transformer/body/encoder/layer_prepostprocess/layer_norm/layer_norm_scale", "norm", None,
     None),
    ("tfx_chicago_taxi_estimator", "training/Adagrad/dnn/hiddenlayer_0/kernel/accumulator",
     "slot", "accumulator", "dnn/hiddenlayer_0/kernel"),
    ("tfx_chicago_taxi_estimator", "training/Ftrl/linear/linear_model/company_xf/weights/linear",
     "slot", "linear", "linear/linear_model/company_xf/weights"),
    ("tfx_chicago_taxi_estimator", "training/Ftrl/beta", "optimizer", None, None),
    ("tfx_chicago_taxi_estimator", "dnn/hiddenlayer_0/bias", "bias", None, None),
    ("t5x_mtf_tiny_t5_PARTIAL", "decoder/block_000/layer_000/SelfAttention/q_slot_v", "slot",
     "v", "decoder/block_000/layer_000/SelfAttention/q"),
    ("t5x_mtf_tiny_t5_PARTIAL", "decoder/block_000/layer_000/rms_norm/scale", "norm", None,
     None),
    ("lingvo_lenet_test_model_PARTIAL", "lenet5/fc/w/var/Adam_1", "slot", "Adam_1",
     "lenet5/fc/w/var"),
    ("lingvo_lenet_test_model_PARTIAL", "lenet5/fc/b/var", "bias", None, None),
    ("lingvo_lenet_test_model_PARTIAL", "beta1_power", "optimizer", None, None),
    (IRIS, "layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/m" + V, "slot", "m",
     "layer_with_weights-0/kernel" + V),
    (IRIS, "optimizer/iter" + V, "optimizer", None, None),
    ("tfx_keras_serving", "keras_api/metrics/0/total" + V, "metric", None, None),
    ("tfranking_bert_lite_tf2", "model/layer_with_weights-3/gamma" + V, "norm", None, None),
    ("tfranking_bert_lite_tf2", "save_counter" + V, "counter", None, None),
    ("tfranking_bert_lite_tf2", OBJECT_GRAPH_KEY, "other", None, None),
]


@pytest.mark.parametrize("folder,key,kind,slot,slot_of", SHARED_ROWS,
                         ids=[f"{r[0].split('/')[0]}:{r[1].split('/')[-1]}" for r in SHARED_ROWS])
def test_shared_checkpoint_rules(shared, folder, key, kind, slot, slot_of):
    rec = _records(shared / folder)[key]
    assert (rec["kind"], rec["slot"], rec["slot_of"]) == (kind, slot, slot_of)


def test_every_slot_links_to_an_existing_key(shared):
    for folder in ("t2t_transformer_test_ckpt", "tfx_chicago_taxi_estimator",
                   "t5x_mtf_tiny_t5_PARTIAL", "lingvo_lenet_test_model_PARTIAL", IRIS,
                   "tfx_keras_serving"):
        records = _records(shared / folder)
        slots = [r for r in records.values() if r["kind"] == "slot"]
        assert slots, folder
        for r in slots:
            assert r["slot_of"] in records, (folder, r["key"])
            assert records[r["slot_of"]]["kind"] != "slot"
            assert records[r["slot_of"]]["shape"] == r["shape"] or r["slot"] in ("vr", "vc")


def test_keras3_demo_slots_link_to_raw_keys(demo_run):
    records = _records(demo_run)  # the latest step: kernels live under the optimizer
    kernel = next(r for r in records.values() if r["name"] == "dense/kernel")
    assert kernel["kind"] == "weight" and kernel["layer"] == "dense"
    assert kernel["key"].startswith("optimizer/_trainable_variables/")
    slots = {r["slot"]: r for r in records.values() if r["slot_of"] == kernel["key"]}
    assert set(slots) == {"momentum", "velocity"}
    assert all(r["kind"] == "slot" and r["layer"] == "dense" for r in slots.values())
    assert all(r["shape"] == kernel["shape"] for r in slots.values())
    kinds = {r["name"]: r["kind"] for r in records.values()}
    assert kinds["batch_norm/moving_mean"] == "stat"
    assert kinds["batch_norm/gamma"] == "norm" and kinds["layer_norm/beta"] == "norm"
    assert kinds["classifier/bias"] == "bias"
    # tf.train.Checkpoint(step=tf.Variable(name="global_step")): the object path, "step"
    assert kinds["step"] == "counter" and kinds["save_counter"] == "counter"
    assert kinds["adam/iteration"] == "optimizer"


def test_tf1_saver_rules(tf1_saver_ckpt):
    records = _records(tf1_saver_ckpt)
    assert records["dense/kernel/Adam"]["slot_of"] == "dense/kernel"
    assert records["embedding/Adam_1"]["slot_of"] == "embedding"
    assert records["batch_normalization/moving_mean"]["kind"] == "stat"
    assert records["batch_normalization/gamma"]["kind"] == "norm"
    assert records["beta1_power"]["kind"] == "optimizer"
    assert records["global_step"]["kind"] == "counter"
