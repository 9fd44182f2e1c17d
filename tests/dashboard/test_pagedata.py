"""The data behind the pages: tensor views (streamed heatmap block means), tables, summaries."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from tpuckpt_viz.checkpoint.reader import open_checkpoint
from tpuckpt_viz.dashboard import pagedata as views


def downsample_2d(array: np.ndarray, max_side: int = 256) -> tuple[np.ndarray, int, int]:
    """The numpy reference for the streamed heatmaps: block means of a whole 2-D array
    (padded with NaN, reshaped, nanmean), and the row and column strides."""
    a = np.asarray(array, dtype=np.float32)
    rows, cols = a.shape
    sr, sc = max(1, -(-rows // max_side)), max(1, -(-cols // max_side))
    if sr == 1 and sc == 1:
        return a, 1, 1
    padded = np.pad(a, ((0, (-rows) % sr), (0, (-cols) % sc)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // sr, sr, padded.shape[1] // sc, sc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        return np.nanmean(blocks, axis=(1, 3)), sr, sc


def test_downsample_2d_block_means():
    a = np.arange(600 * 300, dtype=np.float32).reshape(600, 300)
    small, sr, sc = downsample_2d(a, max_side=256)
    assert (sr, sc) == (3, 2) and small.shape == (200, 150)
    assert small[0, 0] == pytest.approx(a[:3, :2].mean())
    same, sr, sc = downsample_2d(a[:10, :10])
    assert (sr, sc) == (1, 1) and same.shape == (10, 10)


@pytest.fixture(scope="module")
def matrix_ckpt(tmp_path_factory, tf):
    """A 2-D tensor large enough to need block means, with NaNs, and a 3-D one."""
    rng = np.random.default_rng(3)
    big = rng.normal(size=(450, 333)).astype(np.float32)
    big[5, 7] = np.nan
    cube = rng.normal(size=(4, 5, 6)).astype(np.float32)
    prefix = str(tmp_path_factory.mktemp("views") / "m")
    ckpt = tf.train.Checkpoint(big=tf.Variable(big), cube=tf.Variable(cube))
    return ckpt.write(prefix), big, cube


@pytest.mark.parametrize("chunk_mb", ["8", "0"])
def test_heatmap_block_means_match_numpy(matrix_ckpt, monkeypatch, chunk_mb):
    prefix, big, _ = matrix_ckpt
    ckpt = open_checkpoint(prefix)
    key = "big/.ATTRIBUTES/VARIABLE_VALUE"
    # "0": streamed from the shard in tiny chunks, as for a huge tensor
    view = views.tensor_view(ckpt, key, chunk_bytes=4096 if chunk_mb == "0" else None)
    expected, sr, sc = downsample_2d(big, views.MAX_HEATMAP_SIDE)
    assert view.heat_strides == (sr, sc) == (3, 2)
    np.testing.assert_allclose(view.heat, expected, rtol=1e-5, atol=1e-6)
    assert view.stats["nan"] == 1
    finite = big[np.isfinite(big)].astype(np.float64)
    # The engine sums float32 blocks into float64: agree to well within float32 resolution.
    assert view.stats["mean"] == pytest.approx(finite.mean(), abs=1e-6 * finite.std())
    assert view.finite == finite.size and view.sampled == finite.size
    assert int(view.counts.sum()) == finite.size


def test_higher_rank_folds_into_rows(matrix_ckpt):
    prefix, _, cube = matrix_ckpt
    view = views.tensor_view(open_checkpoint(prefix), "cube/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_allclose(view.heat, cube.reshape(20, 6), rtol=1e-6)


def test_table_summary_and_filters(demo_run):
    table = views.variable_table(open_checkpoint(str(demo_run)))
    summary = views.summarize(table)
    assert summary.variables == len(table)
    model_kinds = table["kind"].isin(["weight", "bias", "norm", "stat"])
    assert summary.parameters == table.loc[model_kinds, "numel"].sum()
    assert summary.non_trainable == table.loc[table["kind"] == "stat", "numel"].sum() == 64
    assert set(summary.by_kind["kind"]) >= {"weight", "bias", "norm", "stat", "slot"}
    kernel = table[table["name"] == "dense/kernel"].iloc[0]
    slots = table[table["slot_of"] == kernel["key"]]
    assert sorted(slots["slot"]) == ["momentum", "velocity"]
    assert set(slots["slot_of_name"]) == {"dense/kernel"}
    only = views.filter_table(table, kinds=["weight"], pattern="ffn_in")
    assert set(only["name"]) == {"block0_ffn_in/kernel", "block1_ffn_in/kernel"}
    assert len(views.filter_table(table, dtypes=["int64"])) == 3  # step, save_counter, iteration
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in set(table["key"])


def test_string_tensor_shows_values(demo_run):
    ckpt = open_checkpoint(str(demo_run))
    view = views.tensor_view(ckpt, "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert view.strings and view.stats["mean"] is None and view.heat is None


def test_treemap_of_a_huge_checkpoint_stays_small():
    import pandas as pd

    from tpuckpt_viz.dashboard import charts

    n = 6000
    table = pd.DataFrame({"name": [f"block_{i}/dense/kernel" for i in range(n)],
                          "layer": [f"block_{i}/dense" for i in range(n)],
                          "kind": ["weight"] * n, "numel": list(range(1, n + 1)),
                          "dtype": ["float32"] * n})
    ids = charts.parameter_treemap(table).data[0].ids
    assert len(ids) <= 310  # root, kind, the 300 largest layers, "(other layers)"
    assert "checkpoint/weight/(other layers)" in ids


def test_pair_view_one_pass_matches_numpy(matrix_ckpt, tmp_path, tf):
    prefix_a, big, _ = matrix_ckpt
    moved = np.nan_to_num(big) * 2 + 1
    prefix_b = tf.train.Checkpoint(big=tf.Variable(moved)).write(str(tmp_path / "b"))
    key = "big/.ATTRIBUTES/VARIABLE_VALUE"
    pv = views.pair_view(open_checkpoint(prefix_a), key, open_checkpoint(prefix_b), key)
    # A's sample leaves out its NaN; B has none. The delta is NaN there and left out.
    assert pv.sample_a.size == big.size - 1 and pv.sample_b.size == big.size
    expected, sr, sc = downsample_2d(moved - big, views.MAX_HEATMAP_SIDE)
    assert pv.delta_strides == (sr, sc)
    np.testing.assert_allclose(pv.delta_heat, expected, rtol=1e-5, atol=1e-6)


def test_heat_axes_say_how_a_tensor_was_laid_out():
    rows, cols, note = views.heat_axes((3, 3, 64, 128), (3, 1))
    assert rows.startswith("dims 0-2 (3×3×64 = 576") and cols == "dim 3 (128)"
    assert "flattened into rows" in note and "3×1 block" in note
    assert views.heat_axes((10, 20)) == ("dim 0 (10)", "dim 1 (20)", "")


def test_heatmap_marks_nan_cells(matrix_ckpt):
    prefix, big, _ = matrix_ckpt
    view = views.tensor_view(open_checkpoint(prefix), "big/.ATTRIBUTES/VARIABLE_VALUE")
    assert view.heat_bad is not None and int(view.heat_bad.sum()) == 1


def test_short_names_keep_long_names_apart():
    from tpuckpt_viz.dashboard import charts

    names = [f"transformer/body/encoder/layer_{i}/self_attention/multihead_attention/q/kernel"
             for i in range(12)]
    short = charts.short_names(names, 40)
    assert len(set(short.values())) == 12
    assert all(len(v) <= 40 and v.startswith("…/") for v in short.values())


def test_object_tree_of_a_tf2_checkpoint(demo_run):
    ckpt = open_checkpoint(str(demo_run))
    table = views.variable_table(ckpt)
    tree = views.object_tree(ckpt, table)
    variables = tree[tree["kind"] != ""]
    assert set(variables["name"]) == set(table["name"])  # every variable once
    kernel = variables[variables["name"] == "dense/kernel"].iloc[0]
    assert kernel["path"].startswith("model/")  # under its layer, not the optimizer's list


# -- Browse: what the page shows, from the variable table ------------------------------------

@pytest.fixture(scope="module")
def demo_table(demo_run):
    return views.variable_table(open_checkpoint(str(demo_run)))


def test_a_bad_pattern_is_explained_not_raised(demo_table):
    shown, message = views.filter_or_explain(demo_table, kinds=["weight"], pattern="([")
    assert message.startswith("bad name pattern") and "fix the regular expression" in message
    assert len(shown) == len(views.filter_table(demo_table, kinds=["weight"]))  # other filters
    shown, message = views.filter_or_explain(demo_table, pattern="dense/kernel")
    assert message is None and set(shown["name"]) >= {"dense/kernel"}


def test_model_variables_come_first(demo_table):
    from tpuckpt_viz.checkpoint.records import KINDS

    ordered = views.model_first(demo_table)
    ranks = [KINDS.index(k) for k in ordered["kind"]]
    assert ranks == sorted(ranks) and ordered.iloc[0]["kind"] == "weight"
    weights = ordered[ordered["kind"] == "weight"]["name"].tolist()
    assert weights == sorted(weights)  # by name within a kind
    assert len(ordered) == len(demo_table)


def test_selection_key_changes_with_the_filters():
    base = views.selection_key([], [], [], "", 10)
    assert views.selection_key(["weight"], [], [], "", 10) != base
    assert views.selection_key([], [], [], "dense", 10) != base
    # A pattern that matches nothing keeps the key: nothing can be selected in an empty table.
    assert views.selection_key([], [], [], "nothing", 0) == views.selection_key([], [], [], "", 0)


def test_default_tensor(demo_table):
    names = demo_table["name"].tolist()
    assert views.default_tensor(demo_table, names, "dense/bias") == "dense/bias"  # a link
    first_weight = demo_table[demo_table["kind"] == "weight"]["name"].iloc[0]
    assert views.default_tensor(demo_table, names, "no/such/tensor") == first_weight
    biases = demo_table[demo_table["kind"] == "bias"]["name"].tolist()
    assert views.default_tensor(demo_table, biases) == biases[0]  # no weight among them


def test_slot_owner(demo_table):
    kernel = demo_table[demo_table["name"] == "dense/kernel"].iloc[0]
    slot = demo_table[demo_table["slot_of"] == kernel["key"]].iloc[0]
    assert views.slot_owner(demo_table, slot) == "dense/kernel"
    assert views.slot_owner(demo_table, kernel) is None


def test_human_bytes():
    assert views.human_bytes(512) == "512 B"
    assert views.human_bytes(1536) == "1.5 KB"
    assert views.human_bytes(3 * 1024 ** 3) == "3.0 GB"
    assert views.human_bytes(2 * 1024 ** 5) == "2048.0 TB"


def test_stats_table_and_titles(matrix_ckpt, demo_run):
    prefix, big, _ = matrix_ckpt
    view = views.tensor_view(open_checkpoint(prefix), "big/.ATTRIBUTES/VARIABLE_VALUE")
    table = dict(zip(*views.stats_table(view.stats).to_dict("list").values()))
    finite = big[np.isfinite(big)].astype(np.float64)
    assert float(table["min"]) == pytest.approx(finite.min(), rel=1e-5)
    assert table["NaN"] == "1" and table["Inf"] == "0" and table["zeros"] == "0.00%"
    assert views.histogram_title(view) == f"histogram (all {finite.size:,} finite values)"
    title, axes, diverging = views.heatmap_title(view)
    assert "3×2 block" in title and axes == ("dim 0 (450)", "dim 1 (333)") and diverging
    strings = views.tensor_view(open_checkpoint(str(demo_run)), "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert set(views.stats_table(strings.stats)["value"]) == {"—", "0"}


def test_histogram_title_says_when_it_is_a_sample():
    view = views.TensorView("k", "float32", (10,), {}, np.zeros(1), np.zeros(2), sampled=5,
                            finite=10, heat=None, heat_strides=(1, 1))
    assert views.histogram_title(view, "m") == "m: histogram (sampled 5 of 10 finite values)"


# -- Compare: the pair, the diff as shown, a run at a glance ---------------------------------

def test_step_before_and_initial_pair():
    from tpuckpt_viz.dashboard import comparedata as data

    run = ["r/ckpt-1", "r/ckpt-2", "r/ckpt-3"]
    assert data.step_before(run, "r/ckpt-3") == "r/ckpt-2"
    assert data.step_before(run, "r/ckpt-1") == "r/ckpt-2"  # the first: the one after it
    assert data.step_before(["r/ckpt-1"], "r/ckpt-1") == ""
    assert data.step_before(run, "elsewhere") == ""
    assert data.initial_pair("r", "r/ckpt-3", run) == {"for": "r", "a": "r/ckpt-2",
                                                       "b": "r/ckpt-3"}
    assert data.initial_pair("r", "r/ckpt-3", run, "x", "y") == {"for": "r", "a": "x", "b": "y"}
    assert data.initial_pair("r", "r/ckpt-3", run, "x", None)["a"] == "r/ckpt-2"  # half a link


def test_linked_checkpoint():
    from tpuckpt_viz.dashboard import comparedata as data

    assert data.linked_checkpoint("c", "b", "r") == "c"
    assert data.linked_checkpoint(None, " b ", "r") == "b"
    assert data.linked_checkpoint("", None, "r") == "r"  # the run alone: its newest
    assert data.linked_checkpoint(None, None, "  ") is None


@pytest.fixture(scope="module")
def demo_steps(demo_run):
    from tpuckpt_viz.checkpoint.paths import run_checkpoints
    from tpuckpt_viz.engine.diff import run_order

    return run_order(run_checkpoints(str(demo_run)))


def test_step_labels(demo_steps):
    from tpuckpt_viz.dashboard import comparedata as data

    last = demo_steps[-1]
    assert data.step_label(last) == f"step {last['step']} · ckpt-{last['step']}"
    assert data.describe(demo_steps, last["checkpoint"]) == data.step_label(last)
    assert data.describe(demo_steps, "/else/where") == "`/else/where`"


@pytest.fixture(scope="module")
def demo_diff(demo_steps):
    import pandas as pd

    from tpuckpt_viz.engine.diff import diff_checkpoints

    a, b = (open_checkpoint(d["checkpoint"]) for d in demo_steps[-2:])
    return pd.DataFrame(diff_checkpoints(a, b))


def test_diff_as_shown_leaves_out_state_unless_asked(demo_diff):
    from tpuckpt_viz.checkpoint.objectgraph import OBJECT_GRAPH_KEY
    from tpuckpt_viz.dashboard import comparedata as data

    view = data.filter_diff(demo_diff)
    assert OBJECT_GRAPH_KEY in set(demo_diff["key_a"])  # the records keep it; the page not
    assert view.total == len(demo_diff) - 1
    assert not set(view.shown["kind"]) & set(data.HIDDEN_KINDS)
    left_out = view.total - len(view.shown)
    assert left_out > 0 and view.caption == (
        f"{len(view.shown):,} of {view.total:,} variables: {left_out:,} optimizer slots and "
        "state, counters, metrics and other entries left out (tick the box to include them)")
    assert list(view.counts) == list(data.STATUSES)
    assert sum(view.counts.values()) == len(view.shown)
    assert view.counts["changed"] == int((view.shown["status"] == "changed").sum()) > 0
    assert view.shown.index.is_monotonic_increasing  # the records' order, for the charts
    changes = view.table["rel_change"].dropna().tolist()
    assert changes == sorted(changes, reverse=True)  # the table: most changed first
    assert list(view.table.columns) == data.DIFF_COLUMNS

    everything = data.filter_diff(demo_diff, show_all=True)
    assert len(everything.shown) == everything.total and "slot" in set(everything.shown["kind"])
    assert everything.caption == f"{everything.total:,} of {everything.total:,} variables"
    slots = data.filter_diff(demo_diff, kinds=["slot"])  # a kind asked for shows, hidden or not
    assert set(slots.shown["kind"]) == {"slot"} and "left out" not in slots.caption
    layer = view.shown["layer"].dropna().iloc[0]
    assert set(data.filter_diff(demo_diff, layers=[layer]).shown["layer"]) == {layer}


def test_first_variable_to_compare_is_the_most_changed_weight(demo_diff):
    from tpuckpt_viz.dashboard import comparedata as data

    shown = data.filter_diff(demo_diff, show_all=True).shown
    names, first = data.comparable(shown)
    rows = shown.set_index("name").loc[names]
    assert set(rows["status"]) <= {"changed", "same"} and "string" not in set(rows["dtype_a"])
    weights = rows[rows["kind"] == "weight"]
    assert names[first] == weights["rel_change"].idxmax()
    assert data.comparable(shown[shown["kind"] == "bias"])[1] == 0  # no weight: the first
    assert data.comparable(shown.iloc[0:0]) == ([], 0)


def test_run_summary(demo_run, tf, tmp_path):
    import pandas as pd

    from tpuckpt_viz.dashboard import comparedata as data
    from tpuckpt_viz.engine.diff import run_steps

    steps = pd.DataFrame(run_steps(str(demo_run), kinds=["weight"]))
    summary = data.run_summary(steps, "RUN")
    saves = steps["save"].nunique()
    assert summary.bad_label is None
    assert summary.text.startswith(f"Run `RUN`: {saves} checkpoints at steps 0, ")
    assert f"No NaN or Inf in {saves} checkpoints ({steps['name'].nunique()} variables)" \
        in summary.text

    kernel = tf.Variable(np.ones((2, 3), np.float32), name="dense/kernel")
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(kernel=kernel, global_step=step),
                                         str(tmp_path), max_to_keep=None)
    for s in (10, 20, 30):
        step.assign(s)
        if s == 20:
            kernel.assign(tf.constant([[1.0, float("nan"), 1.0], [1.0, 1.0, np.inf]]))
        manager.save(checkpoint_number=s)
    summary = data.run_summary(pd.DataFrame(run_steps(str(tmp_path))), "R")
    assert summary.bad_label == "step 20"
    assert summary.text == ("Run `R`: 3 checkpoints at steps 10, 20, 30. First NaN/Inf at "
                            "step 20: `dense/kernel` (1 NaN, 1 Inf). See the Whole run tab.")


# -- Infer: what to run, the widgets' choices, inputs from text and files, chart data --------

HALF_PLUS_TWO = "serving_saved_model_half_plus_two_cpu/00000123"


def test_infer_target_is_checked_and_resolved(app_env, shared):
    from tpuckpt_viz.dashboard import inferdata as data
    from tpuckpt_viz.errors import UserError

    saved_model = os.path.realpath(shared / HALF_PLUS_TWO)  # resolved, links and all
    assert data.infer_target(saved_model) == ("saved_model", saved_model)
    # A TensorFlow Serving folder of numbered versions: its highest version.
    assert data.infer_target(str(shared / "serving_saved_model_half_plus_two_cpu")) == (
        "saved_model", saved_model)
    kind, prefix = data.infer_target(str(app_env))  # a run: its latest checkpoint
    assert kind == "checkpoint" and prefix == os.path.realpath(app_env / "ckpt-300")
    with pytest.raises(UserError, match="outside the allowed roots"):
        data.infer_target("/etc")


def test_signature_choices(shared):
    from tpuckpt_viz.dashboard import inferdata as data
    from tpuckpt_viz.errors import UserError
    from tpuckpt_viz.inference import api as inf

    meta_graphs = inf.describe_saved_model(str(shared / HALF_PLUS_TWO))
    tag_names, index, default = data.signature_defaults(meta_graphs)
    assert tag_names == ["serve"] and index == 0 and default == "serving_default"
    names, at = data.signature_names(meta_graphs[0], default)
    assert names[at] == "serving_default" and "classify_x_to_y" in names
    assert data.signature_names(meta_graphs[0], "gone")[1] == 0
    empty = type(meta_graphs[0])(tags=("train",), signatures=[])
    with pytest.raises(UserError, match="tag set train has no signature to run"):
        data.signature_names(empty, None)


@pytest.fixture(scope="module")
def half_plus_two_specs(shared):
    from tpuckpt_viz.inference import api as inf

    mg = inf.describe_saved_model(str(shared / HALF_PLUS_TWO))[0]
    return {s.name: s.inputs[0] for s in mg.signatures}


def test_input_modes_and_json_example(half_plus_two_specs):
    from tpuckpt_viz.dashboard import inferdata as data

    x, examples = half_plus_two_specs["serving_default"], half_plus_two_specs["classify_x_to_y"]
    assert data.input_modes(x, {}) == ["random normal", "zeros", "ones", data.JSON, data.UPLOAD]
    assert data.input_modes(examples, {"x": "float32"})[0] == data.GENERATED_EXAMPLES
    assert data.input_modes(examples, {}) == [data.EMPTY_STRINGS, data.JSON, data.UPLOAD]
    assert data.json_example(examples, {"x": "float32", "y": "float32"}) == \
        '{"x": [1], "y": [1]}'
    assert json.loads(data.json_example(x, {})) == [[1.0], [1.0]]  # [-1, 1]: two examples
    assert data.fills({"a": "zeros", "b": data.JSON, "c": "random normal"}) == {
        "a": "zeros", "b": "random", "c": "random"}


def test_input_values_from_text_files_and_forms(half_plus_two_specs):
    import io

    from tpuckpt_viz.dashboard import inferdata as data
    from tpuckpt_viz.errors import UserError

    x = half_plus_two_specs["serving_default"]
    assert data.input_value(x, ("json", "[[1], [2]]"), {}, 64).tolist() == [[1], [2]]
    with pytest.raises(UserError, match="not a JSON literal"):
        data.input_value(x, ("json", "[[1], oops]"), {}, 64)
    with pytest.raises(UserError, match="upload a .npy, .npz or .csv file"):
        data.input_value(x, ("file", None), {}, 64)
    buffer = io.BytesIO()
    np.save(buffer, np.array([[3.0], [4.0]], np.float32))
    upload = ("up.npy", buffer.getvalue())
    assert data.input_value(x, ("file", upload), {}, 64).tolist() == [[3], [4]]
    big = ("big.npy", b"\0" * ((1 << 20) + 1))
    with pytest.raises(UserError, match=r"big.npy is larger than 1 MB \(TPUCKPT_UPLOAD_MB\)"):
        data.input_value(x, ("file", big), {}, 1)
    examples = half_plus_two_specs["classify_x_to_y"]
    form = {"x": ("float32", "1, 2"), "y": ("float32", "")}  # empty leaves the feature out
    value = data.input_value(examples, ("form", form), {"x": "float32", "y": "float32"}, 64)
    assert list(value) == ["x"] and np.asarray(value["x"]).tolist() == [1, 2]


def test_chart_data_of_outputs():
    from tpuckpt_viz.dashboard import inferdata as data

    column = np.arange(4, dtype=np.float32).reshape(4, 1)  # one number per example
    title, values, per_example = data.chart_data("y", column)
    assert (title, values.tolist(), per_example) == ("y", [0, 1, 2, 3], True)
    assert not data.picks_example(column)
    rows = np.arange(6).reshape(2, 3)  # two examples of three numbers
    assert data.picks_example(rows) and not data.picks_example(rows[:1])
    title, values, per_example = data.chart_data("logits", rows, 1)
    assert (title, values.tolist(), per_example) == ("logits, example 1", [3, 4, 5], False)
    assert data.chart_data("v", np.arange(3))[2] is True  # 1-D: one value per example
    assert data.chart_data("s", np.float32(2))[2] is False


def test_other_steps_offer_the_step_before(demo_steps):
    from tpuckpt_viz.dashboard import inferdata as data

    prefixes = [d["checkpoint"] for d in demo_steps]
    others, index = data.other_steps(demo_steps, prefixes[-1])
    assert prefixes[-1] not in others and others[index] == prefixes[-2]
    others, index = data.other_steps(demo_steps, prefixes[0])
    assert others[index] == prefixes[1]
    assert data.other_steps(demo_steps, "elsewhere")[0] == prefixes


def test_result_texts():
    from tpuckpt_viz.dashboard import inferdata as data

    assert data.restore_caption({"matched": 5, "unmatched_model": ["a"],
                                 "unused_checkpoint": ["m", "v"]}) == (
        "Restore: 5 variables matched, 1 model variables got no value, 2 checkpoint values "
        "unused (optimizer slots are expected there).")
    assert data.latency_help(11) == "Median of 10 runs after a warm-up"
    assert data.latency_help(1).startswith("One run")
    table = data.pair_diff_table({"y": {"max_abs_diff": 0.5, "mean_abs_diff": 0.25}})
    assert table.to_dict("records") == [{"output": "y", "max_abs_diff": 0.5,
                                         "mean_abs_diff": 0.25}]
