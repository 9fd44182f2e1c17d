"""Shared fixtures: real checkpoints written once per test session, and the shared test data.

No mocks of the checkpoint format: every fixture here is written by TensorFlow itself (a Keras 3
model after a few Adam steps, a TF1 graph saved by a ``Saver``, a TF2 ``tf.train.Checkpoint``
of unusual dtypes, the demo run). ``shared`` is ``../shared/checkpoints``: read it, never write.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from apphelpers import clear_caches

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "checkpoints"
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: browser tests (Playwright + Chromium)")


@pytest.fixture(scope="session", autouse=True)
def env_isolation(tmp_path_factory):
    """Point the demo folder at a temporary one so no test writes to the real home cache.

    Session-scoped (and through ``os.environ``) so that session fixtures and the CLI
    subprocesses that tests start see it too.
    """
    saved = {k: os.environ.get(k) for k in ("TPUCKPT_DEMO_DIR", "TPUCKPT_PROGRESS")}
    os.environ["TPUCKPT_DEMO_DIR"] = str(tmp_path_factory.mktemp("demo_home") / "demo")
    os.environ.pop("TPUCKPT_PROGRESS", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared/checkpoints``: real checkpoints from other projects (read only)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture
def fresh_caches():
    """Streamlit's caches emptied before and after the test."""
    clear_caches()
    yield
    clear_caches()


@pytest.fixture
def app_env(shared, demo_run, tmp_path_factory, monkeypatch, fresh_caches) -> Path:
    """For the dashboard: roots = the shared folder and every tmp folder (the corpus too), no
    ``TPUCKPT_MODEL``, the demo run in place, fresh caches. Returns the demo folder."""
    from tpuckpt_viz import config

    monkeypatch.setenv("TPUCKPT_ROOTS", os.pathsep.join(
        [str(shared), str(tmp_path_factory.getbasetemp())]))
    monkeypatch.delenv("TPUCKPT_MODEL", raising=False)
    demo = config.demo_dir()
    if not (demo / "DONE").is_file():  # copy the session's demo run: no second training
        shutil.rmtree(demo, ignore_errors=True)
        shutil.copytree(demo_run, demo)
    return demo


@pytest.fixture(scope="session")
def tf():
    from tpuckpt_viz.tfcompat import tf as _tf

    return _tf()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo run (Keras 3 + Adam, ckpt-0 .. ckpt-300 every 60 steps)."""
    from tpuckpt_viz.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo") / "run")


@pytest.fixture(scope="session")
def keras3_adam_ckpt(tf, tmp_path_factory) -> str:
    """A Keras 3 Sequential model after a few Adam steps, written with tf.train.Checkpoint.

    Model ``sequential``: ``Input((3,)) -> Dense(4, name="dense") -> BatchNormalization()
    -> Dense(2, name="head")``, every layer named (automatic names depend on what the process
    built before). The kernel's full_name is ``sequential/dense/kernel``.
    Returns the checkpoint prefix.
    """
    keras = tf.keras
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="dense"),
                              keras.layers.BatchNormalization(name="batch_normalization"),
                              keras.layers.Dense(2, name="head")], name="sequential")
    optimizer = keras.optimizers.Adam(learning_rate=0.01, name="adam")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return ckpt.write(str(tmp_path_factory.mktemp("keras3") / "ckpt"))


@pytest.fixture(scope="session")
def tf1_saver_ckpt(tf, tmp_path_factory) -> str:
    """A TF1 graph saved by ``tf.compat.v1.train.Saver`` after 3 AdamOptimizer steps.

    Variables: ``dense/kernel`` [3, 4], ``dense/bias`` [4], ``embedding`` [9, 2] split in three
    partitions, ``batch_normalization/gamma``, ``batch_normalization/beta``,
    ``batch_normalization/moving_mean``, ``global_step`` (= 3); Adam adds ``<var>/Adam``,
    ``<var>/Adam_1``, ``beta1_power`` and ``beta2_power``. Returns the prefix
    (``.../model.ckpt-3``).
    """
    folder = tmp_path_factory.mktemp("tf1")
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        x = tf.constant(np.random.default_rng(0).normal(size=(8, 3)).astype("float32"))
        ids = tf.constant([0, 3, 8, 5])
        kernel = v1.get_variable("dense/kernel", [3, 4])
        bias = v1.get_variable("dense/bias", [4], initializer=v1.zeros_initializer())
        embedding = v1.get_variable("embedding", [9, 2],
                                    partitioner=v1.fixed_size_partitioner(3))
        gamma = v1.get_variable("batch_normalization/gamma", [4],
                                initializer=v1.ones_initializer())
        beta = v1.get_variable("batch_normalization/beta", [4],
                               initializer=v1.zeros_initializer())
        moving_mean = v1.get_variable("batch_normalization/moving_mean", [4], trainable=False,
                                      initializer=v1.zeros_initializer())
        step = v1.train.get_or_create_global_step()
        h = tf.matmul(x, kernel) + bias
        mean, var = tf.nn.moments(h, axes=[0])
        h = gamma * (h - mean) / tf.sqrt(var + 1e-3) + beta
        emb = tf.nn.embedding_lookup(embedding, ids)
        loss = tf.reduce_mean(tf.square(h)) + tf.reduce_mean(tf.square(emb))
        train = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
        update_mean = moving_mean.assign(0.9 * moving_mean + 0.1 * mean)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(3):
                sess.run([train, update_mean])
            return saver.save(sess, str(folder / "model.ckpt"), global_step=step)


BF16_VALUES = {
    "bf16": np.array([[1.5, -2.25, 0.0], [3.0, 1e-3, -7.5]]),
    "f16": np.array([0.5, -1.0, 65504.0, 0.0]),
    "i32": np.array([[1, -2], [3, 2**31 - 1]]),
    "flag": np.array([True, False, True]),
}


@pytest.fixture(scope="session")
def bf16_ckpt(tf, tmp_path_factory):
    """A tf.train.Checkpoint of bfloat16, float16, int32 and bool variables and a string one.

    Returns ``(prefix, values)``: ``values`` maps each attribute name (the key is
    ``<name>/.ATTRIBUTES/VARIABLE_VALUE``) to its numpy value; bfloat16 values are
    ``ml_dtypes.bfloat16`` arrays, the string one is an object array of bytes.
    """
    import ml_dtypes

    values = {
        "bf16": BF16_VALUES["bf16"].astype(ml_dtypes.bfloat16),
        "f16": BF16_VALUES["f16"].astype(np.float16),
        "i32": BF16_VALUES["i32"].astype(np.int32),
        "flag": BF16_VALUES["flag"].astype(bool),
        "text": np.array([b"alpha", b"", b"\xce\xb2eta"], dtype=object),
    }
    variables = {
        "bf16": tf.Variable(tf.constant(BF16_VALUES["bf16"], dtype=tf.bfloat16)),
        "f16": tf.Variable(values["f16"]),
        "i32": tf.Variable(values["i32"]),
        "flag": tf.Variable(values["flag"]),
        "text": tf.Variable(tf.constant(list(values["text"]), dtype=tf.string)),
    }
    ckpt = tf.train.Checkpoint(**variables)
    prefix = ckpt.write(str(tmp_path_factory.mktemp("bf16") / "ckpt"))
    return prefix, values


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS emulator behind a loopback proxy (tests/gcsemu.py), started once per session.

    A missing emulator is an error, not a skip: ``.ci/run`` installs it.
    """
    from gcsemu import Testbed

    bed = Testbed(tmp_path_factory.mktemp("gcs"))
    yield bed
    bed.stop()


