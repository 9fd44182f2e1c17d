"""The data behind the pages: tensor views (streamed heatmap block means), tables, summaries."""

from __future__ import annotations

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
