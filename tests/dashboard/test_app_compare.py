"""The Compare page through Streamlit's AppTest: two checkpoints, and a whole run.

The test checkpoints are written here by TensorFlow with known differences, so the page's
counts and norms are checked against numbers computed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from apphelpers import COMPARE, open_app


def metrics(at) -> dict:
    return {m.label: int(m.value) for m in at.metric}


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def frame(at, *columns):
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def _write(tf, prefix: str, **values) -> str:
    """A tf.train.Checkpoint whose variables' full names are the keys ('__' -> '/')."""
    variables = {k: tf.Variable(v, name=k.replace("__", "/")) for k, v in values.items()}
    return tf.train.Checkpoint(**variables).write(prefix)


A_KERNEL = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
B_KERNEL = A_KERNEL.copy()
B_KERNEL[1, 2] += 3.0
B_KERNEL[2, 0] -= 4.0  # ||b - a|| = 5


@pytest.fixture(scope="module")
def pair(tf, tmp_path_factory):
    """Two checkpoints: one changed, one same, one added, one removed, one reshaped."""
    folder = tmp_path_factory.mktemp("pair")
    bias = np.array([0.5, -0.5, 1.0, 0.0], np.float32)
    a = _write(tf, str(folder / "a" / "ckpt"), dense__kernel=A_KERNEL, dense__bias=bias,
               old__kernel=np.ones((2, 2), np.float32),
               emb__embeddings=np.ones((5, 2), np.float32))
    b = _write(tf, str(folder / "b" / "ckpt"), dense__kernel=B_KERNEL, dense__bias=bias,
               new__kernel=np.ones((3, 3), np.float32),
               emb__embeddings=np.ones((6, 2), np.float32))
    return a, b


@pytest.fixture(scope="module")
def nan_run(tf, tmp_path_factory):
    """A run saved at steps 10, 20, 30 whose kernel holds a NaN from step 20 on."""
    folder = tmp_path_factory.mktemp("nan_run")
    kernel = tf.Variable(np.ones((2, 3), np.float32), name="dense/kernel")
    bias = tf.Variable(np.zeros(3, np.float32), name="dense/bias")
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    ckpt = tf.train.Checkpoint(kernel=kernel, bias=bias, global_step=step)
    manager = tf.train.CheckpointManager(ckpt, str(folder), max_to_keep=None)
    for s in (10, 20, 30):
        step.assign(s)
        bias.assign(bias + 0.1)
        if s == 20:
            kernel.assign(tf.constant([[1.0, float("nan"), 1.0], [1.0, 1.0, 1.0]]))
        manager.save(checkpoint_number=s)
    return folder


# -- two checkpoints -------------------------------------------------------------------------

def test_default_pair_is_the_two_newest_demo_steps(app_env):
    at = open_app(COMPARE)
    assert at.text_input(key="cmp_a").value == str(app_env / "ckpt-250")
    assert at.text_input(key="cmp_b").value == str(app_env / "ckpt-300")
    m = metrics(at)
    assert m["changed"] > 0
    assert m["added"] == m["removed"] == m["shape changed"] == m["dtype changed"] == 0
    table = frame(at, "name", "status", "delta_l2")
    assert len(table) > 0 and "changed" in set(table["status"])
    charts = at.get("plotly_chart")
    assert len(charts) >= 3  # change by layer, change vs size, overlaid histograms (+ more)


def test_known_changes(app_env, pair):
    a, b = pair
    at = open_app(COMPARE, a=a, b=b)
    m = metrics(at)
    # The object graph is not a variable: it is in no count (the CLI's diff keeps it).
    assert m == {"changed": 1, "same": 1, "added": 1, "removed": 1, "shape changed": 1,
                 "dtype changed": 0}
    # Slots and state hidden by default: everything here is a model variable or the graph.
    at.checkbox(key="cmp_slots").check()
    at.run()
    assert not at.exception
    table = frame(at, "name", "status", "delta_l2")
    status = dict(zip(table["name"], table["status"]))
    assert status["dense/kernel"] == "changed"
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in status
    assert status["dense/bias"] == "same"
    assert status["new/kernel"] == "added"
    assert status["old/kernel"] == "removed"
    assert status["emb/embeddings"] == "shape_changed"
    row = table[table["name"] == "dense/kernel"].iloc[0]
    assert row["delta_l2"] == pytest.approx(5.0, rel=1e-6)
    assert row["l2_a"] == pytest.approx(float(np.linalg.norm(A_KERNEL)), rel=1e-6)
    assert row["rel_change"] == pytest.approx(5.0 / np.linalg.norm(A_KERNEL), rel=1e-6)
    assert row["max_abs_delta"] == pytest.approx(4.0, rel=1e-6)
    cosine = float(np.sum(A_KERNEL * B_KERNEL)
                   / (np.linalg.norm(A_KERNEL) * np.linalg.norm(B_KERNEL)))
    assert row["cosine"] == pytest.approx(cosine, rel=1e-6)
    # The variable picker offers the pairs present on both sides; a 2-D one gets B - A.
    at.selectbox(key="cmp_var").set_value("dense/kernel")
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3


def test_match_by_raw_key(app_env, pair):
    a, b = pair
    at = open_app(COMPARE, a=a, b=b)
    at.checkbox(key="cmp_by_key").check()
    at.run()
    assert not at.exception
    assert metrics(at)["changed"] == 1


