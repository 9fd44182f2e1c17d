"""Tests for tpuckpt_viz.checkpoint.bundle: the .index reader and the chunked tensor stream.

Every result is checked against TensorFlow's own reader, on the real checkpoints under
../shared/checkpoints (read only) and on small checkpoints written here into tmp folders.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tpuckpt_viz.checkpoint import bundle, table
from tpuckpt_viz.errors import UserError
from tpuckpt_viz.tfcompat import tf as _tf

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "checkpoints"
PREFIXES = sorted(str(p)[: -len(".index")] for p in SHARED.rglob("*.index"))
T5X = SHARED / "t5x_mtf_tiny_t5_PARTIAL" / "model.ckpt-0"
LINGVO = SHARED / "lingvo_lenet_test_model_PARTIAL" / "lenet_test_model"


@pytest.fixture(scope="module")
def tf():
    return _tf()


# --------------------------------------------------------------------------- fixtures

VALUES = {
    "f32": np.arange(1001, dtype=np.float32).reshape(7, 11, 13) / 7,  # odd element count
    "bf16": (np.linspace(-3, 3, 301)).astype(ml_dtypes.bfloat16),
    "f16": np.linspace(-1, 1, 33, dtype=np.float16).reshape(3, 11),
    "f64": np.random.default_rng(0).normal(size=(5, 7)),
    "i64": np.arange(-50, 51, dtype=np.int64),
    "b": np.array([True, False, True, True, False]),
    "empty": np.zeros((0, 3), np.float32),
    "scalar": np.float32(2.5),
}


@pytest.fixture(scope="module")
def made(tf, tmp_path_factory):
    """A TF2 checkpoint with one variable per dtype, a string, a zero-size and a scalar."""
    folder = tmp_path_factory.mktemp("made")
    ckpt = tf.train.Checkpoint(**{k: tf.Variable(v) for k, v in VALUES.items()})
    ckpt.s = tf.Variable([b"hello", b"", b"world"])
    prefix = ckpt.write(str(folder / "ckpt"))
    key = {k: f"{k}/.ATTRIBUTES/VARIABLE_VALUE" for k in [*VALUES, "s"]}
    return prefix, key


@pytest.fixture(scope="module")
def partitioned(tf, tmp_path_factory):
    """A TF1 Saver checkpoint with a variable split in three partitions."""
    folder = tmp_path_factory.mktemp("part")
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        w = v1.get_variable("w", shape=[10, 4], initializer=v1.random_normal_initializer(),
                            partitioner=v1.fixed_size_partitioner(3))
        v1.get_variable("b", shape=[4], initializer=v1.ones_initializer())
        del w
        step = v1.train.get_or_create_global_step()
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(step.assign(7))
            return saver.save(sess, str(folder / "model.ckpt"), global_step=7)


def _copy(prefix: str, dest: Path) -> str:
    """Copy a checkpoint's files into dest; return the new prefix."""
    src = Path(prefix)
    for f in src.parent.glob(src.name + ".*"):
        shutil.copy(f, dest / f.name)
    return str(dest / src.name)


# ------------------------------------------------------------------- shared checkpoints

@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda p: os.path.relpath(p, SHARED))
def test_matches_tensorflow_reader(tf, prefix):
    index = bundle.read_index(prefix)
    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    assert sorted(index.entries) == sorted(shapes)
    assert list(index.entries) == sorted(index.entries, key=lambda k: k.encode())  # file order
    assert index.header.num_shards >= 1
    for key, entry in index.entries.items():
        assert [d.size for d in entry.shape.dim] == shapes[key], key
        assert bundle.dtype_name(entry.dtype) == dtypes[key].name, key
        if bundle.numpy_dtype(entry.dtype) is not None:
            assert bundle.can_stream(entry), key  # plain numeric tensors always stream
        path = bundle.data_path(prefix, entry.shard_id, index.header.num_shards)
        if bundle.can_stream(entry) and os.path.exists(path):
            got = bundle.read_tensor(index, key)
            want = np.asarray(reader.get_tensor(key))
            assert got.shape == want.shape, key
            assert got.tobytes() == want.tobytes(), key
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in index.entries:
        # Read from the shard with its checksum: the same bytes as TensorFlow's reader.
        graph = bundle.read_scalar_string(index, "_CHECKPOINTABLE_OBJECT_GRAPH")
        assert graph == reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")


