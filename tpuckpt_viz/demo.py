"""The demo training run that the dashboard opens when no checkpoint is chosen.

A small Keras 3 classifier (Dense, BatchNormalization, LayerNormalization) trained with Adam
on generated data, saved every few dozen steps with ``tf.train.Checkpoint(model=...,
optimizer=..., step=...)`` through a ``CheckpointManager``: a real TF2 object-based run with
optimizer slots, running statistics and a global step, so Browse, Compare and Infer all have
something real to show. Making it takes a few seconds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tpuckpt_viz import config
from tpuckpt_viz.tfcompat import tf

N_FEATURES = 4
N_CLASSES = 3
STEPS = 300
SAVE_EVERY = 60
SEED = 7


def build_model():
    """The demo's model builder (``tpuckpt_viz.demo:build_model``): a fresh, untrained model."""
    keras = tf().keras
    inputs = keras.Input(shape=(N_FEATURES,), name="features")
    x = keras.layers.Dense(16, activation="relu", name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="batch_norm")(x)
    x = keras.layers.Dense(8, activation="relu", name="dense_1")(x)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    outputs = keras.layers.Dense(N_CLASSES, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="demo_classifier")


def _data(n: int = 2048):
    """Three Gaussian blobs in 4-D: a task the model learns in a few hundred steps."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    centers = rng.normal(0, 2.0, size=(N_CLASSES, N_FEATURES))
    labels = rng.integers(0, N_CLASSES, size=n)
    features = centers[labels] + rng.normal(0, 1.0, size=(n, N_FEATURES))
    return features.astype("float32"), labels.astype("int64")


def is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished demo run (its state file is written last)."""
    return (Path(run_dir) / "checkpoint").is_file() and (Path(run_dir) / "DONE").is_file()


def make_demo(run_dir: str | os.PathLike | None = None, steps: int = STEPS,
              save_every: int = SAVE_EVERY) -> Path:
    """Train the demo model and write its checkpoints into ``run_dir``; return the folder.

    Writes into a temporary sibling folder and renames it at the end, so a dashboard that
    starts twice at once never sees half a run.
    """
    t = tf()
    run_dir = Path(run_dir) if run_dir else config.demo_dir()
    if is_complete(run_dir):
        return run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".demo_tmp_", dir=run_dir.parent))
    t.keras.utils.set_random_seed(SEED)
    model = build_model()
    # Named: Keras numbers unnamed optimizers per process ("adam_1", ...), and the slot names
    # in the checkpoint ("adam/dense_kernel_momentum") must not depend on what ran before.
    optimizer = t.keras.optimizers.Adam(learning_rate=1e-2, name="adam")
    loss_fn = t.keras.losses.SparseCategoricalCrossentropy()
    step = t.Variable(0, dtype=t.int64, name="global_step", trainable=False)
    ckpt = t.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = t.train.CheckpointManager(ckpt, str(work), max_to_keep=None, checkpoint_name="ckpt")
    features, labels = _data()
    dataset = (t.data.Dataset.from_tensor_slices((features, labels))
               .shuffle(2048, seed=SEED).repeat().batch(64))

    @t.function
    def train_step(x, y):
        with t.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        step.assign_add(1)
        return loss

    manager.save(checkpoint_number=0)
    for x, y in dataset.take(steps):
        train_step(x, y)
        if int(step) % save_every == 0:
            manager.save(checkpoint_number=int(step))
    (work / "DONE").write_text("demo run complete\n")
    if run_dir.exists():  # an incomplete earlier attempt
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    try:
        os.replace(work, run_dir)
    except OSError:  # another process won the race: keep its run
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return run_dir


def demo_input(batch: int = 4):
    """A batch of demo features, the same every time (for Infer's defaults and tests)."""
    features, _ = _data()
    return features[:batch]