def test_bad_side_is_one_error(app_env, pair, tmp_path):
    a, _ = pair
    at = open_app(COMPARE, a=a, b=str(tmp_path / "missing"))
    assert "does not exist" in errors(at)
    assert "changed" not in {m.label for m in at.metric}


# -- the whole run ---------------------------------------------------------------------------

def test_whole_run_of_the_demo_without_a_click(app_env):
    at = open_app(COMPARE)
    assert f"Run `{app_env}`, the run of the current checkpoint." in [c.value for c in at.caption]
    assert [s.value for s in at.success] == [
        s.value for s in at.success if "No NaN or Inf in 7 checkpoints" in s.value]
    assert "at steps 0, 50, 100, 150, 200, 250, 300." in at.success[0].value
    assert len(at.success) == 1
    steps = frame(at, "step", "name", "l2", "update_ratio")
    assert sorted(steps["step"].unique()) == [0, 50, 100, 150, 200, 250, 300]
    first = steps[steps["step"] == 0]
    assert first["delta_l2"].isna().all()  # nothing before the first step
    assert steps[steps["step"] == 300]["delta_l2"].notna().all()
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert len(keys) >= 5  # two-checkpoint charts + L2 lines, update ratio lines, heatmap


def test_whole_run_names_the_first_nan_step(app_env, nan_run):
    at = open_app(COMPARE, run=str(nan_run))
    message = errors(at)
    assert "First NaN/Inf at step 20" in message
    assert "kernel" in message
    assert not at.success
    steps = frame(at, "step", "name", "nan")
    assert sorted(steps["step"].unique()) == [10, 20, 30]
    kernel = steps[steps["name"].str.contains("kernel")]
    assert list(kernel.sort_values("step")["nan"]) == [0, 1, 1]
    bias = steps[steps["name"].str.contains("bias")].sort_values("step")
    assert bias["delta_l2"].iloc[1] == pytest.approx(math.sqrt(3 * 0.1 ** 2), rel=1e-5)


def test_whole_run_filters(app_env):
    at = open_app(COMPARE)
    at.text_input(key="run_match").set_value("classifier")
    at.run()
    assert not at.exception
    steps = frame(at, "step", "name", "l2")
    assert steps["name"].str.contains("classifier").all()
    at.text_input(key="run_match").set_value("^nothing-matches$")
    at.run()
    assert not at.exception
    assert any("No variable matches" in i.value for i in at.info)
    at.text_input(key="run_match").set_value("([")
    at.run()
    assert not at.exception
    assert "not a valid regular expression" in errors(at)


def test_counters_stay_out_of_the_rankings(app_env):
    at = open_app(COMPARE)
    table = frame(at, "name", "status", "delta_l2")
    assert not set(table["kind"]) & {"counter", "optimizer", "slot", "other"}
    assert "save_counter" not in set(table["name"])
    m = metrics(at)
    assert sum(m.values()) == len(table)  # the counts are what the table shows
    at.checkbox(key="cmp_slots").check()
    at.run()
    assert "save_counter" in set(frame(at, "name", "status", "delta_l2")["name"])


def test_diverging_demo_run_names_its_nan_step(app_env):
    from tpuckpt_viz import demo

    at = open_app(COMPARE, run=str(app_env / demo.DIVERGING))
    assert f"First NaN/Inf at step {demo.NAN_STEP}" in errors(at)


def test_single_checkpoint_run_asks_for_a_second(app_env, keras3_adam_ckpt):
    at = open_app(COMPARE, ckpt=keras3_adam_ckpt)
    assert not at.error, errors(at)
    assert any("holds one checkpoint" in i.value for i in at.info)
    assert at.text_input(key="cmp_b").value == keras3_adam_ckpt
    assert at.text_input(key="cmp_a").value == ""
    assert not at.metric  # no comparison of a file with itself


def test_unnumbered_run_is_labelled_by_save(app_env, tf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("unnumbered")
    for name, scale in (("first", 1.0), ("second", 2.0)):
        tf.train.Checkpoint(w=tf.Variable(np.ones((2, 2), np.float32) * scale)).write(
            str(folder / name))
    at = open_app(COMPARE, run=str(folder))
    assert not at.error, errors(at)
    message = at.success[0].value
    assert "2 checkpoints without step numbers" in message and "None" not in message
    steps = frame(at, "label", "step", "name")
    assert list(steps["label"]) == ["save 1", "save 2"]


def test_long_names_of_a_real_estimator_run(app_env, shared):
    """Chicago taxi: B = the newest step, A = the step before; charts name layers readably."""
    folder = shared / "tfx_chicago_taxi_estimator"
    at = open_app(COMPARE, ckpt=str(folder))
    assert at.text_input(key="cmp_b").value.endswith("chicago_taxi_estimator/model.ckpt-1000")
    assert at.text_input(key="cmp_a").value.endswith("chicago_taxi_estimator/model.ckpt-999")
    assert "A = step 999" in " ".join(c.value for c in at.caption)
    table = frame(at, "name", "status", "delta_l2")
    assert "global_step" not in set(table["name"])
    assert len(at.get("plotly_chart")) >= 3
