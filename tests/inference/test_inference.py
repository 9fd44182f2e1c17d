"""Inference: real SavedModels from ../shared/checkpoints with known outputs, the demo run
restored into builders, the safety scan on a SavedModel written here, and input parsing."""

from __future__ import annotations

import json
import math
import textwrap
import threading

import numpy as np
import pytest

from tpuckpt_viz import demo
from tpuckpt_viz.dashboard import inferdata
from tpuckpt_viz.errors import UserError
from tpuckpt_viz.inference import api as inf
from tpuckpt_viz.inference.devices import DeviceChoice, choose_device

HALF_PLUS_TWO = "serving_saved_model_half_plus_two_cpu/00000123"
TF2_HALF_PLUS_TWO = "serving_saved_model_half_plus_two_tf2_cpu/00000123"
TFJS = "tfjs_node_test_saved_models/"
X = "[[1],[2],[5]]"


def run(shared, folder, **kw):
    return inf.run_inference(str(shared / folder), device="cpu", **kw)


def values(result, name):
    return np.asarray(result.outputs[name]).ravel().tolist()


# --------------------------------------------------------------------------------------------
# Describing and picking

def test_describe_half_plus_two(shared):
    (mg,) = inf.describe_saved_model(str(shared / HALF_PLUS_TWO))
    assert mg.tags == ("serve",)
    names = [s.name for s in mg.signatures]
    assert names == sorted(names)
    assert {"serving_default", "regress_x_to_y", "regress_x_to_y2", "classify_x_to_y",
            "regress_x2_to_y3"} <= set(names)
    sd = mg.signature("serving_default")
    assert sd.method_name == "tensorflow/serving/predict"
    assert [(t.name, t.tensor, t.dtype, t.shape) for t in sd.inputs] == [
        ("x", "x:0", "float32", [-1, 1])]
    assert [(t.name, t.dtype, t.shape) for t in sd.outputs] == [("y", "float32", [-1, 1])]
    # serialized tf.Example input of unknown rank
    (inp,) = mg.signature("regress_x_to_y").inputs
    assert (inp.dtype, inp.shape) == ("string", None)


def test_describe_tf2_hides_init_op_and_shows_ref_dtypes(shared):
    (mg,) = inf.describe_saved_model(str(shared / TF2_HALF_PLUS_TWO))
    assert all(not s.name.startswith("__") for s in mg.signatures)
    (counter,) = inf.describe_saved_model(str(shared / "serving_saved_model_counter/00000123"))
    assert counter.signature("get_counter").outputs[0].dtype == "float32_ref"


def test_pick_rules(shared):
    metas = inf.describe_saved_model(str(shared / HALF_PLUS_TWO))
    mg, sig = inf.pick(metas)
    assert (mg.tags, sig.name) == (("serve",), "serving_default")
    _, sig = inf.pick(metas, tags={"serve"}, signature="regress_x2_to_y3")
    assert sig.name == "regress_x2_to_y3"
    with pytest.raises(UserError, match=r"no signature 'nope'.*classify_x_to_y, regress_x2_to_y3"):
        inf.pick(metas, signature="nope")
    # no serving_default and several signatures: the choices are listed
    metas = inf.describe_saved_model(str(shared / "tfrust_regression_savedmodel"))
    with pytest.raises(UserError, match="pass --signature with one of b, train, w"):
        inf.pick(metas)
    # the only tag set, even when it is {train, serve}
    metas = inf.describe_saved_model(str(shared / "tfrust_regression_model"))
    assert inf.pick(metas)[0].tags == ("serve", "train")
    assert inf.pick(metas, tags="train,serve")[0].tags == ("serve", "train")
    with pytest.raises(UserError, match=r"tag sets \('serve', 'train'\); pass --tag serve,train"):
        inf.pick(metas, tags="serve")


def test_eval_only_saved_model_asked_for_serve(shared):
    path = "tfx_chicago_taxi_tfma_evalsavedmodel/1646034758"
    with pytest.raises(UserError) as err:
        run(shared, path, tags="serve")
    assert "tag sets ('eval',)" in str(err.value)
    assert "--tag eval" in str(err.value)


# --------------------------------------------------------------------------------------------
# Known outputs