def test_scalar_string_refuses_what_does_not_check_out(made, tmp_path):
    prefix = _copy(made[0], tmp_path)
    index = bundle.read_index(prefix)
    key = "_CHECKPOINTABLE_OBJECT_GRAPH"
    assert bundle.read_scalar_string(index, key) is not None
    entry = index.entries[key]
    shard = bundle.data_path(prefix, entry.shard_id, index.header.num_shards)
    data = bytearray(open(shard, "rb").read())
    data[entry.offset + entry.size - 1] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    assert bundle.read_scalar_string(index, key) is None  # the caller falls back to TF
    assert bundle.read_scalar_string(index, made[1]["s"]) is None  # a vector of strings


def test_shared_folder_found():
    assert len(PREFIXES) >= 40 and str(T5X) in PREFIXES and str(LINGVO) in PREFIXES


def test_t5x_partial_lists_but_shard_1_is_missing():
    index = bundle.read_index(str(T5X))
    assert index.header.num_shards == 2 and len(index.entries) == 105
    assert index.entries["shared/embedding"].dtype == 14  # bfloat16
    in_shard_1 = [k for k, e in index.entries.items() if e.shard_id == 1]
    assert in_shard_1
    with pytest.raises(UserError, match=r"model\.ckpt-0\.data-00001-of-00002"):
        bundle.iter_chunks(index, in_shard_1[0])
    with pytest.raises(UserError, match=r"model\.ckpt-0\.data-00001-of-00002"):
        bundle.read_tensor(index, in_shard_1[0])


def test_lingvo_index_only_lists():
    index = bundle.read_index(str(LINGVO))
    assert len(index.entries) == 23


# --------------------------------------------------------------------- made checkpoints

def test_made_checkpoint(tf, made):
    prefix, key = made
    index = bundle.read_index(prefix)
    assert index.prefix == prefix
    assert index.header.num_shards == 1
    names = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64",
             "i64": "int64", "b": "bool", "empty": "float32", "scalar": "float32"}
    for name, value in VALUES.items():
        entry = index.entries[key[name]]
        assert bundle.dtype_name(entry.dtype) == names[name]
        assert bundle.numpy_dtype(entry.dtype) == np.asarray(value).dtype
        assert bundle.can_stream(entry)
        got = bundle.read_tensor(index, key[name])
        assert got.dtype == np.asarray(value).dtype and got.shape == np.shape(value)
        assert got.tobytes() == np.asarray(value).tobytes(), name
    assert list(bundle.iter_chunks(index, key["empty"])) == []
    s = index.entries[key["s"]]
    assert bundle.dtype_name(s.dtype) == "string" and bundle.numpy_dtype(s.dtype) is None
    assert not bundle.can_stream(s)
    with pytest.raises(UserError, match="TensorFlow's reader"):
        bundle.iter_chunks(index, key["s"])
    with pytest.raises(UserError, match="no tensor"):
        bundle.iter_chunks(index, "nope")
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in index.entries and "" not in index.entries


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 10, 64, 1000, 1 << 20])
@pytest.mark.parametrize("name", ["f32", "bf16", "f64", "b"])
def test_tiny_chunks_give_the_same_bytes(made, name, chunk_bytes):
    prefix, key = made
    index = bundle.read_index(prefix)
    itemsize = np.asarray(VALUES[name]).dtype.itemsize
    chunks = list(bundle.iter_chunks(index, key[name], chunk_bytes=chunk_bytes))
    assert all(c.ndim == 1 and c.dtype.itemsize == itemsize for c in chunks)
    assert all(c.nbytes <= max(itemsize, chunk_bytes) for c in chunks)
    assert b"".join(c.tobytes() for c in chunks) == np.asarray(VALUES[name]).tobytes()


