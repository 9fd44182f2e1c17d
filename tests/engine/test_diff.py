"""Two checkpoints side by side, and a run across its steps (tpuckpt_viz.engine.diff).

The checkpoints are written here with known changes, so every status and number has an exact
expected value; then the real Estimator run under ``../shared/checkpoints`` and the Keras 3
demo run, whose raw keys change between steps while the readable names stay.
"""

from __future__ import annotations


import numpy as np
import pytest

from tpuckpt_viz.checkpoint.reader import open_checkpoint
from tpuckpt_viz.engine.diff import (
    checkpoint_step,
    checkpoint_step_info,
    diff_checkpoints,
    file_number,
    first_nonfinite,
    run_order,
    run_steps,
)
from tpuckpt_viz.errors import UserError

V = "/.ATTRIBUTES/VARIABLE_VALUE"
DIFF_FIELDS = ["name", "key_a", "key_b", "status", "shape_a", "shape_b", "l2_a", "l2_b",
               "delta_l2", "rel_change", "cosine", "max_abs_delta"]
STEPS_FIELDS = ["step", "checkpoint", "name", "kind", "l2", "delta_l2", "update_ratio", "nan",
                "inf"]

RNG = np.random.default_rng(5)
SAME = RNG.normal(size=(4, 3)).astype(np.float32)
SCALED = RNG.normal(size=(6,)).astype(np.float32)
REMOVED = RNG.normal(size=(2, 2)).astype(np.float32)
ADDED = RNG.normal(size=(3,)).astype(np.float32)
RESHAPED = RNG.normal(size=(2, 6)).astype(np.float32)
RETYPED = np.arange(5, dtype=np.int32)