def keras_slot_links(model) -> dict[str, tuple[str, str]]:
    """Keras's own word: optimizer variable path -> (model variable path, slot list)."""
    opt = model.optimizer
    links = {}
    for attr in ("_momentums", "_velocities", "_velocity_hats", "_accumulators",
                 "_average_gradients", "momentums"):
        for var, slot in zip(opt._trainable_variables, getattr(opt, attr, None) or []):
            if slot is not None:
                links[slot.path] = (var.path, attr)
    return links


@pytest.fixture(scope="session")
def keras3_run(tf, tmp_path_factory):
    """A Keras 3 Functional model (LSTM with its nested cell, Dense, BatchNormalization, Dense)
    trained with Adam: ``model.weights.h5`` (save_weights), ``model.keras`` (model.save),
    ``ckpt`` (tf.train.Checkpoint of the same model and optimizer), and a three-epoch
    ModelCheckpoint run ``run/w.{epoch:02d}.weights.h5``. Returns a dict with the paths and
    what Keras says (weights, optimizer variables, slot links, iterations per epoch)."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((3, 2), name="x")
    h = keras.layers.LSTM(2, name="lstm")(inp)
    h = keras.layers.Dense(3, name="hidden")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(2, name="out")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3, 2)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    folder = tmp_path_factory.mktemp("keras3files")
    run_dir = folder / "run"
    run_dir.mkdir()
    saver = keras.callbacks.ModelCheckpoint(str(run_dir / "w.{epoch:02d}.weights.h5"),
                                            save_weights_only=True)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[saver])
    model.save_weights(str(folder / "model.weights.h5"))
    model.save(str(folder / "model.keras"))
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
        str(folder / "tfckpt" / "ckpt"))
    return {
        "folder": folder, "run": run_dir, "weights": folder / "model.weights.h5",
        "keras": folder / "model.keras", "tf": prefix,
        "weight_paths": [w.path for w in model.weights],
        "trainable": [w.path for w in model.trainable_weights],
        "optimizer_paths": [v.path for v in model.optimizer.variables],
        "links": keras_slot_links(model),
        "values": {w.path: w.numpy() for w in model.weights},
        "iterations": int(model.optimizer.iterations.numpy()),
    }
