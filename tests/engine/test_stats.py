"""Tensor statistics (tpuckpt_viz.engine.stats) against numpy, on checkpoints written here.

Reference: numpy in float64 over the finite values, population std (ddof=0); NaN and Inf are
counted exactly; ``zeros`` is the fraction of all elements. The streamed path (straight from
the data shard, a few bytes at a time) must give the same numbers as a whole read.
"""

from __future__ import annotations

import math
import warnings

import ml_dtypes
import numpy as np
import pytest

from tpuckpt_viz.checkpoint.reader import open_checkpoint
from tpuckpt_viz.engine.stats import Accumulator, histogram, tensor_stats

V = "/.ATTRIBUTES/VARIABLE_VALUE"
STAT_FIELDS = ["key", "dtype", "numel", "min", "max", "mean", "std", "l2", "zeros", "nan", "inf"]


def _planted(rng, shape, nan=0, pinf=0, ninf=0, zeros=0, loc=0.0, dtype=np.float32):
    x = rng.normal(loc, 1.0, size=int(np.prod(shape))).astype(np.float64)
    idx = rng.permutation(x.size)
    cut = np.cumsum([nan, pinf, ninf, zeros])
    x[idx[:cut[0]]] = np.nan
    x[idx[cut[0]:cut[1]]] = np.inf
    x[idx[cut[1]:cut[2]]] = -np.inf
    x[idx[cut[2]:cut[3]]] = 0.0
    return x.astype(dtype).reshape(shape)


def _values():
    rng = np.random.default_rng(42)
    return {
        "clean": _planted(rng, (37, 29), zeros=11, loc=3.0),
        "planted": _planted(rng, (1000,), nan=7, pinf=3, ninf=2, zeros=5),
        "f64": _planted(rng, (4, 5, 6), nan=1, loc=-1e3, dtype=np.float64),
        "f16": _planted(rng, (257,), nan=2, pinf=1, dtype=np.float16),
        "all_nan": np.full((3, 4), np.nan, np.float32),
        "only_inf": np.array([np.inf, -np.inf, np.nan], np.float32),
        "one": np.array([2.5], np.float32),
        "scalar": np.float32(-4.0),
        "int": rng.integers(-1000, 1000, size=(50, 3)).astype(np.int64),
        "int8": np.array([-128, 0, 127, 5], np.int8),
        "uint8": np.array([0, 255, 3], np.uint8),
        "bool": np.array([True, False, True, True, False, False, False]),
        "empty": np.zeros((0, 4), np.float32),
    }


@pytest.fixture(scope="module")
def made(tf, tmp_path_factory):
    """A checkpoint of the tensors above plus a bfloat16 copy of ``planted`` and a string."""
    values = _values()
    variables = {k: tf.Variable(v) for k, v in values.items()}
    bf16 = values["planted"].astype(ml_dtypes.bfloat16)
    variables["bf16"] = tf.Variable(tf.constant(values["planted"], dtype=tf.bfloat16))
    variables["text"] = tf.Variable([b"x", b"yz"])
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path_factory.mktemp("stats") / "c"))
    values["bf16"] = bf16
    return open_checkpoint(prefix), values


