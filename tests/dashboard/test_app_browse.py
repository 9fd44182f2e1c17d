"""The Browse page through Streamlit's AppTest: no exception, the table and the statistics right.

Statistics shown on the page are checked against numpy on the same tensor read by TensorFlow's
own reader (``tf.train.load_checkpoint``), not through the project's code.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from apphelpers import open_app

VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


def rerun(at):
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def frames(at, *columns):
    """DataFrames shown on the page that have all of ``columns``."""
    return [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]


def shown_stats(at) -> dict:
    """The first statistics table (the selected tensor's) as {statistic: text}."""
    df = frames(at, "statistic", "value")[0]
    return dict(zip(df["statistic"], df["value"]))


def variable_table(at):
    return frames(at, "name", "key", "kind", "dtype")[0]


def select_tensor(at, name: str):
    at.selectbox(key="tensor").set_value(name)
    return rerun(at)


def reference(prefix: str, key: str) -> np.ndarray:
    from tpuckpt_viz.tfcompat import tf

    return np.asarray(tf().train.load_checkpoint(prefix).get_tensor(key))


def assert_stats_match(stats: dict, values: np.ndarray):
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    for label, expected in (("min", finite.min()), ("max", finite.max()),
                            ("mean", finite.mean()), ("std", finite.std()),
                            ("L2 norm", np.sqrt(np.sum(finite ** 2)))):
        assert float(stats[label]) == pytest.approx(expected, rel=2e-5, abs=1e-9), label
    assert stats["NaN"] == str(int(np.isnan(x).sum()))
    assert stats["Inf"] == str(int(np.isinf(x).sum()))


def caption_prefix(at) -> str:
    """The checkpoint prefix the page opened (its caption starts with it in backticks)."""
    text = next(c.value for c in at.caption if c.value.startswith("`"))
    return text.split("`")[1]


# -- the demo, opened by default -------------------------------------------------------------

def test_demo_opens_by_default(app_env):
    at = open_app()
    m = metrics(at)
    assert set(m) >= {"Variables", "Model parameters", "Optimizer state", "Size"}
    assert int(m["Variables"].replace(",", "")) > 20
    assert m["Size"].endswith(("B", "KB", "MB"))
    prefix = caption_prefix(at)
    assert prefix == str(app_env / "ckpt-300")  # the newest step of the run
    assert at.selectbox(key="ckpt_path_step").value == prefix
    table = variable_table(at)
    assert len(table) == int(m["Variables"])
    # The tensor shown by default is a weight, and its statistics are numpy's.
    name = at.selectbox(key="tensor").value
    row = table[table["name"] == name].iloc[0]
    assert row["kind"] == "weight"
    assert_stats_match(shown_stats(at), reference(prefix, row["key"]))
    # Its histogram and (2-D) heatmap are drawn.
    assert len(at.get("plotly_chart")) >= 2


def test_weight_with_slots_and_a_slot(app_env):
    at = open_app()
    table = variable_table(at)
    prefix = caption_prefix(at)
    owners = set(table["slot_of_name"].dropna())
    weights = table[(table["kind"] == "weight") & table["name"].isin(owners)]
    default = at.selectbox(key="tensor").value
    name = weights[weights["name"] != default]["name"].iloc[-1]  # not the default one
    at = select_tensor(at, name)
    assert "Optimizer slots" in [s.value for s in at.subheader]
    slots = table[table["slot_of_name"] == name]
    assert len(slots) == 2  # Adam: momentum and velocity
    stats_tables = frames(at, "statistic", "value")
    assert len(stats_tables) == 3  # the weight and its two slots, side by side
    for df, slot_key in zip(stats_tables[1:], slots["key"]):
        assert_stats_match(dict(zip(df["statistic"], df["value"])), reference(prefix, slot_key))
    side_by_side = frames(at, "tensor", "min", "max")[0]
    assert len(side_by_side) == 3
    # A slot itself says whose slot it is; a running statistic has none.
    at = select_tensor(at, slots["name"].iloc[0])
    assert any(name in i.value and "slot" in i.value for i in at.info)
    stat = table[table["kind"] == "stat"]["name"].iloc[0]
    at = select_tensor(at, stat)
    assert "Optimizer slots" not in [s.value for s in at.subheader]


def test_other_step_of_the_run(app_env):
    at = open_app()
    at.selectbox(key="ckpt_path_step").set_value(str(app_env / "ckpt-50"))
    at = rerun(at)
    prefix = caption_prefix(at)
    assert prefix.endswith("ckpt-50")
    assert at.query_params["ckpt"] == prefix  # the URL says what is on screen
    table = variable_table(at)
    name = at.selectbox(key="tensor").value
    key = table[table["name"] == name]["key"].iloc[0]
    assert_stats_match(shown_stats(at), reference(prefix, key))


def test_filters_and_bad_pattern(app_env):
    at = open_app()
    at.multiselect(key="f_kind").set_value(["slot"])
    at = rerun(at)
    assert set(variable_table(at)["kind"]) == {"slot"}
    at.multiselect(key="f_kind").set_value([])
    at = rerun(at)
    tensor = at.selectbox(key="tensor").value
    shown = len(variable_table(at))
    at.text_input(key="f_pattern").set_value("([")
    at = rerun(at)
    assert "bad name pattern" in errors(at)
    # The error changes nothing else: the same table and the same tensor.
    assert at.selectbox(key="tensor").value == tensor
    assert len(variable_table(at)) == shown
    assert not any("nan" in i.value for i in at.info)


# -- other checkpoints through ?ckpt= --------------------------------------------------------

def test_keras3_checkpoint(app_env, keras3_adam_ckpt):
    at = open_app(ckpt=keras3_adam_ckpt)
    assert caption_prefix(at) == keras3_adam_ckpt
    table = variable_table(at)
    assert "sequential/dense/kernel" in set(table["name"])
    kernel = table[table["name"] == "sequential/dense/kernel"].iloc[0]
    assert kernel["kind"] == "weight"
    slots = table[table["slot_of_name"] == "sequential/dense/kernel"]
    assert len(slots) == 2
    at = select_tensor(at, "sequential/dense/kernel")
    assert_stats_match(shown_stats(at), reference(keras3_adam_ckpt, kernel["key"]))
    assert "Optimizer slots" in [s.value for s in at.subheader]


def test_tf1_checkpoint_with_partitioned_variable(app_env, tf1_saver_ckpt):
    at = open_app(ckpt=tf1_saver_ckpt)
    table = variable_table(at)
    assert {"dense/kernel", "embedding", "global_step", "dense/kernel/Adam"} <= set(table["name"])
    at = select_tensor(at, "embedding")
    values = reference(tf1_saver_ckpt, "embedding")
    assert values.shape == (9, 2)
    assert_stats_match(shown_stats(at), values)
    assert "Optimizer slots" in [s.value for s in at.subheader]
    # Opening the folder picks the same (only) checkpoint.
    at = open_app(ckpt=os.path.dirname(tf1_saver_ckpt))
    assert caption_prefix(at) == tf1_saver_ckpt


def test_bfloat16_and_other_dtypes(app_env, bf16_ckpt):
    prefix, values = bf16_ckpt
    at = open_app(ckpt=prefix)
    table = variable_table(at)
    assert set(table["dtype"]) >= {"bfloat16", "float16", "int32", "bool", "string"}
    for name in ("bf16", "f16", "i32"):
        at = select_tensor(at, name)
        # float32 reference of the stored values (bfloat16 rounding included)
        assert_stats_match(shown_stats(at), values[name].astype(np.float32))
    at = select_tensor(at, "flag")
    stats = shown_stats(at)
    assert float(stats["min"]) == 0 and float(stats["max"]) == 1
    assert stats["zeros"] == "33.33%"


def test_string_tensor_shows_values(app_env, bf16_ckpt):
    prefix, values = bf16_ckpt
    at = open_app(ckpt=prefix, tensor="text")
    assert at.selectbox(key="tensor").value == "text"
    shown = frames(at, "value")
    shown = [df for df in shown if "statistic" not in df.columns][0]
    assert list(shown["value"]) == [v.decode("utf-8") for v in values["text"]]
    assert any("string value" in md.value for md in at.markdown)


# -- errors: one st.error line, never an exception ------------------------------------------

def test_missing_path(app_env, tmp_path):
    at = open_app(ckpt=str(tmp_path / "nope" / "ckpt-1"))
    assert "does not exist" in errors(at)
    assert not at.metric and not at.dataframe


def test_outside_roots(app_env, tmp_path, monkeypatch, keras3_adam_ckpt):
    monkeypatch.setenv("TPUCKPT_ROOTS", str(tmp_path))
    at = open_app(ckpt=keras3_adam_ckpt)
    message = errors(at)
    assert "outside the allowed roots" in message and "--root" in message
    assert not at.metric


def test_t5x_partial_lists_then_names_the_missing_shard(app_env, shared):
    from tpuckpt_viz.checkpoint.bundle import read_index

    folder = shared / "t5x_mtf_tiny_t5_PARTIAL"
    at = open_app(ckpt=str(folder))
    assert metrics(at)["Variables"] == "105"
    assert len(variable_table(at)) == 105
    prefix = caption_prefix(at)
    index = read_index(prefix)
    in_missing = sorted(k for k, e in index.entries.items() if e.shard_id == 1)
    table = variable_table(at)
    weight = table[table["key"].isin(in_missing) & (table["kind"] == "weight")]["name"].iloc[0]
    at = select_tensor(at, weight)
    assert "model.ckpt-0.data-00001-of-00002" in errors(at)
    # The listing stays on the page.
    assert metrics(at)["Variables"] == "105"


# -- counts, the object graph, the table ------------------------------------------------------

def test_counts_as_model_summary_without_slots(app_env):
    """Model parameters as Keras's model.summary() counts them: no Adam slots in them."""
    from tpuckpt_viz.demo import build_model

    model = build_model()
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    non_trainable = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    at = open_app()
    m = metrics(at)
    assert int(m["Model parameters"].replace(",", "")) == trainable + non_trainable
    assert f"trainable {trainable:,} · non-trainable {non_trainable:,}" in [
        c.value for c in at.caption]
    # Adam keeps two slots per trainable variable: about twice the trainable count.
    assert int(m["Optimizer state"].replace(",", "")) >= 2 * trainable


def test_object_graph_is_a_tree_not_a_variable(app_env):
    at = open_app()
    table = variable_table(at)
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in set(table["key"])
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in at.selectbox(key="tensor").options
    tree = next(c.value for c in at.code if "model" in c.value)
    assert "(embedding)" in tree and "= embedding/embeddings" in tree
    assert "optimizer" in tree and "[slot [32, 32]]" in tree


def test_variable_table_columns_and_empty_cells(app_env):
    at = open_app()
    table = variable_table(at)
    assert list(table.columns[:5]) == ["name", "kind", "layer", "shape", "dtype"]
    assert table.columns[-1] == "key"
    weights = table[table["kind"] == "weight"]
    assert (weights["slot"] == "").all() and (weights["slot_of_name"] == "").all()
    assert not table.isna().any().any()


# -- one current checkpoint across the pages ---------------------------------------------------

def test_current_checkpoint_follows_across_pages(app_env):
    """An earlier step opened by link stays the current one on Compare and Infer, and back."""
    from apphelpers import BROWSE, COMPARE, INFER

    earlier = str(app_env / "ckpt-150")
    at = open_app(ckpt=earlier)
    assert caption_prefix(at) == earlier

    def switch(page):
        for key in list(at.query_params):  # page switches may drop the URL's parameters
            del at.query_params[key]
        at.switch_page(page)
        return rerun(at)

    switch(COMPARE)
    assert at.text_input(key="cmp_b").value == earlier
    assert at.text_input(key="cmp_a").value == str(app_env / "ckpt-100")  # the step before
    assert at.query_params["b"] == earlier and at.query_params["run"] == str(app_env)
    switch(INFER)
    assert at.selectbox(key="infer_step").value == earlier
    # Another step picked on Infer becomes the current one everywhere.
    at.selectbox(key="infer_step").set_value(str(app_env / "ckpt-200"))
    rerun(at)
    switch(BROWSE)
    assert caption_prefix(at) == str(app_env / "ckpt-200")
    assert at.query_params["ckpt"] == str(app_env / "ckpt-200")
