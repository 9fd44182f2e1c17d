"""The demo training runs that the dashboard opens when no checkpoint is chosen.

A small Keras 3 transformer classifier (token embedding, two self-attention blocks with layer
normalization, a dense head with batch normalization) trained with Adam on a synthetic task
(which of four token groups is most frequent in a sequence), the attention blocks in mixed
precision (``mixed_bfloat16``, as on a TPU; variables stay float32). Saved by a
``CheckpointManager`` with ``checkpoint_number=step`` through ``tf.train.Checkpoint(model=...,
optimizer=..., step=...)``: a real TF2 object-based run with optimizer slots, running
statistics and a step counter, so Browse, Compare and Infer all have something real to show.

Two runs: the main one straight in the demo folder (steps 0, 50, ..., 300), and beside its
files the subfolder ``diverging/``: the same model where one bad batch makes the loss NaN at
step :data:`NAN_STEP`, so every checkpoint from that step on holds NaN (the run view's NaN
finder has something to find). Both are made in a few seconds on two cores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tpuckpt_viz import config
from tpuckpt_viz.tfcompat import tf

VOCAB = 32
SEQ_LEN = 16
WIDTH = 32
HEADS = 2
BLOCKS = 2
N_CLASSES = 4
STEPS = 300
SAVE_EVERY = 50
SEED = 7
DIVERGING = "diverging"  # subfolder of the demo folder holding the run that diverges
DIVERGING_STEPS = 200
NAN_STEP = 150  # the step whose update writes NaN into the diverging run's weights


def build_model():
    """The demo's model builder (``tpuckpt_viz.demo:build_model``): a fresh, untrained model.

    Input ``tokens`` int32 [-1, 16] (ids below 32); output ``classifier`` float32 [-1, 4]
    (softmax over the four token groups).
    """
    keras = tf().keras
    mixed = "mixed_bfloat16"  # the attention blocks compute in bfloat16, as on a TPU
    tokens = keras.Input(shape=(SEQ_LEN,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, WIDTH, name="embedding")(tokens)
    for i in range(BLOCKS):
        attention = keras.layers.MultiHeadAttention(HEADS, WIDTH // HEADS, dtype=mixed,
                                                    name=f"block{i}_attention")(x, x)
        x = keras.layers.LayerNormalization(name=f"block{i}_norm1")(
            keras.layers.Add(name=f"block{i}_add1")([x, keras.layers.Activation(
                "linear", dtype="float32", name=f"block{i}_cast")(attention)]))
        h = keras.layers.Dense(2 * WIDTH, activation="relu", dtype=mixed,
                               name=f"block{i}_ffn_in")(x)
        h = keras.layers.Dense(WIDTH, dtype=mixed, name=f"block{i}_ffn_out")(h)
        x = keras.layers.LayerNormalization(name=f"block{i}_norm2")(
            keras.layers.Add(name=f"block{i}_add2")([x, keras.layers.Activation(
                "linear", dtype="float32", name=f"block{i}_cast2")(h)]))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    x = keras.layers.Dense(WIDTH, activation="relu", name="dense")(x)
    x = keras.layers.BatchNormalization(name="batch_norm")(x)
    outputs = keras.layers.Dense(N_CLASSES, activation="softmax", name="classifier")(x)
    return keras.Model(tokens, outputs, name="demo_transformer")


def _data(n: int = 4096, seed: int = SEED):
    """Random token sequences; the label is the most frequent token group (id % 4)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(n, SEQ_LEN))
    counts = np.stack([(tokens % N_CLASSES == c).sum(axis=1) for c in range(N_CLASSES)], 1)
    labels = counts.argmax(axis=1)
    return tokens.astype("int32"), labels.astype("int64")


DEMO_VERSION = "demo runs v2 (transformer, diverging/)"


def is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds finished demo runs of this version (the marker is written
    last; an older demo, of another model, is made again)."""
    marker = Path(run_dir) / "DONE"
    try:
        return (Path(run_dir) / "checkpoint").is_file() and \
            marker.read_text().strip() == DEMO_VERSION
    except OSError:
        return False


def _train(folder: Path, steps: int, save_every: int, nan_step: int | None = None) -> None:
    """Train a fresh demo model for ``steps`` steps, saving at step 0 and every
    ``save_every`` steps with ``checkpoint_number=step``. With ``nan_step`` the loss of that
    step is NaN (a corrupt batch), so Adam writes NaN into every weight from then on."""
    t = tf()
    t.keras.utils.set_random_seed(SEED)
    model = build_model()
    # Named: Keras numbers unnamed optimizers per process ("adam_1", ...), and the slot names
    # in the checkpoint ("adam/dense_kernel_momentum") must not depend on what ran before.
    optimizer = t.keras.optimizers.Adam(learning_rate=3e-3, name="adam")
    loss_fn = t.keras.losses.SparseCategoricalCrossentropy()
    step = t.Variable(0, dtype=t.int64, name="global_step", trainable=False)
    ckpt = t.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = t.train.CheckpointManager(ckpt, str(folder), max_to_keep=None,
                                       checkpoint_name="ckpt")
    tokens, labels = _data()
    poison = float("nan")

    @t.function
    def train_step(x, y):
        with t.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            if nan_step is not None:
                loss = t.where(step + 1 == nan_step, poison, 1.0) * loss
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        step.assign_add(1)
        return loss

    manager.save(checkpoint_number=0)
    batch = 64
    for i in range(steps):
        lo = (i * batch) % len(tokens)
        train_step(tokens[lo:lo + batch], labels[lo:lo + batch])
        if int(step) % save_every == 0:
            manager.save(checkpoint_number=int(step))


def make_demo(run_dir: str | os.PathLike | None = None, steps: int = STEPS,
              save_every: int = SAVE_EVERY) -> Path:
    """Train the demo runs and write them into ``run_dir``; return the folder.

    The main run's state file and ``ckpt-<step>.*`` files go straight into ``run_dir``, the
    diverging run into ``run_dir/diverging``. Writes into a temporary sibling folder and
    renames it at the end, so a dashboard that starts twice at once never sees half a run.
    """
    run_dir = Path(run_dir) if run_dir else config.demo_dir()
    if is_complete(run_dir):
        return run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".demo_tmp_", dir=run_dir.parent))
    try:
        _train(work, steps, save_every)
        _train(work / DIVERGING, min(steps, DIVERGING_STEPS), save_every,
               nan_step=NAN_STEP if NAN_STEP <= steps else None)
        (work / "DONE").write_text(DEMO_VERSION + "\n")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if run_dir.exists():  # an incomplete earlier attempt
        shutil.rmtree(run_dir, ignore_errors=True)
    try:
        os.replace(work, run_dir)
    except OSError:  # another process won the race: keep its run
        shutil.rmtree(work, ignore_errors=True)
    return run_dir


def demo_input(batch: int = 4):
    """A batch of demo token sequences, the same every time (for Infer's defaults and tests)."""
    tokens, _ = _data()
    return tokens[:batch]