@pytest.mark.parametrize("folder, signature, inputs, output, expected", [
    (HALF_PLUS_TWO, None, {"x": X}, "y", [2.5, 3, 4.5]),
    ("serving_saved_model_half_plus_two_gpu/00000123", None, {"x": X}, "y", [2.5, 3, 4.5]),
    ("serving_saved_model_half_plus_two_mkl/00000123", None, {"x": X}, "y", [2.5, 3, 4.5]),
    ("serving_saved_model_half_plus_two_2_versions", None, {"x": X}, "y", [2.5, 3, 4.5]),
    ("serving_saved_model_half_plus_two_2_versions/00000123", None, {"x": X}, "y", [2.5, 3, 4.5]),
    (TF2_HALF_PLUS_TWO, None, {"x": "[[3.0]]"}, "y", [3.5]),
    (HALF_PLUS_TWO, "regress_x2_to_y3", {"inputs": X}, "outputs", [3.5, 4, 5.5]),
    (HALF_PLUS_TWO, "regress_x_to_y2", {"inputs": '{"x": [1, 2]}'}, "outputs", [3.5, 4.0]),
    ("serving_saved_model_half_plus_three/00000123", None, {"x": X}, "y", [3.5, 4, 5.5]),
    (TFJS + "times_three_float", None, {"x": "2"}, "output_0", [6]),
    (TFJS + "times_two_int", None, {"x": "5"}, "output_0", [10]),
    (TFJS + "int64_multiply", None, {"x": "[1, 2]"}, "output_0", [6, 12]),
    (TFJS + "uint8_multiply", None, {"x": "[4]"}, "output_0", [24]),
    (TFJS + "module_with_multiple_signatures", None, {"x": "2"}, "output_0", [6]),
    (TFJS + "module_with_multiple_signatures", "timestwo", {"x": "2"}, "output_0", [4]),
    ("tfrust_regression_model", None, {"x": "1", "y": "0"}, "out", [-0.8579]),
    ("tf2onnx_regression/saved_model", None, {"X": "1"}, "pred", [1.2635]),
    ("tfjava_saved_model_using_python/model", "add", {"a": "2", "b": "3"}, "output_0", [5]),
    ("serving_matrix_half_plus_two", None, {"x": "[[[0,2,4],[0,2,4],[0,2,4]]]"}, "y",
     [2, 3, 4] * 3),
])
def test_known_outputs(shared, folder, signature, inputs, output, expected):
    result = run(shared, folder, signature=signature, inputs=inputs)
    assert result.source == "saved_model" and result.restore is None
    assert result.device == "/device:CPU:0"
    assert values(result, output) == pytest.approx(expected, abs=1e-4)


def test_dtypes_come_from_the_signature(shared):
    result = run(shared, TFJS + "uint8_multiply", inputs={"x": "[4]"})
    assert result.inputs["x"].dtype == np.uint8
    assert result.outputs["output_0"].dtype == np.int32
    result = run(shared, TFJS + "int64_multiply", inputs={"x": "[1, 2]"})
    assert result.inputs["x"].dtype == np.int64


def test_multi_output(shared):
    result = run(shared, TFJS + "model_single_input_multi_output", inputs={"x": "4"})
    assert {k: values(result, k) for k in result.outputs} == {"output_0": [8], "output_1": [4]}
    result = run(shared, TFJS + "model_multi_output", inputs={"x": "4", "y": "3"})
    assert sorted(result.outputs) == ["output_0", "output_1"]


def test_tf_examples_through_regress_x_to_y2(shared):
    examples = inf.make_examples({"x": [1, 2]}, {"x": "float32"})
    result = run(shared, HALF_PLUS_TWO, signature="regress_x_to_y2",
                 inputs={"inputs": np.array(examples, dtype=object)})
    assert values(result, "outputs") == pytest.approx([3.5, 4.0])
    # one JSON object per example works too
    result = run(shared, HALF_PLUS_TWO, signature="regress_x_to_y2",
                 inputs={"inputs": '[{"x": 1}, {"x": 2}]'})
    assert values(result, "outputs") == pytest.approx([3.5, 4.0])