def test_partitioned_variable(tf, partitioned):
    index = bundle.read_index(partitioned)
    reader = tf.train.load_checkpoint(partitioned)
    assert sorted(index.entries) == sorted(reader.get_variable_to_shape_map())
    w = index.entries["w"]
    assert len(w.slices) == 3 and [d.size for d in w.shape.dim] == [10, 4]
    assert not bundle.can_stream(w)
    assert not any(k.startswith("\x00") for k in index.entries)
    with pytest.raises(UserError, match="TensorFlow's reader"):
        bundle.iter_chunks(index, "w")
    b = bundle.read_tensor(index, "b")
    assert b.tobytes() == reader.get_tensor("b").tobytes()
    assert bundle.read_tensor(index, "global_step") == 7


def test_ram_filesystem(tf):
    prefix = tf.train.Checkpoint(v=tf.Variable(np.arange(100, dtype=np.float32))).write(
        "ram://tpuckpt_bundle_test/ckpt")
    index = bundle.read_index(prefix)
    data = np.concatenate(list(bundle.iter_chunks(index, "v/.ATTRIBUTES/VARIABLE_VALUE", 40)))
    assert np.array_equal(data, np.arange(100, dtype=np.float32))


def test_data_path():
    assert bundle.data_path("gs://b/m.ckpt-5", 1, 2) == "gs://b/m.ckpt-5.data-00001-of-00002"


def test_dtype_table_matches_tensorflow(tf):
    from tensorflow.core.framework import types_pb2

    for name, value in types_pb2.DataType.items():
        if value in (0, 100):
            continue
        try:
            want = tf.dtypes.as_dtype(value)
        except TypeError:
            continue
        assert bundle.dtype_name(value) == want.name, name
        np_dtype = bundle.numpy_dtype(value)
        if np_dtype is not None:
            assert np_dtype == np.dtype(want.as_numpy_dtype), name
    assert bundle.numpy_dtype(7) is None and bundle.numpy_dtype(20) is None
    assert bundle.numpy_dtype(21) is None and bundle.dtype_name(999) == "dtype_999"


def test_parses_20000_entries_fast(tf, tmp_path):
    n = 20000
    prefix = str(tmp_path / "many")
    names = [f"layer_{i // 10:04d}/var_{i % 10}/.ATTRIBUTES/VARIABLE_VALUE" for i in range(n)]
    tensors = [tf.constant([float(i)]) for i in range(n)]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * n, tensors=tensors)
    start = time.perf_counter()
    index = bundle.read_index(prefix)
    elapsed = time.perf_counter() - start
    assert len(index.entries) == n and list(index.entries) == sorted(names)
    assert bundle.read_tensor(index, names[12345])[0] == 12345.0
    # Includes validating every entry and reading each shape out of its proto (which listing
    # then reuses): measured 0.44 to 0.99 s here at a load average of 10 on 2 cores.
    assert elapsed < 2.0, elapsed


# ------------------------------------------------------------------------- corruption

def test_flipped_byte_fails_checksum(made, tmp_path):
    prefix, key = made
    copy = _copy(prefix, tmp_path)
    index = bundle.read_index(copy)
    entry = index.entries[key["f32"]]
    data = Path(bundle.data_path(copy, 0, 1))
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 123] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum") as err:
        list(bundle.iter_chunks(index, key["f32"], chunk_bytes=256))
    assert key["f32"] in str(err.value) and str(data) in str(err.value)


