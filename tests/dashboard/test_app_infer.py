"""The Infer page through Streamlit's AppTest: the demo run, half_plus_two, failures, comparison."""

from __future__ import annotations

import pytest
from apphelpers import INFER, open_app

from tpuckpt_viz.inference import api as inf

HALF_PLUS_TWO = "serving_saved_model_half_plus_two_cpu/00000123"


def open_page(**query):
    """The Infer page; a longer timeout than the other pages (a model is built and run)."""
    return open_app(INFER, timeout=180, **query)


def click(at, key: str):
    at.button(key=key).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def frame(at, *columns):
    """The first table with exactly these columns (AppTest does not expose a table's key)."""
    return next(d.value for d in at.dataframe if list(d.value.columns) == list(columns))


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def test_demo_runs_in_one_click(app_env):
    at = open_page()
    assert not at.error, errors(at)
    assert "tpuckpt_viz.demo:build_model" in " ".join(c.value for c in at.caption)
    assert at.selectbox(key="infer_step").value == str(app_env / "ckpt-300")
    click(at, "infer_run")
    assert not at.error, errors(at)
    shown = metrics(at)
    assert shown["Device"] == "/device:CPU:0"
    assert shown["Restore"] == "ok"
    table = frame(at, "0", "1", "2", "3")
    assert table.shape == (4, 4)
    assert (table.sum(axis=1).round(4) == 1).all()  # softmax rows
    assert any("TPU" in c.value for c in at.caption)  # why the TPU was skipped


def test_half_plus_two_json_input(app_env, shared):
    at = open_page(ckpt=shared / HALF_PLUS_TWO)
    assert not at.error, errors(at)
    assert at.selectbox(key="infer_tags").value == "serve"
    assert at.selectbox(key="infer_signature_serve").value == "serving_default"
    assert "not on TPU" in " ".join(c.value for c in at.caption)
    tensors = frame(at, "", "name", "dtype", "shape", "tensor", "encoding")
    assert tensors[["name", "dtype", "shape"]].values.tolist() == [
        ["x", "float32", "[-1, 1]"], ["y", "float32", "[-1, 1]"]]
    at.selectbox(key="infer_mode_serving_default_x").set_value("JSON").run()
    at.text_area(key="infer_json_serving_default_x").set_value("[[1],[2],[5]]").run()
    click(at, "infer_run")
    assert not at.error, errors(at)
    assert frame(at, "0")["0"].tolist() == [2.5, 3.0, 4.5]
    assert metrics(at)["Device"] == "/device:CPU:0"


def test_tf_example_form(app_env, shared):
    at = open_page(ckpt=shared / HALF_PLUS_TWO)
    at.selectbox(key="infer_signature_serve").set_value("regress_x_to_y").run()
    at.selectbox(key="infer_mode_regress_x_to_y_inputs").set_value("tf.Example form").run()
    at.text_input(key="infer_feature_regress_x_to_y_inputs_x").set_value("1, 2").run()
    at.text_input(key="infer_feature_regress_x_to_y_inputs_x2").set_value("").run()
    click(at, "infer_run")
    assert not at.error, errors(at)
    assert frame(at, "0")["0"].tolist() == [2.5, 3.0]


def test_model_that_cannot_run_fails_clearly(app_env, shared):
    # no saved_model.pb: said when the path is opened
    at = open_page(ckpt=shared / "serving_tf_text_regression" / "01")
    assert "no saved_model.pb" in errors(at)
    # custom ops that this TensorFlow lacks: described, and said when it is run
    at = open_page(ckpt=shared / "tfdf_saved_model_adult_rf")
    assert not at.error, errors(at)
    assert not frame(at, "tag set", "signature", "method", "inputs", "outputs").empty
    click(at, "infer_run")
    assert "tensorflow_decision_forests" in errors(at)


def test_wrong_input_shape(app_env, shared):
    at = open_page(ckpt=shared / HALF_PLUS_TWO)
    at.selectbox(key="infer_mode_serving_default_x").set_value("JSON").run()
    at.text_area(key="infer_json_serving_default_x").set_value("[[1, 2]]").run()
    click(at, "infer_run")
    assert len(at.error) == 1
    assert "float32" in errors(at) and "[-1, 1]" in errors(at)
    at.text_area(key="infer_json_serving_default_x").set_value("[[1], oops]").run()
    click(at, "infer_run")
    assert "not a JSON literal" in errors(at) and "[-1, 1]" in errors(at)