def test_iris_keras2_export_runs_through_the_tf1_loader(shared):
    path = str(shared / "tfx_iris_keras_serving")
    features = inf.example_features(path)
    assert len(features) == 4 and set(features.values()) == {"float32"}
    setosa = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    row = {name: [next(v for k, v in setosa.items() if k in name)] for name in features}
    examples = inf.make_examples(row, features)
    result = run(shared, "tfx_iris_keras_serving", inputs={"examples": np.array(examples, object)})
    probs = result.outputs["output_0"][0]
    assert probs[0] == pytest.approx(0.9998, abs=1e-3)
    assert probs.argmax() == 0 and probs[2] < 1e-6


def test_keras2_export_with_generated_examples(shared):
    # tf.saved_model.load fails ('_UserObject' has no add_slot); the TF1 loader runs it, and
    # the generated input is real tf.Examples built from the graph's parse spec.
    result = run(shared, "tfx_keras_serving", batch=3)
    out = result.outputs["output_0"]
    assert out.shape == (3, 3)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-4)


def test_counter_state_is_shared_between_signatures(shared):
    folder = "serving_saved_model_counter/00000123"
    inf.clear_caches()

    def call(sig, **inputs):
        return float(run(shared, folder, signature=sig, inputs=inputs or None).outputs["output"])

    assert call("get_counter") == 0
    assert call("incr_counter") == 1
    assert call("incr_counter_by", delta="5") == 6
    assert call("get_counter") == 6
    assert call("reset_counter") == 0
    assert call("get_counter") == 0


# --------------------------------------------------------------------------------------------
# Failing clearly

def test_missing_saved_model_pb(shared):
    with pytest.raises(UserError) as err:
        run(shared, "serving_tf_text_regression")
    message = str(err.value)
    assert "has no saved_model.pb: it is not a SavedModel" in message
    assert "variables/ folder in Browse" in message
    with pytest.raises(UserError, match="has no saved_model.pb"):
        inf.describe_saved_model(str(shared / "serving_tf_text_regression/01"))


def test_custom_ops_missing(shared):
    with pytest.raises(UserError) as err:
        run(shared, "tfdf_saved_model_adult_rf")
    message = str(err.value)
    assert "SimpleML" in message and "tensorflow_decision_forests" in message
    assert "\n" not in message and "Traceback" not in message


def test_bad_inputs_name_the_expected_shape_and_dtype(shared):
    with pytest.raises(UserError, match=r"input 'x': not numbers; expected float32 values of "
                                        r"shape \[-1, 1\]"):
        run(shared, HALF_PLUS_TWO, inputs={"x": '"abc"'})
    with pytest.raises(UserError, match="neither a JSON literal"):
        run(shared, HALF_PLUS_TWO, inputs={"x": "__import__('os').getcwd()"})
    with pytest.raises(UserError, match="has no input 'y': its inputs are x"):
        run(shared, HALF_PLUS_TWO, inputs={"y": "1"})
    # TensorFlow itself rejects it: a tf.Example without the features the model needs
    with pytest.raises(UserError) as err:
        run(shared, "tfx_iris_keras_serving", inputs={"examples": '{"colour": ["red"]}'})
    message = str(err.value)
    assert "rejected the inputs" in message and "is required but could not be found" in message
    assert "examples: string [-1]" in message
    assert "Graph execution error" not in message


def test_tf1_graph_feeds_are_shape_checked(shared):
    # tf.saved_model.load would broadcast [2] against the [-1, 1] placeholder; the TF1
    # session (and TF Serving) refuse it, and so do we, with the session's own words.
    # (a flat list is taken as the [-1, 1] column it can only mean: not a bad feed)
    for bad, shape in (("[[1.0, 2.0]]", r"\(1, 2\)"), ("1.0", r"\(\)")):
        with pytest.raises(UserError, match=rf"Cannot feed value of shape {shape} for Tensor "
                                            r"x:0, which has shape \(None, 1\) \(it declares "
                                            r"x: float32 \[-1, 1\]\)"):
            run(shared, HALF_PLUS_TWO, inputs={"x": bad})


def test_unreadable_checkpoints_fail_clearly(tf, tmp_path):
    ckpt = tf.train.Checkpoint(w=tf.Variable(np.ones((64, 64), np.float32)))
    prefix = ckpt.write(str(tmp_path / "trunc" / "ckpt"))
    data = tmp_path / "trunc" / "ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(UserError, match="is its data file complete"):
        inf.run_inference(prefix, device="cpu")
    prefix = str(tmp_path / "raw" / "ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=tf.constant([b"bad\xffname"]),
                      shape_and_slices=tf.constant([""]), tensors=[tf.ones((2,))])
    with pytest.raises(UserError, match="not UTF-8"):
        inf.run_inference(prefix, device="cpu")