@pytest.fixture(scope="module")
def pair(tf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    a = tf.train.Checkpoint(same=tf.Variable(SAME), scaled=tf.Variable(SCALED),
                            removed=tf.Variable(REMOVED), reshaped=tf.Variable(RESHAPED),
                            retyped=tf.Variable(RETYPED), text=tf.Variable([b"a", b"b"]))
    b = tf.train.Checkpoint(same=tf.Variable(SAME), scaled=tf.Variable(2 * SCALED),
                            added=tf.Variable(ADDED), reshaped=tf.Variable(RESHAPED.reshape(3, 4)),
                            retyped=tf.Variable(RETYPED.astype(np.int64)),
                            text=tf.Variable([b"a", b"c"]))
    return (open_checkpoint(a.write(str(folder / "a"))),
            open_checkpoint(b.write(str(folder / "b"))))


@pytest.fixture(scope="module")
def by_name(pair):
    a, b = pair
    return {r["name"]: r for r in diff_checkpoints(a, b)}


def test_fields_and_one_record_per_variable(by_name):
    assert set(by_name) == {"same", "scaled", "removed", "added", "reshaped", "retyped", "text",
                            "_CHECKPOINTABLE_OBJECT_GRAPH"}
    for rec in by_name.values():
        assert list(rec)[: len(DIFF_FIELDS)] == DIFF_FIELDS


def test_untouched_is_same(by_name):
    rec = by_name["same"]
    assert rec["status"] == "same"
    assert rec["delta_l2"] == 0.0 and rec["rel_change"] == 0.0 and rec["max_abs_delta"] == 0.0
    assert rec["cosine"] == pytest.approx(1.0)
    assert rec["l2_a"] == rec["l2_b"] == pytest.approx(np.linalg.norm(SAME.astype(np.float64)))
    assert rec["key_a"] == rec["key_b"] == "same" + V


def test_scaled_by_two(by_name):
    rec = by_name["scaled"]
    norm = np.linalg.norm(SCALED.astype(np.float64))
    assert rec["status"] == "changed"
    assert rec["rel_change"] == pytest.approx(1.0, rel=1e-12)
    assert rec["cosine"] == pytest.approx(1.0, rel=1e-12)
    assert rec["delta_l2"] == pytest.approx(norm, rel=1e-12)
    assert rec["l2_b"] == pytest.approx(2 * norm, rel=1e-12)
    assert rec["max_abs_delta"] == pytest.approx(float(np.abs(SCALED).max()), rel=1e-7)
    assert rec["shape_a"] == rec["shape_b"] == [6]


def test_added_and_removed(by_name):
    added, removed = by_name["added"], by_name["removed"]
    assert added["status"] == "added" and added["key_a"] is None and added["shape_a"] is None
    assert added["key_b"] == "added" + V and added["shape_b"] == [3]
    assert added["l2_b"] == pytest.approx(np.linalg.norm(ADDED.astype(np.float64)))
    assert added["delta_l2"] is None and added["cosine"] is None
    assert removed["status"] == "removed" and removed["key_b"] is None
    assert removed["shape_a"] == [2, 2] and removed["l2_b"] is None


def test_reshaped_and_retyped(by_name):
    reshaped, retyped = by_name["reshaped"], by_name["retyped"]
    assert reshaped["status"] == "shape_changed"
    assert (reshaped["shape_a"], reshaped["shape_b"]) == ([2, 6], [3, 4])
    assert reshaped["delta_l2"] is None
    assert retyped["status"] == "dtype_changed"
    assert (retyped["dtype_a"], retyped["dtype_b"]) == ("int32", "int64")


def test_strings_compare_by_value(by_name):
    assert by_name["text"]["status"] == "changed"
    assert by_name["text"]["delta_l2"] is None


def test_filters(pair):
    a, b = pair
    names = [r["name"] for r in diff_checkpoints(a, b, match="^s")]
    assert sorted(names) == ["same", "scaled"]
    kinds = {r["kind"] for r in diff_checkpoints(a, b, kinds=["other"])}
    assert kinds == {"other"}
    with pytest.raises(UserError, match="regular expression"):
        diff_checkpoints(a, b, match="(")
    with pytest.raises(UserError):
        diff_checkpoints(a, b, by="shape")


def test_identical_checkpoint_is_all_same(pair):
    a, _ = pair
    assert {r["status"] for r in diff_checkpoints(a, a)} == {"same"}


# ------------------------------------------------------------------------ runs

NAN_STEP = 20


@pytest.fixture(scope="module")
def nan_run(tf, tmp_path_factory):
    """Three checkpoints at global steps 10, 20, 30; file numbers 3, 1, 2 disagree on order.

    ``w`` is multiplied by 1.5 each step, and has 3 NaNs at step 20 only.
    """
    folder = tmp_path_factory.mktemp("run")
    w0 = np.linspace(-1, 1, 12).astype(np.float32)
    values = {}
    for number, step in ((3, 10), (1, 20), (2, 30)):
        w = w0 * 1.5 ** (step // 10)
        if step == NAN_STEP:
            w = w.copy()
            w[[1, 5, 7]] = np.nan
        values[step] = w
        ckpt = tf.train.Checkpoint(w=tf.Variable(w),
                                   step=tf.Variable(step, dtype=tf.int64, name="global_step"))
        ckpt.write(str(folder / f"ckpt-{number}"))
    return folder, values


def test_steps_ordered_by_global_step(nan_run):
    folder, _ = nan_run
    records = run_steps(str(folder))
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and sorted(set(steps)) == [10, 20, 30]
    ckpt_of = {r["step"]: r["checkpoint"] for r in records}
    assert ckpt_of == {10: str(folder / "ckpt-3"), 20: str(folder / "ckpt-1"),
                       30: str(folder / "ckpt-2")}
    for r in records:
        assert list(r)[: len(STEPS_FIELDS)] == STEPS_FIELDS
    assert checkpoint_step(open_checkpoint(str(folder / "ckpt-1"))) == 20


def test_first_nonfinite_finds_the_nan_step(nan_run):
    folder, _ = nan_run
    records = run_steps(str(folder))
    bad = first_nonfinite(records)
    assert bad is not None
    assert (bad["step"], bad["name"], bad["nan"], bad["inf"]) == (NAN_STEP, "w", 3, 0)
    assert [r["nan"] for r in records if r["name"] == "w"] == [0, 3, 0]
    assert first_nonfinite([r for r in records if r["step"] != NAN_STEP]) is None


def test_steps_numbers(nan_run):
    folder, values = nan_run
    rows = {r["step"]: r for r in run_steps(str(folder)) if r["name"] == "w"}
    first = rows[10]
    assert first["delta_l2"] is None and first["update_ratio"] is None
    l2 = {s: float(np.linalg.norm(v[np.isfinite(v)].astype(np.float64)))
          for s, v in values.items()}
    for step in (10, 20, 30):
        assert rows[step]["l2"] == pytest.approx(l2[step], rel=1e-9)
    # step 20 -> 30: the NaNs make ||b - a|| NaN: null, never NaN
    assert rows[20]["delta_l2"] is None and rows[30]["delta_l2"] is None


def test_steps_numbers_without_nan(tf, tmp_path):
    w = np.arange(1, 7, dtype=np.float32)
    for i, scale in enumerate((1.0, 1.5, 3.0)):
        tf.train.Checkpoint(w=tf.Variable(w * scale)).write(str(tmp_path / f"ckpt-{i}"))
    rows = [r for r in run_steps(str(tmp_path)) if r["kind"] != "counter"]
    rows = [r for r in rows if r["name"] == "w"]
    norm = float(np.linalg.norm(w.astype(np.float64)))
    assert [r["step"] for r in rows] == [0, 1, 2]  # the number in the file name
    assert rows[0]["delta_l2"] is None and rows[0]["update_ratio"] is None
    assert rows[1]["delta_l2"] == pytest.approx(0.5 * norm, rel=1e-9)
    assert rows[1]["update_ratio"] == pytest.approx(0.5, rel=1e-9)
    assert rows[2]["delta_l2"] == pytest.approx(1.5 * norm, rel=1e-9)
    assert rows[2]["update_ratio"] == pytest.approx(1.0, rel=1e-9)


def test_real_estimator_run(shared):
    folder = shared / "tfx_chicago_taxi_estimator"
    records = run_steps(str(folder))
    steps = [r["step"] for r in records]
    assert sorted(set(steps)) == [0, 999, 1000] and steps == sorted(steps)
    per_step = {s: [r for r in records if r["step"] == s] for s in (0, 999, 1000)}
    for step, rows in per_step.items():
        assert len(rows) == 60  # no string tensors in a name-based checkpoint
        assert rows[0]["checkpoint"] == str(folder / f"model.ckpt-{step}")
        assert len({r["name"] for r in rows}) == 60
    assert all(r["delta_l2"] is None and r["update_ratio"] is None for r in per_step[0])
    gs = {r["step"]: r for r in records if r["name"] == "global_step"}
    assert gs[999]["l2"] == pytest.approx(999.0) and gs[1000]["delta_l2"] == pytest.approx(1.0)
    kernel = {r["step"]: r for r in records if r["name"] == "dnn/hiddenlayer_0/kernel"}
    assert kernel[1000]["delta_l2"] > 0 and kernel[1000]["update_ratio"] == pytest.approx(
        kernel[1000]["delta_l2"] / kernel[999]["l2"])
    assert first_nonfinite(records) is None


def test_run_filters(shared):
    folder = shared / "tfx_chicago_taxi_estimator"
    records = run_steps(str(folder), match="hiddenlayer_0", kinds=["weight", "bias"])
    assert {r["name"] for r in records} == {"dnn/hiddenlayer_0/kernel", "dnn/hiddenlayer_0/bias"}
    assert len(records) == 6


# ------------------------------------------------------------------------ Keras 3

def test_keras3_demo_pairs_by_name(demo_run):
    a = open_checkpoint(str(demo_run / "ckpt-0"))
    b = open_checkpoint(str(demo_run / "ckpt-300"))
    rows = {r["name"]: r for r in diff_checkpoints(a, b)}
    kernel = rows["dense/kernel"]
    assert kernel["key_a"] != kernel["key_b"]
    assert kernel["key_a"].startswith("model/") and kernel["key_b"].startswith("optimizer/")
    assert kernel["status"] == "changed" and kernel["delta_l2"] > 0
    assert kernel["shape_a"] == kernel["shape_b"] == [32, 32]
    moving = rows["batch_norm/moving_mean"]
    assert moving["status"] == "changed" and moving["key_a"] == moving["key_b"]
    # the Adam slots exist only once the optimizer has been built
    assert rows["adam/dense_kernel_momentum"]["status"] == "added"
    assert rows["step"]["status"] == "changed"  # the object path: a bare full_name says less


def test_keras3_demo_by_key_lists_added_and_removed(demo_run):
    a = open_checkpoint(str(demo_run / "ckpt-0"))
    b = open_checkpoint(str(demo_run / "ckpt-300"))
    rows = diff_checkpoints(a, b, by="key")
    by_key = {(r["key_a"], r["key_b"]): r for r in rows}
    kernels = [r for r in rows if r["name"] == "dense/kernel"]
    assert sorted(r["status"] for r in kernels) == ["added", "removed"]
    assert all(r["key_a"] is None or r["key_b"] is None for r in kernels)
    assert len(by_key) == len(rows)


def test_keras3_demo_steps(demo_run):
    records = run_steps(str(demo_run), match="^dense/kernel$")
    assert [r["step"] for r in records] == [0, 50, 100, 150, 200, 250, 300]
    assert [r["label"] for r in records][:2] == ["step 0", "step 50"]
    assert records[0]["delta_l2"] is None
    # raw keys change from ckpt-0 to ckpt-50, names do not: the delta is still computed
    assert all(r["delta_l2"] is not None and r["delta_l2"] > 0 for r in records[1:])


def test_demo_diverging_run_first_nan_at_its_step(demo_run):
    from tpuckpt_viz import demo

    records = run_steps(str(demo_run / demo.DIVERGING), kinds=["weight"])
    bad = first_nonfinite(records)
    assert bad is not None and bad["step"] == demo.NAN_STEP
    assert sorted({r["step"] for r in records}) == [0, 50, 100, 150, 200]


# ------------------------------------------------------------------------ true steps

def _manager_run(tf, folder, numbers, nan_at=None, step_var=False):
    """A CheckpointManager run of one variable, saved with ``checkpoint_number=n`` for each
    of ``numbers`` (None: without it); NaN written into ``w`` from save ``nan_at`` on."""
    w = tf.Variable(np.ones(6, np.float32))
    kwargs = {"w": w}
    if step_var:
        kwargs["step"] = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(**kwargs)
    manager = tf.train.CheckpointManager(ckpt, str(folder), max_to_keep=None)
    for i, number in enumerate(numbers):
        if step_var:
            kwargs["step"].assign(1000 + i)
        if nan_at is not None and i >= nan_at:
            w.assign(np.full(6, np.nan, np.float32))
        manager.save(checkpoint_number=number) if number is not None else manager.save()


def test_checkpoint_number_is_the_step(tf, tmp_path):
    """save_counter counts 1..4; the files (and so the steps) are 0/100/200/300."""
    _manager_run(tf, tmp_path, [0, 100, 200, 300], nan_at=2)
    records = run_steps(str(tmp_path))
    assert sorted({r["step"] for r in records}) == [0, 100, 200, 300]
    assert first_nonfinite(records)["step"] == 200
    order = run_order([str(tmp_path / f"ckpt-{n}") for n in (300, 0, 200, 100)])
    assert [d["step"] for d in order] == [0, 100, 200, 300]
    assert {d["step_source"] for d in order} == {"file name"}


def test_without_checkpoint_number_save_counter_numbers_the_files(tf, tmp_path):
    _manager_run(tf, tmp_path, [None, None, None])
    records = run_steps(str(tmp_path))
    assert sorted({r["step"] for r in records}) == [1, 2, 3]


def test_step_variable_wins(tf, tmp_path):
    _manager_run(tf, tmp_path, [0, 100], step_var=True)
    ckpt = open_checkpoint(str(tmp_path / "ckpt-100"))
    assert checkpoint_step_info(ckpt) == (1001, "step variable")


def test_unnumbered_run_is_labelled_by_save(tf, tmp_path):
    for name in ("first", "second"):
        tf.train.Checkpoint(w=tf.Variable(np.ones(3, np.float32))).write(str(tmp_path / name))
    order = run_order([str(tmp_path / "second"), str(tmp_path / "first")])
    assert [d["label"] for d in order] == ["save 1", "save 2"]
    assert all(d["step"] is None for d in order)


@pytest.mark.parametrize("prefix, number", [
    ("run/ckpt-300", 300), ("run/model.ckpt-1000", 1000), ("run/bert_lite_tf2.ckpt", None),
    ("run/checkpoint", None), ("run/weights.05.weights.h5", 5), ("epoch_0/checkpoint", None)])
def test_file_number(prefix, number):
    assert file_number(prefix) == number


def test_ordered_map_keeps_the_order_and_raises_at_its_item():
    import time

    from tpuckpt_viz.engine.chunks import ordered_map

    def slow_first(i):
        time.sleep(0.05 if i == 0 else 0)  # the first call finishes last
        if i == 7:
            raise UserError("item 7")
        return i * i

    got = []
    with pytest.raises(UserError, match="item 7"):
        for value in ordered_map(slow_first, range(20), threads=4):
            got.append(value)
    assert got == [i * i for i in range(7)]
    assert list(ordered_map(abs, [-3, 2, -1], threads=1)) == [3, 2, 1]


def test_threads_change_no_number(demo_run, monkeypatch):
    """diff and steps read several tensors at once; each is reduced on its own, so the
    records are exactly those of one tensor at a time."""
    from tpuckpt_viz.engine import chunks, diff

    prefixes = sorted(str(p)[: -len(".index")] for p in demo_run.glob("ckpt-*.index"))
    a, b = open_checkpoint(prefixes[0]), open_checkpoint(prefixes[-1])
    many = diff_checkpoints(a, b)
    diff.forget_transitions()
    steps_many = run_steps(str(demo_run))
    monkeypatch.setattr(chunks, "LOCAL_THREADS", 1)
    diff.forget_transitions()
    one = diff_checkpoints(open_checkpoint(prefixes[0]), open_checkpoint(prefixes[-1]))
    assert [r["status"] for r in many].count("changed") > 3
    assert many == one
    assert run_steps(str(demo_run)) == steps_many