def test_truncated_shard(made, tmp_path):
    prefix, key = made
    copy = _copy(prefix, tmp_path)
    index = bundle.read_index(copy)
    entry = index.entries[key["f32"]]
    data = Path(bundle.data_path(copy, 0, 1))
    data.write_bytes(data.read_bytes()[: entry.offset + entry.size // 2 + 1])  # mid-item cut
    with pytest.raises(UserError, match="truncated"):
        bundle.read_tensor(index, key["f32"])


def test_deleted_shard(made, tmp_path):
    prefix, key = made
    copy = _copy(prefix, tmp_path)
    index = bundle.read_index(copy)
    data = bundle.data_path(copy, 0, 1)
    os.remove(data)
    with pytest.raises(UserError, match="missing data file " + data.replace(".", r"\.")):
        bundle.iter_chunks(index, key["f32"])


def test_missing_index(tmp_path):
    with pytest.raises(UserError, match=r"no .*nothing\.index: pass the checkpoint prefix"):
        bundle.read_index(str(tmp_path / "nothing"))


@pytest.mark.parametrize("damage", ["random", "truncated", "short", "empty", "crc"])
def test_corrupt_index(made, tmp_path, damage):
    prefix, _ = made
    copy = _copy(prefix, tmp_path)
    path = Path(copy + ".index")
    raw = path.read_bytes()
    if damage == "random":
        raw = np.random.default_rng(1).bytes(len(raw))
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "short":
        raw = raw[:20]
    elif damage == "empty":
        raw = b""
    else:  # a flipped byte inside the first data block
        raw = bytes([raw[0] ^ 0x40]) + raw[1:]
    path.write_bytes(raw)
    with pytest.raises(UserError, match="not a valid checkpoint index") as err:
        bundle.read_index(copy)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _first_data_block(raw: bytes) -> tuple[int, int]:
    return table.data_blocks(raw)[0]


def test_lingvo_data_block_is_snappy():
    # Old TensorFlow compressed index blocks with snappy: the decoder must handle real ones.
    raw = (LINGVO.parent / "lenet_test_model.index").read_bytes()
    off, size = _first_data_block(raw)
    assert raw[off + size] == 1


def test_snappy_block_round_trip():
    import cramjam

    raw = b"abcabcabc" * 50 + bytes(range(256))
    assert table.snappy_decompress(bytes(cramjam.snappy.compress_raw(raw))) == raw


@pytest.mark.parametrize("stream", [b"\x05\x10hel", b"\x04" + bytes([1 | 0 << 2, 5]), b"\x03\x08abcd"])
def test_snappy_rejects_garbage(stream):
    with pytest.raises(ValueError):
        table.snappy_decompress(stream)


def test_lingvo_snappy_index_matches_tensorflow(tf):
    # The real snappy-compressed index: every key TensorFlow lists, with its shape and dtype.
    index = bundle.read_index(str(LINGVO))
    reader = tf.compat.v1.train.NewCheckpointReader(str(LINGVO))
    shapes = reader.get_variable_to_shape_map()
    assert set(index.entries) == set(shapes)
    for key, entry in index.entries.items():
        assert [d.size for d in entry.shape.dim] == shapes[key], key


def test_unknown_compression_is_refused(made, tmp_path):
    import google_crc32c

    prefix, _ = made
    copy = _copy(prefix, tmp_path)
    path = Path(copy + ".index")
    raw = bytearray(path.read_bytes())
    off, size = _first_data_block(bytes(raw))
    raw[off + size] = 2  # a compression type TensorFlow's table format does not define, valid crc
    crc = google_crc32c.value(bytes(raw[off : off + size + 1]))
    raw[off + size + 1 : off + size + 5] = table.mask(crc).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="compression type 2.*TensorFlow's reader"):
        bundle.read_index(copy)


def test_import_does_not_load_tensorflow():
    import subprocess
    import sys

    code = "import sys, tpuckpt_viz.checkpoint.bundle; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


_LIST_CHILD = r"""
import contextlib, io, json, sys
from tpuckpt_viz import cli
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = cli.main(["list", sys.argv[1], "--format", "json"])
heavy = sorted(m for m in ("tensorflow", "numpy", "ml_dtypes", "pandas", "keras", "h5py",
                           "streamlit", "asyncio", "gcsfs") if m in sys.modules)
print(json.dumps({"code": code, "listed": len(json.loads(out.getvalue())), "heavy": heavy}))
"""


@pytest.mark.parametrize("name", ["t2t_transformer_test_ckpt", "tf2_keras3_adam"])
def test_listing_a_bundle_loads_no_numpy(name, tmp_path):
    """``list`` of a bundle reads the index and protos only: no TensorFlow, and not even numpy
    (a worker or a CLI call starts in a fraction of TensorFlow's import time)."""
    import json
    import subprocess
    import sys

    if name == "t2t_transformer_test_ckpt":
        path = str(SHARED / name)
    else:  # a TF2 object-based checkpoint with an object graph and Adam slots
        path = str(tmp_path / "ckpt")
        import keras

        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="adam", loss="mse")
        model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
        path = _tf().train.Checkpoint(model=model, optimizer=model.optimizer).write(path)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _LIST_CHILD, path], capture_output=True,
                          text=True, timeout=120, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["code"] == 0 and got["listed"] > 5 and got["heavy"] == [], got