# --------------------------------------------------------------------------------------------
# Safety scan

@pytest.fixture(scope="session")
def unsafe_saved_model(tf, tmp_path_factory):
    """A SavedModel whose signatures read and write files (tf.io.read_file / write_file)."""
    folder = tmp_path_factory.mktemp("unsafe")

    class FileOps(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def read(self, path):
            return {"contents": tf.io.read_file(path)}

        @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string)])
        def write(self, path, contents):
            tf.io.write_file(path, contents)
            return {"done": tf.constant(True)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return {"y": 2.0 * x}

    module = FileOps()
    tf.saved_model.save(module, str(folder / "model"), signatures={
        "read": module.read.get_concrete_function(),
        "write": module.write.get_concrete_function(),
        "serving_default": module.double.get_concrete_function()})
    return folder / "model"


def test_scan_refuses_file_ops(unsafe_saved_model, tmp_path, monkeypatch):
    monkeypatch.delenv("TPUCKPT_ALLOW_UNSAFE_OPS", raising=False)
    target = tmp_path / "secret.txt"
    target.write_text("hello")
    path = str(unsafe_saved_model)
    assert inf.scan_signature(path, signature="read") == ["ReadFile"]
    assert inf.scan_signature(path, signature="write") == ["WriteFile"]
    assert inf.scan_signature(path) == []
    with pytest.raises(UserError, match=r"refusing to run signature 'read'.*\(ReadFile\).*"
                                        "TPUCKPT_ALLOW_UNSAFE_OPS=1"):
        inf.run_inference(path, signature="read", inputs={"path": json.dumps(str(target))})
    with pytest.raises(UserError, match=r"WriteFile"):
        inf.run_inference(path, signature="write",
                          inputs={"path": json.dumps(str(tmp_path / "x")), "contents": '"x"'})
    assert not (tmp_path / "x").exists()
    # the safe signature of the same model runs
    assert values(inf.run_inference(path, inputs={"x": "[1, 2]"}), "y") == [2, 4]


def test_scan_allows_when_told(unsafe_saved_model, tmp_path, monkeypatch):
    target = tmp_path / "data.txt"
    target.write_text("hello")
    path = str(unsafe_saved_model)
    result = inf.run_inference(path, signature="read", allow_unsafe=True, device="cpu",
                               inputs={"path": json.dumps(str(target))})
    assert result.outputs["contents"].item() == b"hello"
    monkeypatch.setenv("TPUCKPT_ALLOW_UNSAFE_OPS", "1")
    inf.run_inference(path, signature="write", device="cpu",
                      inputs={"path": json.dumps(str(tmp_path / "out.txt")), "contents": '"hi"'})
    assert (tmp_path / "out.txt").read_text() == "hi"


def test_half_plus_two_passes_the_scan_despite_its_saver(shared):
    path = str(shared / HALF_PLUS_TWO)
    proto = inf.read_saved_model(path)
    assert "SaveV2" in {n.op for n in proto.meta_graphs[0].graph_def.node}
    for sig in ("serving_default", "regress_x_to_y", "classify_x_to_y"):
        assert inf.scan_signature(path, signature=sig) == []
    # TF2 exports keep their save/restore functions in the library: not reached either
    assert inf.scan_signature(str(shared / TF2_HALF_PLUS_TWO)) == []
    assert inf.scan_signature(str(shared / "tfx_iris_keras_serving")) == []


# --------------------------------------------------------------------------------------------
# Inputs

def test_parse_json_and_dtypes():
    assert inf.parse_input_value("[[1],[2],[5]]", "float32", [-1, 1]).tolist() == [[1], [2], [5]]
    assert inf.parse_input_value("[[1],[2],[5]]", "float32", []).shape == (3, 1)  # never refused
    assert inf.parse_input_value("3", "int64").dtype == np.int64
    assert inf.parse_input_value("[4]", "uint8").dtype == np.uint8
    assert inf.parse_input_value("[true, false]", "bool").tolist() == [True, False]
    assert inf.parse_input_value('["a", "b"]', "string").tolist() == [b"a", b"b"]
    assert inf.parse_input_value("plain text", "string").item() == b"plain text"
    assert inf.parse_input_value([b"raw"], "string").tolist() == [b"raw"]
    assert inf.parse_input_value(np.arange(3), "float64").dtype == np.float64
    with pytest.raises(UserError, match=r"outside uint8's range \[0, 255\]"):
        inf.parse_input_value("[256]", "uint8", [1], name="x")
    with pytest.raises(UserError, match="int32 takes whole numbers"):
        inf.parse_input_value("[1.5]", "int32")
    with pytest.raises(UserError, match="inhomogeneous|setting an array element"):
        inf.parse_input_value("[[1], [2, 3]]", "float32")


def test_parse_files(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[1.0], [2.0]]))
    np.savez(tmp_path / "b.npz", x=np.array([1, 2]), other=np.array([3]))
    np.savez(tmp_path / "one.npz", np.array([7, 8]))
    (tmp_path / "c.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "d.txt").write_text("[1]")
    assert inf.parse_input_value(str(tmp_path / "a.npy"), "float32").tolist() == [[1], [2]]
    assert inf.parse_input_value(str(tmp_path / "b.npz"), "int64", name="x").tolist() == [1, 2]
    assert inf.parse_input_value(str(tmp_path / "one.npz"), "int32", name="z").tolist() == [7, 8]
    assert inf.parse_input_value(str(tmp_path / "c.csv"), "float32").tolist() == [[1, 2], [3, 4]]
    with pytest.raises(UserError, match="none is named 'z'"):
        inf.parse_input_value(str(tmp_path / "b.npz"), "int64", name="z")
    with pytest.raises(UserError, match="not found"):
        inf.parse_input_value(str(tmp_path / "missing.npy"), "float32")
    with pytest.raises(UserError, match="not a .npy, .npz or .csv file"):
        inf.parse_input_value(str(tmp_path / "d.txt"), "float32")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="cannot read"):
        inf.parse_input_value(str(tmp_path / "obj.npy"), "float32")