def reference(values: np.ndarray) -> dict:
    """numpy statistics in float64 over the finite values (population std)."""
    x = np.asarray(values).astype(np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    ref = {"nan": int(np.isnan(x).sum()), "inf": int(np.isinf(x).sum()),
           "zeros": float((x == 0).sum() / x.size) if x.size else None}
    if finite.size:
        ref.update(min=finite.min(), max=finite.max(), mean=finite.mean(),
                   std=finite.std(ddof=0), l2=math.sqrt(np.dot(finite, finite)))
    else:
        ref.update(min=None, max=None, mean=None, std=None, l2=None)
    return ref


def assert_matches(got: dict, ref: dict, rel=1e-9):
    assert got["nan"] == ref["nan"] and got["inf"] == ref["inf"]
    for field in ("min", "max", "mean", "std", "l2", "zeros"):
        if ref[field] is None:
            assert got[field] is None, field
        else:
            scale = max(abs(ref[field]), 1e-300)
            assert got[field] == pytest.approx(ref[field], rel=rel, abs=rel * scale), field
            assert isinstance(got[field], float) and math.isfinite(got[field]), field


NUMERIC = ["clean", "planted", "f64", "f16", "all_nan", "only_inf", "one", "scalar", "int",
           "int8", "uint8", "bool"]


@pytest.mark.parametrize("name", NUMERIC)
def test_agrees_with_numpy(made, name):
    ckpt, values = made
    got = tensor_stats(ckpt, name + V)
    assert list(got) == STAT_FIELDS
    assert got["dtype"] == str(np.asarray(values[name]).dtype)
    assert got["numel"] == np.asarray(values[name]).size
    assert_matches(got, reference(values[name]))


def test_planted_counts_are_exact(made):
    ckpt, _ = made
    got = tensor_stats(ckpt, "planted" + V)
    assert (got["nan"], got["inf"]) == (7, 5)
    assert got["zeros"] == pytest.approx(5 / 1000)


@pytest.mark.parametrize("threshold_bytes,chunk_bytes", [(1 << 40, None), (0, 16)])
def test_mixed_infinities_warn_nothing(made, threshold_bytes, chunk_bytes):
    """+Inf and -Inf in one chunk sum to NaN: numpy's RuntimeWarning must not reach stderr."""
    ckpt, values = made
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = tensor_stats(ckpt, "planted" + V, threshold_bytes=threshold_bytes,
                           chunk_bytes=chunk_bytes)
    assert_matches(got, reference(values["planted"]))


def test_all_nan_tensor_has_null_moments(made):
    ckpt, _ = made
    got = tensor_stats(ckpt, "all_nan" + V)
    assert got["nan"] == 12 and got["inf"] == 0
    assert [got[f] for f in ("min", "max", "mean", "std", "l2")] == [None] * 5
    assert got["zeros"] == 0.0


def test_bfloat16_matches_float32_reference_of_the_same_values(made):
    ckpt, values = made
    got = tensor_stats(ckpt, "bf16" + V)
    assert got["dtype"] == "bfloat16"
    same_values = values["bf16"].astype(np.float32)  # exact: every bfloat16 is a float32
    assert_matches(got, reference(same_values))
    # and not the statistics of the unrounded float32 values
    assert got["mean"] != pytest.approx(reference(values["planted"])["mean"], rel=1e-9)


def test_zero_size_tensor(made):
    ckpt, _ = made
    got = tensor_stats(ckpt, "empty" + V)
    assert got["numel"] == 0 and got["nan"] == 0 and got["inf"] == 0
    assert [got[f] for f in ("min", "max", "mean", "std", "l2", "zeros")] == [None] * 6


def test_string_tensor_has_null_statistics(made):
    ckpt, _ = made
    got = tensor_stats(ckpt, "text" + V)
    assert got["dtype"] == "string" and got["numel"] == 2
    assert [got[f] for f in ("min", "max", "mean", "std", "l2", "zeros")] == [None] * 6
    assert got["nan"] == 0 and got["inf"] == 0


@pytest.mark.parametrize("name", ["clean", "planted", "f64", "f16", "bf16", "int", "bool",
                                  "all_nan", "one", "empty"])
@pytest.mark.parametrize("chunk_bytes", [8, 24, 100, 4096])
def test_streamed_equals_whole_read(made, name, chunk_bytes):
    ckpt, _ = made
    key = name + V
    whole = tensor_stats(ckpt, key, threshold_bytes=1 << 40)
    streamed = tensor_stats(ckpt, key, threshold_bytes=0, chunk_bytes=chunk_bytes)
    assert ckpt.streamable(key)
    assert streamed.keys() == whole.keys()
    for field, value in whole.items():
        if isinstance(value, float):
            assert streamed[field] == pytest.approx(value, rel=1e-12, abs=1e-300), field
        else:
            assert streamed[field] == value, field


def test_streamed_really_streams(made):
    ckpt, values = made
    key = "planted" + V
    chunks = list(ckpt.chunks(key, chunk_bytes=64, threshold_bytes=0))
    assert len(chunks) == math.ceil(1000 * 4 / 64)
    flat = np.concatenate(chunks)
    np.testing.assert_array_equal(flat.view(np.uint32), values["planted"].view(np.uint32))


def test_keep_sample_for_histograms(made):
    ckpt, values = made
    got = tensor_stats(ckpt, "planted" + V, keep_sample=True)
    finite = values["planted"][np.isfinite(values["planted"])]
    assert got["sampled_of"] == finite.size
    np.testing.assert_array_equal(np.sort(got["sample"]), np.sort(finite))
    counts, edges = histogram(got["sample"], bins=20)
    assert counts.sum() == finite.size and len(edges) == 21


def test_accumulator_merges_chunks_like_one_array():
    rng = np.random.default_rng(3)
    x = rng.normal(1e4, 1e-2, size=5000)  # large mean, tiny spread: cancellation-prone
    acc = Accumulator()
    for part in np.array_split(x, 17):
        acc.add(part)
    got = acc.result()
    assert got["std"] == pytest.approx(x.std(), rel=1e-6)
    assert got["mean"] == pytest.approx(x.mean(), rel=1e-12)


def test_histogram_of_nothing_finite():
    counts, edges = histogram(np.array([np.nan, np.inf]))
    assert counts.size == 0 and edges.size == 0