def test_flat_list_for_a_column_input(app_env, shared):
    """``[1, 2, 3]`` for an input declared [-1, 1] can only mean three examples of one value."""
    at = open_page(ckpt=shared / HALF_PLUS_TWO)
    at.selectbox(key="infer_mode_serving_default_x").set_value("JSON").run()
    at.text_area(key="infer_json_serving_default_x").set_value("[1, 2, 5]").run()
    click(at, "infer_run")
    assert not at.error, errors(at)


def test_path_outside_roots(app_env, tmp_path_factory):
    at = open_page(ckpt="/etc")
    assert "outside the allowed roots" in errors(at)
    assert not at.button


def test_two_steps_compared(app_env):
    at = open_page()
    assert at.selectbox(key="infer_other").value == str(app_env / "ckpt-250")  # the step before
    click(at, "infer_compare")
    assert not at.error, errors(at)
    diff = frame(at, "output", "max_abs_diff", "mean_abs_diff")
    assert diff["output"].tolist() == ["classifier"]
    assert diff["max_abs_diff"].iloc[0] > 0.01 and diff["mean_abs_diff"].iloc[0] > 0


@pytest.fixture(autouse=True)
def _fresh_models():
    inf.clear_caches()
    yield


def test_restore_error_stops_and_offers_the_export(app_env, shared):
    """An Estimator run restored into the demo's builder cannot work: the page says so, offers
    the run's SavedModel export, and shows no Run button."""
    folder = shared / "tfx_chicago_taxi_estimator"
    at = open_page(ckpt=str(folder))
    assert "matched none" in errors(at)
    assert not [b for b in at.button if b.label == "Run"]
    export = [b for b in at.button if b.label.startswith("Open the SavedModel")]
    assert export and "export/chicago-taxi/1646034756" in export[0].label
    export[0].click().run()
    assert not at.exception
    assert at.text_input(key="infer_path").value.endswith("1646034756")
    assert not at.error, errors(at)
    assert at.selectbox(key="infer_tags").value == "serve"


def test_large_output_is_summarised_not_tabled(app_env, shared):
    at = open_page(ckpt=shared / HALF_PLUS_TWO)
    at.number_input(key="infer_batch").set_value(500).run()
    click(at, "infer_run")
    assert not at.error, errors(at)
    summary = frame(at, "name", "dtype", "shape", "min", "max", "mean", "std", "nan", "inf",
                    "first value")
    assert summary["shape"].tolist() == ["[500, 1]"]
    assert not [d for d in at.dataframe if list(d.value.columns) == ["0"]]  # no 500-row table
    assert len(at.get("plotly_chart")) >= 1


def test_json_carries_what_the_page_shows(shared):
    result = inf.run_inference(str(shared / HALF_PLUS_TWO), inputs={"x": [[1.0], [2.0]]},
                               device="cpu")
    doc = inf.result_to_json(result)
    assert doc["outputs"]["y"] == [[2.5], [3.0]]
    assert doc["tag_set"] == ["serve"] and doc["signature"] == "serving_default"
    assert doc["inputs"] == {"x": {"shape": [2, 1], "dtype": "float32"}}
    assert isinstance(doc["device_skipped"], list)


def test_stale_state_file_resolves_as_on_browse(app_env, tmp_path_factory):
    """A run copied down from elsewhere: its state file names a folder that is gone. Browse
    opens it by base name, and so does Infer."""
    import shutil

    folder = tmp_path_factory.mktemp("copied_run")
    for f in app_env.glob("ckpt-300.*"):
        shutil.copy(f, folder / f.name)
    (folder / "checkpoint").write_text('model_checkpoint_path: "/gone/run/ckpt-300"\n'
                                       'all_model_checkpoint_paths: "/gone/run/ckpt-300"\n')
    at = open_page(ckpt=str(folder))
    assert not at.error, errors(at)
    click(at, "infer_run")
    assert not at.error, errors(at)
    assert metrics(at)["Restore"] == "ok"