def test_make_inputs():
    specs = [inf.TensorInfo("x", "x:0", "float32", [-1, 1]),
             inf.TensorInfo("n", "n:0", "int64", None),
             inf.TensorInfo("s", "s:0", "string", [-1]),
             inf.TensorInfo("u", "u:0", "uint8", [2, -1])]
    made = inf.make_inputs(specs, "random", batch=3)
    assert made["x"].shape == (3, 1) and made["x"].dtype == np.float32
    assert made["n"].shape == () and made["n"].dtype == np.int64
    assert made["s"].tolist() == [b"", b"", b""]
    assert made["u"].shape == (2, 3) and made["u"].dtype == np.uint8
    assert np.array_equal(inf.make_inputs(specs, batch=3)["x"], made["x"])  # seeded
    assert inf.make_inputs({"z": ("float32", [2])}, "ones")["z"].tolist() == [1, 1]
    assert inf.make_inputs({"z": ("int32", [2])}, "zeros")["z"].tolist() == [0, 0]
    with pytest.raises(UserError, match="unknown fill"):
        inf.make_inputs(specs, "gaussian")


def test_make_examples_round_trip(tf):
    examples = inf.make_examples({"x": [1, 2.5], "tag": ["a", "b"], "ids": [[1, 2], [3, 4]],
                                  "maybe": [None, 3]}, {"x": "float32"})
    parsed = tf.io.parse_example(examples, {
        "x": tf.io.FixedLenFeature([], tf.float32), "tag": tf.io.FixedLenFeature([], tf.string),
        "ids": tf.io.FixedLenFeature([2], tf.int64), "maybe": tf.io.VarLenFeature(tf.int64)})
    assert parsed["x"].numpy().tolist() == [1.0, 2.5]
    assert parsed["tag"].numpy().tolist() == [b"a", b"b"]
    assert parsed["ids"].numpy().tolist() == [[1, 2], [3, 4]]
    assert parsed["maybe"].values.numpy().tolist() == [3]
    with pytest.raises(UserError, match="different numbers of values"):
        inf.make_examples({"x": [1, 2], "y": [1]})


