"""The statistics engine (tpuckpt_viz.engine.stats) on tensors large enough to take its fast paths.

Correctness, not speed: streamed reads give exactly the statistics of whole reads, the float32
fast path agrees with numpy in float64, bfloat16 agrees with a float32 reference of the same
values, NaN and Inf are counted exactly wherever they fall, a tensor whose mean dwarfs its
spread keeps an accurate std, memory stays bounded by the chunk size, errors in the reader
thread come out where they happened, and the steps memo is hit on a second call.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import tracemalloc
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tpuckpt_viz.checkpoint import bundle
from tpuckpt_viz.checkpoint.paths import resolve_checkpoint
from tpuckpt_viz.checkpoint.reader import Checkpoint, ReadSettings, open_checkpoint
from tpuckpt_viz.engine import diff, stats
from tpuckpt_viz.engine.stats import Accumulator, PairAccumulator, iter_stats, tensor_stats
from tpuckpt_viz.errors import UserError

N = 300_007  # several 1024-value rows, a ragged tail, above the float32 fast-path size


def _values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    normal = rng.standard_normal(N).astype(np.float32)
    planted = normal.copy()
    planted[rng.choice(N, 40, replace=False)] = np.nan
    planted[rng.choice(N, 30, replace=False)] = np.inf
    planted[rng.choice(N, 20, replace=False)] = -np.inf
    planted[rng.choice(N, 50, replace=False)] = 0.0
    return {
        "normal": normal,
        "planted": planted,
        "large_mean": (1e4 + 1e-2 * rng.standard_normal(N)).astype(np.float32),
        "gamma": (1.0 + 1e-3 * rng.standard_normal(N)).astype(np.float32),
        "uniform": rng.random((547, 549), dtype=np.float32),
        "bf16": (3.0 + rng.standard_normal(N)).astype(ml_dtypes.bfloat16),
        "bf16_planted": planted.astype(ml_dtypes.bfloat16),
        "f16": (rng.standard_normal(N) * 100).astype(np.float16),
        "f64": rng.standard_normal(N) * 1e5 - 3e6,
        "f32_huge": rng.standard_normal(N).astype(np.float32) * np.float32(1e30),
        "f32_tiny": rng.standard_normal(N).astype(np.float32) * np.float32(1e-30),
        "f64_huge": rng.standard_normal(N) * 1e250,
        "int32": rng.integers(-(2 ** 31), 2 ** 31 - 1, N, dtype=np.int32),
        "zeros": np.zeros(N, np.float32),
        "constant": np.full(N, 0.1, np.float32),
    }


@pytest.fixture(scope="module")
def made(tf, tmp_path_factory):
    values = _values()
    folder = tmp_path_factory.mktemp("engine")
    prefix = str(folder / "ckpt")
    names = sorted(values)
    tensors = [tf.constant(values[k]) for k in names]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    return prefix, values


def reference(values: np.ndarray) -> dict:
    """numpy in float64 over the finite values, population std."""
    x = np.asarray(values).astype(np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        l2 = math.sqrt(float(np.dot(finite, finite))) if finite.size else None
        return {"min": finite.min(), "max": finite.max(), "mean": finite.mean(),
                "std": finite.std(), "l2": l2, "zeros": float((x == 0).sum() / x.size),
                "nan": int(np.isnan(x).sum()), "inf": int(np.isinf(x).sum())}


def assert_close(got: dict, ref: dict, rel: float) -> None:
    assert (got["nan"], got["inf"]) == (ref["nan"], ref["inf"])
    assert got["min"] == ref["min"] and got["max"] == ref["max"]  # exact
    assert got["zeros"] == ref["zeros"]
    for field in ("mean", "std", "l2"):
        if ref[field] is None or not math.isfinite(ref[field]):
            continue
        scale = max(abs(ref["mean"]), ref["std"]) if field == "mean" else abs(ref[field])
        assert abs(got[field] - ref[field]) <= rel * scale, (field, got[field], ref[field])


NUMERIC = ["normal", "planted", "large_mean", "gamma", "uniform", "f16", "f64", "f32_huge",
           "f32_tiny", "f64_huge", "int32", "zeros", "constant"]


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("chunk_bytes", [1 << 20, 8 << 20])
def test_fast_path_agrees_with_float64_numpy(made, name, chunk_bytes):
    prefix, values = made
    got = tensor_stats(open_checkpoint(prefix), name, chunk_bytes=chunk_bytes)
    # mean within 1e-6 of max(|mean|, std): a mean near zero is ill-conditioned in any
    # float32 sum; std and l2 within 1e-6 relative.
    assert_close(got, reference(values[name]), rel=1e-6)


def test_large_mean_keeps_its_std(made):
    prefix, values = made
    got = tensor_stats(open_checkpoint(prefix), "large_mean")
    ref = reference(values["large_mean"])
    assert got["std"] == pytest.approx(ref["std"], rel=1e-6)  # 1e-2 under a mean of 1e4
    assert got["mean"] == pytest.approx(ref["mean"], rel=1e-9)
    assert got["l2"] == pytest.approx(ref["l2"], rel=1e-9)


@pytest.mark.parametrize("name", ["bf16", "bf16_planted"])
def test_bfloat16_agrees_with_float32_reference(made, name):
    prefix, values = made
    got = tensor_stats(open_checkpoint(prefix), name, chunk_bytes=64 << 10)
    same = values[name].astype(np.float32)  # exact: every bfloat16 is a float32
    assert_close(got, reference(same), rel=1e-6)
    assert got["dtype"] == "bfloat16"


def test_nan_and_inf_counted_exactly(made):
    prefix, _ = made
    ckpt = open_checkpoint(prefix)
    for name in ("planted", "bf16_planted"):
        for chunk_bytes in (100, 4096, 1 << 20):
            got = tensor_stats(ckpt, name, chunk_bytes=chunk_bytes)
            assert (got["nan"], got["inf"]) == (40, 50), (name, chunk_bytes)
            assert got["zeros"] * N == pytest.approx(50 + int((_values()["normal"] == 0).sum()))


@pytest.mark.parametrize("name", NUMERIC + ["bf16", "bf16_planted"])
def test_streamed_equals_whole_read_exactly(made, name):
    """The same chunks give the same numbers, bit for bit, whichever way they were read."""
    prefix, _ = made
    ckpt = open_checkpoint(prefix)
    chunk = 256 << 10
    whole = tensor_stats(ckpt, name, chunk_bytes=chunk, threshold_bytes=1 << 40)  # TF reader
    streamed = tensor_stats(ckpt, name, chunk_bytes=chunk, threshold_bytes=0)
    engine = tensor_stats(ckpt, name, chunk_bytes=chunk)  # the default: from the shard
    assert ckpt.streamable(name)
    assert streamed == whole
    assert engine == whole


def test_lowered_slice_threshold_streams_and_agrees(made, monkeypatch):
    """With a slice threshold of 0 every tensor is sliced from its shard by the reader itself."""
    prefix, _ = made
    ckpt = open_checkpoint(prefix)
    whole = {k: tensor_stats(ckpt, k, threshold_bytes=1 << 40, chunk_bytes=1 << 20)
             for k in ("normal", "planted", "bf16")}
    # Settings are read once, when a checkpoint opens (slice_mb 0 is below the setting's floor).
    ckpt = Checkpoint(resolve_checkpoint(prefix), settings=ReadSettings(1 << 20, 0))
    for key, want in whole.items():
        acc = Accumulator()
        chunks = list(ckpt.chunks(key))
        assert len(chunks) == math.ceil(ckpt.entries[key].nbytes / (1 << 20))
        for chunk in chunks:
            acc.add(chunk)
        got = {"key": key, "dtype": want["dtype"], "numel": want["numel"], **acc.result()}
        assert got == want


def test_iter_stats_matches_tensor_stats_and_reports_progress(made):
    prefix, _ = made
    ckpt = open_checkpoint(prefix)
    keys = sorted(ckpt.entries)
    calls = []
    got = list(iter_stats(ckpt, keys, chunk_bytes=512 << 10,
                          progress=lambda *a: calls.append(a)))
    assert [r["key"] for r in got] == keys
    for record in got:
        assert record == tensor_stats(ckpt, record["key"], chunk_bytes=512 << 10)
    total_bytes = sum(ckpt.entries[k].nbytes for k in keys)
    assert calls[-1] == (len(keys), len(keys), "done", total_bytes)
    starts = [c for c in calls[:-1] if c[2] in keys]
    assert [c[0] for c in starts] == sorted(c[0] for c in starts)
    assert all(c[1] == len(keys) and 0 <= c[3] <= total_bytes for c in calls)


def test_keep_sample_is_a_strided_sample(made):
    prefix, values = made
    got = tensor_stats(open_checkpoint(prefix), "planted", keep_sample=True)
    finite = values["planted"][np.isfinite(values["planted"])]
    assert got["sampled_of"] == finite.size
    np.testing.assert_array_equal(got["sample"], finite)  # under the sample size: all
    acc = stats.new_accumulator(finite.size, sample_size=1000)
    for part in np.array_split(values["planted"], 7):
        acc.add(part)
    step = -(-finite.size // 1000)
    strided = values["planted"][::step]  # the finite values among every step-th element
    np.testing.assert_array_equal(acc.sampled(), strided[np.isfinite(strided)])


def test_memory_bounded_by_chunk_size(tf, tmp_path):
    """A 64 MB tensor streamed in 1 MB chunks never has much more than a few chunks alive."""
    prefix = str(tmp_path / "big")
    values = np.random.default_rng(1).random(16 << 20, dtype=np.float32)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["table"], shape_and_slices=[""],
                      tensors=[tf.constant(values)])
    del values
    ckpt = open_checkpoint(prefix)
    tracemalloc.start()
    try:
        [record] = list(iter_stats(ckpt, ["table"], chunk_bytes=1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert record["numel"] == 16 << 20 and 0.49 < record["mean"] < 0.51
    assert peak < 12 << 20, peak


def test_reader_errors_come_out_in_order_and_close_files(made, tmp_path):
    prefix, _ = made
    src = Path(prefix)
    for f in src.parent.glob(src.name + ".*"):
        shutil.copy(f, tmp_path / f.name)
    copy = str(tmp_path / src.name)
    index = bundle.read_index(copy)
    entry = index.entries["normal"]
    data = Path(bundle.data_path(copy, 0, 1))
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 4 * 1000] ^= 0x10
    data.write_bytes(bytes(raw))
    ckpt = open_checkpoint(copy)
    stats._pool()  # the worker threads persist between calls; count around them
    before, fds = threading.active_count(), _open_fds()
    seen = []
    with pytest.raises(UserError, match="checksum"):
        for record in iter_stats(ckpt, ["constant", "normal", "zeros"], chunk_bytes=64 << 10):
            seen.append(record["key"])
    assert seen == ["constant"]
    assert threading.active_count() == before and _open_fds() == fds


def test_leaving_early_stops_the_workers(made):
    prefix, _ = made
    ckpt = open_checkpoint(prefix)
    stats._pool()
    before, fds = threading.active_count(), _open_fds()
    records = iter_stats(ckpt, sorted(ckpt.entries), chunk_bytes=16 << 10)
    next(records)
    records.close()  # what leaving a for loop early does to a generator
    assert threading.active_count() == before and _open_fds() == fds


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def _pair_reference(a: np.ndarray, b: np.ndarray) -> dict:
    a64, b64 = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
    d = b64 - a64
    la, lb = math.sqrt(a64 @ a64), math.sqrt(b64 @ b64)
    return {"l2_a": la, "l2_b": lb, "delta_l2": math.sqrt(d @ d),
            "rel_change": math.sqrt(d @ d) / la, "cosine": (a64 @ b64) / (la * lb),
            "max_abs_delta": float(np.abs(d).max())}


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float64])
def test_pair_accumulator_agrees_with_float64(dtype):
    rng = np.random.default_rng(9)
    a = rng.standard_normal(N).astype(dtype)
    b = (a.astype(np.float32) * 0.999 + 1e-3 * rng.standard_normal(N)).astype(dtype)
    acc = PairAccumulator()
    step = 70_000
    for i in range(0, N, step):
        acc.add(a[i:i + step], b[i:i + step])
    got, ref = acc.result(), _pair_reference(a, b)
    assert got.pop("identical") is False
    for field, want in ref.items():
        assert got[field] == pytest.approx(want, rel=1e-6), field
    assert got["max_abs_delta"] == ref["max_abs_delta"]


def test_pair_accumulator_identical_and_nan():
    x = np.random.default_rng(2).standard_normal(N).astype(np.float32)
    acc = PairAccumulator()
    acc.add(x, x.copy())
    got = acc.result()
    assert got["identical"] and got["delta_l2"] == 0.0 and got["max_abs_delta"] == 0.0
    assert got["cosine"] == pytest.approx(1.0, rel=1e-12)
    y = x.copy()
    y[5] = np.nan
    acc = PairAccumulator()
    acc.add(x, y)
    got = acc.result()
    assert not got["identical"] and got["l2_b"] is None and got["delta_l2"] is None
    assert got["max_abs_delta"] is None and got["l2_a"] is not None


def test_compare_tensors_streams_like_whole(made, monkeypatch):
    prefix, values = made
    ckpt = open_checkpoint(prefix)
    got = diff.compare_tensors(ckpt, "normal", ckpt, "gamma")
    ref = _pair_reference(values["normal"], values["gamma"])
    assert got.pop("identical") is False
    for field, want in ref.items():
        assert got[field] == pytest.approx(want, rel=1e-6), field
    monkeypatch.setenv("TPUCKPT_CHUNK_MB", "1")  # several chunks: read ahead in a thread
    ckpt = open_checkpoint(prefix)  # settings are read once, when a checkpoint is opened
    again = diff.compare_tensors(ckpt, "normal", ckpt, "gamma")
    for field, want in ref.items():
        assert again[field] == pytest.approx(want, rel=1e-6), field


def test_steps_memo_is_hit_on_a_second_call(tf, tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    w = tf.Variable(rng.standard_normal((300, 300)).astype(np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(w=w, global_step=step)
    manager = tf.train.CheckpointManager(ckpt, str(tmp_path), max_to_keep=5)
    for i in range(3):
        w.assign_add(tf.ones_like(w) * 0.01)
        step.assign(i + 1)
        manager.save()
    diff._transition_cache.clear()
    first = diff.run_steps(str(tmp_path))
    reads = []
    for name in ("pair_chunks", "reused_chunks"):
        real = getattr(diff, name)
        monkeypatch.setattr(diff, name, lambda *a, _real=real, **k: reads.append(a) or _real(*a, **k))
    second = diff.run_steps(str(tmp_path))
    assert second == first
    assert reads == []  # every transition came from the memo
    rows = [r for r in first if r["name"] == "w"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["delta_l2"] is None
    assert rows[1]["delta_l2"] == pytest.approx(0.01 * 300, rel=1e-4)
    # A new checkpoint reads only what is new: the last transition.
    w.assign_add(tf.ones_like(w) * 0.01)
    step.assign(4)
    manager.save()
    third = diff.run_steps(str(tmp_path))
    assert len(third) == len(first) + len([r for r in first if r["step"] == 3])
    assert reads and all(os.path.basename(str(a[0].prefix)).startswith("ckpt-")
                         for a in reads)


@pytest.mark.parametrize("case", ["mixed", "all_negative", "all_positive", "neg_zero",
                                  "pos_zero_only", "pos_inf", "neg_inf", "pos_nan", "neg_nan",
                                  "subnormal", "huge"])
def test_bfloat16_bit_paths_agree_with_float32(case):
    """bfloat16 blocks take min, max and zeros partly from their bits: every sign case."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(5000).astype(np.float32)
    special = {
        "all_negative": lambda: -np.abs(x) - 0.5,
        "all_positive": lambda: np.abs(x) + 0.5,
        "neg_zero": lambda: np.where(np.arange(x.size) % 7 == 0, np.float32(-0.0), x),
        "pos_zero_only": lambda: np.where(np.arange(x.size) % 5 == 0, np.float32(0.0), np.abs(x)),
        "pos_inf": lambda: np.where(np.arange(x.size) == 17, np.float32(np.inf), x),
        "neg_inf": lambda: np.where(np.arange(x.size) == 17, np.float32(-np.inf), x),
        "pos_nan": lambda: np.where(np.arange(x.size) == 3, np.float32(np.nan), x),
        "neg_nan": lambda: np.where(np.arange(x.size) == 3, -np.float32(np.nan), x),
        "subnormal": lambda: x * np.float32(1e-39),
        "huge": lambda: x * np.float32(1e37),
    }
    values = special.get(case, lambda: x)().astype(np.float32)
    bf = values.astype(ml_dtypes.bfloat16)
    if case == "neg_nan":
        assert np.signbit(bf.astype(np.float32)[3])
    acc = Accumulator()
    acc.add(bf)
    got = acc.result()
    ref = reference(bf.astype(np.float32))
    assert (got["nan"], got["inf"], got["zeros"]) == (ref["nan"], ref["inf"], ref["zeros"])
    assert (got["min"], got["max"]) == (ref["min"], ref["max"])
    for field in ("mean", "std", "l2"):
        assert got[field] == pytest.approx(ref[field], rel=1e-9), field