def test_result_to_json_and_compare():
    result = inf.InferenceResult(
        "/device:CPU:0", [], {"y": np.array([1.0, np.nan, np.inf, -np.inf], np.float32),
                              "s": np.array([b"ok", b"\xff"], dtype=object),
                              "i": np.int64(3)}, 1.5, None, "saved_model")
    doc = inf.result_to_json(result)
    assert set(doc) >= {"device", "outputs", "latency_ms", "restore"}  # plus added fields
    assert doc["outputs"]["y"] == [1.0, None, None, None]
    assert doc["outputs"]["s"][0] == "ok" and doc["outputs"]["i"] == 3
    json.dumps(doc, allow_nan=False)
    diff = inf.compare_outputs({"y": np.array([1.0, 2.0]), "z": np.array([1])},
                               {"y": np.array([1.5, 1.0]), "z": np.array([1, 2])})
    assert diff["y"] == {"max_abs_diff": 1.0, "mean_abs_diff": 0.75}
    assert diff["z"] == {"max_abs_diff": None, "mean_abs_diff": None}


# --------------------------------------------------------------------------------------------
# Builder + checkpoint

HELPER = textwrap.dedent('''
    """Builders for tests: models that do and do not fit the demo run."""
    import keras
    from tpuckpt_viz import demo


    def unrelated():
        class Tiny(keras.Model):
            def __init__(self):
                super().__init__()
                self.proj = keras.layers.Dense(2)

            def call(self, x):
                return self.proj(x)

        model = Tiny()
        model(keras.ops.zeros((1, 4)))
        return model


    def bigger():
        base = demo.build_model()
        out = keras.layers.Dense(2, name="extra")(base.output)
        return keras.Model(base.input, out, name="demo_classifier")


    def wider():
        inputs = keras.Input(shape=(demo.SEQ_LEN,), dtype="int32", name="tokens")
        x = keras.layers.Embedding(demo.VOCAB, 48, name="embedding")(inputs)
        x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
        outputs = keras.layers.Dense(demo.N_CLASSES, activation="softmax", name="classifier")(x)
        return keras.Model(inputs, outputs)


    NOT_A_FUNCTION = 3
''')


@pytest.fixture
def helper_module(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "builders"
    folder.mkdir(exist_ok=True)
    (folder / "infer_test_builders.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(folder))
    return "infer_test_builders"


def test_restore_two_steps_of_the_demo_run(demo_run):
    features = demo.demo_input(4)
    first = inf.run_inference(str(demo_run / "ckpt-0"), inputs={"tokens": features},
                              device="cpu")
    last = inf.run_inference(str(demo_run / "ckpt-300"), inputs={"tokens": features},
                             device="cpu")
    assert first.source == last.source == "checkpoint"
    assert first.outputs["classifier"].shape == (4, demo.N_CLASSES)
    assert np.allclose(last.outputs["classifier"].sum(axis=1), 1, atol=1e-5)
    diff = inf.compare_outputs(first, last)["classifier"]
    assert diff["max_abs_diff"] > 0.05
    report = last.restore
    n_vars = len(demo.build_model().variables)
    assert report["status"] == "ok" and report["matched"] == n_vars == 43
    assert report["unmatched_model"] == []
    unused = report["unused_checkpoint"]
    assert any(k.startswith("optimizer/_variables/") for k in unused)  # Adam slots
    assert "step/.ATTRIBUTES/VARIABLE_VALUE" in unused
    # kernels are saved under optimizer/_trainable_variables/* yet belong to the model
    assert not any(k.startswith("optimizer/_trainable_variables/") for k in unused)
    doc = inf.result_to_json(last)
    assert doc["restore"]["status"] == "ok" and doc["device"] == "/device:CPU:0"
    json.dumps(doc, allow_nan=False)


def test_folder_means_latest_and_inputs_are_generated(demo_run):
    result = inf.run_inference(str(demo_run), device="cpu", batch=5)
    assert result.path.endswith("ckpt-300")
    assert result.inputs["tokens"].shape == (5, demo.SEQ_LEN)
    assert result.outputs["classifier"].shape == (5, demo.N_CLASSES)
    assert result.latency_ms > 0 and result.runs == inf.DEFAULT_REPEATS + 1


def test_wrong_builder_matches_nothing(demo_run, helper_module):
    with pytest.raises(UserError, match=r"matched none of the model's 2 variables: is --model "
                                        r"the builder that wrote it\?"):
        inf.run_inference(str(demo_run), model=f"{helper_module}:unrelated", device="cpu")


def test_partial_and_misfit_builders(demo_run, helper_module):
    result = inf.run_inference(str(demo_run), model=f"{helper_module}:bigger", device="cpu")
    assert result.restore["status"] == "partial"
    assert result.restore["matched"] == 43
    assert sorted(result.restore["unmatched_model"]) == ["extra/bias", "extra/kernel"]
    with pytest.raises(UserError, match=r"does not fit the model: embedding/embeddings is "
                                        r"\[32, 32\] in the checkpoint and \[32, 48\] in the "
                                        r"model"):
        inf.run_inference(str(demo_run), model=f"{helper_module}:wider", device="cpu")


def test_name_based_checkpoint_matches_nothing(tf1_saver_ckpt):
    with pytest.raises(UserError, match="matched none of the model's 43 variables"):
        inf.run_inference(tf1_saver_ckpt, device="cpu")


def test_keras_file_builder(demo_run, tmp_path):
    path = tmp_path / "demo.keras"
    demo.build_model().save(path)
    result = inf.run_inference(str(demo_run), model=str(path), device="cpu")
    assert result.restore["status"] == "ok"


def test_load_builder_errors(helper_module, monkeypatch):
    monkeypatch.delenv("TPUCKPT_MODEL", raising=False)
    assert inf.load_builder(None) is demo.build_model
    monkeypatch.setenv("TPUCKPT_MODEL", f"{helper_module}:bigger")
    assert inf.load_builder("").__name__ == "bigger"
    with pytest.raises(UserError, match="expected package.module:function or a .keras file"):
        inf.load_builder("no_colon_here")
    with pytest.raises(UserError, match="cannot import 'no_such_module_xyz'"):
        inf.load_builder("no_such_module_xyz:build")
    with pytest.raises(UserError, match="has no attribute 'nope'"):
        inf.load_builder(f"{helper_module}:nope")
    with pytest.raises(UserError, match="is not a function"):
        inf.load_builder(f"{helper_module}:NOT_A_FUNCTION")
    with pytest.raises(UserError, match="not found"):
        inf.load_builder("/nowhere/model.keras")


def test_builder_rejects_bad_input_shape(demo_run):
    with pytest.raises(UserError, match=r"the model rejected the inputs: .*tokens: int32 "
                                        r"\[-1, 16\]"):
        inf.run_inference(str(demo_run), inputs={"tokens": "[1, 2]"}, device="cpu")


def test_tpu_code_path_with_a_stand_in_strategy(demo_run, tf):
    """The TPU branch (strategy.run, io_device options) with the default strategy standing in."""
    fake_tpu = DeviceChoice("tpu", "/device:CPU:0", tf.distribute.get_strategy(), [])
    features = demo.demo_input(2)
    on_tpu = inf.restore_and_run(str(demo_run / "ckpt-300"), None, {"tokens": features},
                                 fake_tpu)
    on_cpu = inf.run_inference(str(demo_run / "ckpt-300"), inputs={"tokens": features},
                               device="cpu")
    assert np.allclose(on_tpu.outputs["classifier"], on_cpu.outputs["classifier"], atol=1e-6)


def test_saved_models_never_run_on_tpu(shared, tf):
    fake_tpu = DeviceChoice("tpu", "/device:TPU:0", tf.distribute.get_strategy(), [])
    result = inf.run_saved_model(str(shared / HALF_PLUS_TWO), inputs={"x": X}, device=fake_tpu)
    assert result.device == "/device:CPU:0"
    assert "SavedModel serving graphs run on GPU/CPU, not TPU" in result.device_reasons


def test_auto_device_and_concurrent_sessions(shared, tf):
    expected = choose_device("auto")
    results, errors = [], []

    def worker(i):
        try:
            r = inf.run_inference(str(shared / HALF_PLUS_TWO), inputs={"x": f"[[{i}]]"})
            results.append((i, float(r.outputs["y"].item()), r.device))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [(i, 0.5 * i + 2, expected.name if expected.kind != "tpu"
                                else "/device:CPU:0") for i in range(6)]
    assert not math.isnan(results[0][1])


# --------------------------------------------------------------------------------------------
# What the Infer page and the CLI's newer flags use

def test_dashboard_text_never_names_a_file(tmp_path):
    np.save(tmp_path / "a.npy", np.array([1.0]))
    with pytest.raises(UserError, match="not a JSON literal; expected float32"):
        inf.parse_input_value(str(tmp_path / "a.npy"), "float32", [-1], files=False)
    assert inf.parse_input_value("[1, 2]", "float32", files=False).tolist() == [1, 2]


def test_read_array_bytes_for_uploads(tmp_path):
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([[1.0], [2.0]]))
    assert inf.read_array_bytes(buf.getvalue(), "up.npy").tolist() == [[1], [2]]
    assert inf.read_array_bytes(b"a,b\n1,2\n", "up.csv") == [["1", "2"]]
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="cannot read up.npy"):
        inf.read_array_bytes(buf.getvalue(), "up.npy")
    with pytest.raises(UserError, match="not UTF-8"):
        inf.read_array_bytes(b"\xff\xfe1", "up.csv")
    with pytest.raises(UserError, match="not a .npy, .npz or .csv"):
        inf.read_array_bytes(b"1", "up.txt")


def test_fill_per_input():
    made = inf.make_inputs({"a": ("float32", [2]), "b": ("float32", [2])}, {"a": "ones"})
    assert made["a"].tolist() == [1, 1] and made["b"].tolist() != [0, 0]
    with pytest.raises(UserError, match="unknown fill"):
        inf.make_inputs({"a": ("float32", [2])}, {"a": "gaussian"})


def test_output_table_shapes():
    assert inferdata.output_table(np.float32(2.5)).values.tolist() == [[2.5]]
    assert inferdata.output_table(np.array([1, 2])).shape == (2, 1)
    assert inferdata.output_table(np.zeros((2, 3, 4))).shape == (2, 12)
    assert inferdata.output_table(np.array([b"ok", b"\xff"], dtype=object))["0"].tolist() == \
        ["ok", "\\xff"]


def test_resolve_source(shared, demo_run):
    folder = shared / "serving_saved_model_half_plus_two_cpu"
    source = inf.resolve_source(str(folder))
    assert source.kind == "saved_model" and source.path.endswith("00000123")
    assert inf.resolve_source(str(demo_run)).kind == "checkpoint"


def test_run_pair_uses_the_same_inputs(demo_run):
    a, b, diff = inf.run_pair(str(demo_run / "ckpt-0"), str(demo_run / "ckpt-300"),
                              device="cpu", batch=3)
    assert np.array_equal(a.inputs["tokens"], b.inputs["tokens"])
    assert diff["classifier"]["max_abs_diff"] > 0.05


def test_cli_allow_unsafe_ops_and_fill(unsafe_saved_model, tmp_path, capsys, monkeypatch):
    from tpuckpt_viz.cli import commands as cli

    monkeypatch.delenv("TPUCKPT_ALLOW_UNSAFE_OPS", raising=False)
    target = tmp_path / "data.txt"
    target.write_text("hello")
    argv = ["infer", str(unsafe_saved_model), "--signature", "read", "--device", "cpu",
            "--input", "path=" + json.dumps(str(target)), "--format", "json"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "--allow-unsafe-ops" in err and "TPUCKPT_ALLOW_UNSAFE_OPS=1" in err
    assert cli.main(argv + ["--allow-unsafe-ops"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"]["contents"] == "hello"
    assert cli.main(["infer", str(unsafe_saved_model), "--fill", "ones", "--batch", "2",
                     "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"]["y"] == [2.0, 2.0]


def test_flat_list_is_a_column_only_where_declared():
    from tpuckpt_viz.inference.inputs import parse_input_value

    assert parse_input_value("[1, 2, 5]", "float32", [-1, 1]).shape == (3, 1)
    assert parse_input_value("[1, 2, 5]", "float32", [None, 1]).shape == (3, 1)
    assert parse_input_value("[1, 2, 5]", "float32", [-1, 3]).shape == (3,)  # not a column
    assert parse_input_value("[1, 2, 5]", "float32", None).shape == (3,)
    assert parse_input_value("[[1, 2]]", "float32", [-1, 1]).shape == (1, 2)  # left to TF


def test_cli_infer_flat_list_for_a_column(shared, capsys):
    from tpuckpt_viz.cli import commands as cli

    path = shared / "serving_saved_model_half_plus_two_cpu" / "00000123"
    assert cli.main(["infer", str(path), "--input", "x=[1, 2, 5]", "--device", "cpu",
                     "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.ravel(out["outputs"]["y"]).tolist() == [2.5, 3.0, 4.5]
