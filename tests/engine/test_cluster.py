"""The engine on a Dask cluster (tpuckpt_viz.engine.cluster): the same numbers, bit for bit.

One local cluster of 2 worker processes on 127.0.0.1 serves the whole module (started once,
stopped at the end). ``stats``, ``diff`` and ``steps`` on it must give exactly the in-process
results, on the real checkpoints of ``../shared/checkpoints`` and on a generated run whose
tensors span many tasks (NaN and Inf, bfloat16, float64 near its range's edge, a tensor whose
first chunk changed and the rest did not), on Keras files (their contiguous datasets are byte
ranges too: ``.weights.h5``, ``.h5``, a stored ``.keras``) and on the GCS emulator's ``gs://``
(the workers fetch the bytes themselves). Then: the CLI's ``--workers 2`` leaves no process
behind; an error on a worker is the in-process one-line error; a worker killed mid-run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tpuckpt_viz.checkpoint.reader import open_checkpoint
from tpuckpt_viz.engine import cluster as dask_engine
from tpuckpt_viz.engine import diff
from tpuckpt_viz.engine.stats import iter_stats
from tpuckpt_viz.errors import UserError

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[2]
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def cluster(gcs):
    """2 worker processes, one thread each, no dashboard, on 127.0.0.1; stopped at the end.

    Started once the GCS emulator's settings are in the environment (the ``gcs`` fixture):
    the workers inherit them, as those of ``--workers N`` inherit the command's, and read
    ``gs://`` from the emulator themselves."""
    c = dask_engine.open_cluster(workers=2)
    assert len(c.client.scheduler_info()["workers"]) == 2
    yield c
    c.close()


def small_tasks(c, task_bytes=2 << 20):
    """The same cluster cutting work into small tasks (many ranges per tensor)."""
    return dask_engine.Cluster(c.client, task_bytes=task_bytes)


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, floats bit for bit."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    return type(a) is type(b) and a == b


def assert_same(local: list, remote: list) -> None:
    assert len(local) == len(remote)
    for x, y in zip(local, remote):
        assert same(x, y), (x, y)


def stats_of(ckpt, c=None, **kw):
    return list(iter_stats(ckpt, list(ckpt.entries), cluster=c, **kw))


def steps_of(run_dir, c=None):
    diff._transition_cache.clear()  # or the second run reads nothing
    return diff.run_steps(str(run_dir), cluster=c)


# ------------------------------------------------------------------------ real checkpoints

def _real_prefixes(shared) -> list[Path]:
    out, seen = [], set()
    for index in sorted(shared.rglob("*.index")):
        prefix = str(index)[:-len(".index")]
        content = index.read_bytes()
        if content in seen:  # the same variables again (the half_plus_two family)
            continue
        seen.add(content)
        try:
            open_checkpoint(prefix)
        except UserError:
            continue
        out.append(prefix)
    return out


def test_stats_of_every_real_checkpoint(shared, cluster):
    prefixes = _real_prefixes(shared)
    assert len(prefixes) >= 20
    mixed = ("t2t_transformer_test_ckpt", "tfx_chicago_taxi_estimator/model.ckpt-0",
             "tfx_keras_serving", "tfranking_bert_lite_tf2")
    for prefix in prefixes:
        ckpt = open_checkpoint(prefix)
        # Every numeric tensor; and on a few, every entry (strings and the object graph are
        # read in-process, in their turn, between the cluster's results).
        keys = list(ckpt.entries) if any(m in prefix for m in mixed) else [
            k for k, e in ckpt.entries.items() if e.dtype != "string"]
        try:
            local = list(iter_stats(ckpt, keys))
        except UserError as exc:  # a damaged or partial one: the same error on the cluster
            with pytest.raises(UserError) as remote:
                list(iter_stats(ckpt, keys, cluster=cluster))
            assert str(remote.value) == str(exc)
            continue
        assert_same(local, list(iter_stats(ckpt, keys, cluster=cluster)))
    # Every tensor its own task; and the histogram samples.
    ckpt = open_checkpoint(str(shared / "t2t_transformer_test_ckpt" / "model.ckpt-1"))
    assert_same(stats_of(ckpt), stats_of(ckpt, small_tasks(cluster, 1)))
    assert_same(stats_of(ckpt, keep_sample=True), stats_of(ckpt, cluster, keep_sample=True))


def test_diff_and_steps_of_real_runs(shared, cluster):
    run = shared / "tfx_chicago_taxi_estimator"
    a, b = open_checkpoint(str(run / "model.ckpt-0")), open_checkpoint(str(run / "model.ckpt-1000"))
    for x, y in ((a, b), (b, a), (a, a)):
        assert_same(diff.diff_checkpoints(x, y), diff.diff_checkpoints(x, y, cluster=cluster))
    assert_same(steps_of(run), steps_of(run, cluster))
    t2t = open_checkpoint(str(shared / "t2t_transformer_test_ckpt" / "model.ckpt-1"))
    assert_same(diff.diff_checkpoints(t2t, t2t), diff.diff_checkpoints(t2t, t2t, cluster=cluster))


def test_workers_import_no_tensorflow(shared):
    """As the CLI runs it: a fresh process (no TensorFlow, pandas or Streamlit imported, unlike
    this test session) starts a local cluster, reads a bundle's statistics on it, and asks each
    worker what it imported."""
    code = textwrap.dedent('''
        import json, sys
        from tpuckpt_viz.checkpoint.reader import open_checkpoint
        from tpuckpt_viz.checkpoint.records import list_records
        from tpuckpt_viz.engine import cluster as engine
        from tpuckpt_viz.engine.stats import iter_stats

        def heavy():
            return sorted(m for m in sys.modules
                          if m.split(".")[0] in ("tensorflow", "pandas", "streamlit"))

        if __name__ == "__main__":
            c = engine.open_cluster(workers=2)
            try:
                ckpt = open_checkpoint(sys.argv[1])
                names = {r["key"]: r["name"] for r in list_records(ckpt)}
                stats = list(iter_stats(ckpt, names, labels=names, cluster=c))
                print(json.dumps({"n": len(stats), "workers": c.client.run(heavy),
                                  "client": heavy()}))
            finally:
                c.close()
    ''')
    script = Path(tempfile.mkdtemp()) / "workers_imports.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, str(script),
                           str(shared / "t2t_transformer_test_ckpt" / "model.ckpt-1")],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["n"] > 0
    assert len(got["workers"]) == 2 and all(v == [] for v in got["workers"].values()), got
    assert got["client"] == [], got


# ------------------------------------------------------------------------ a generated run

@pytest.fixture(scope="module")
def big_run(tf, tmp_path_factory):
    """Three checkpoints (steps 1, 2, 3) of ~30 MB each, tensors many tasks long.

    ``w`` float32 with a NaN and an Inf: step 2 changes only its first 100,000 values, so
    later chunks are identical after a changed one; ``bf`` bfloat16 changes every step;
    ``big`` float64 near 1e200 (squares overflow) stays; ``i8`` int8; 40 small biases; a
    string. Returns the run folder.
    """
    import ml_dtypes

    rng = np.random.default_rng(7)
    w = rng.normal(size=4_000_000).astype(np.float32)
    w[2_500_000] = np.nan
    w[3_100_000] = np.inf
    bf = rng.normal(size=3_000_000).astype(ml_dtypes.bfloat16)
    big = rng.normal(size=1_000_000) * 1e200
    i8 = rng.integers(-128, 127, size=1_000_000).astype(np.int8)
    small = [rng.normal(size=100 + 37 * i).astype(np.float32) for i in range(40)]
    folder = tmp_path_factory.mktemp("dask_run")
    variables = {"w": tf.Variable(w), "bf": tf.Variable(tf.constant(bf.astype(np.float32),
                                                                     dtype=tf.bfloat16)),
                 "big": tf.Variable(big), "i8": tf.Variable(i8),
                 "text": tf.Variable(tf.constant([b"a", b"bc"]))}
    variables.update({f"b{i:02d}": tf.Variable(s) for i, s in enumerate(small)})
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(global_step=step, **variables)
    manager = tf.train.CheckpointManager(ckpt, str(folder), max_to_keep=None)
    for n in (1, 2, 3):
        step.assign(n)
        if n == 2:
            w2 = w.copy()
            w2[:100_000] += 1.0
            variables["w"].assign(w2)
        variables["bf"].assign(variables["bf"] * 1.5)
        variables["b03"].assign(variables["b03"] + n)
        manager.save(checkpoint_number=n)
    return folder


def test_generated_run_is_identical(big_run, cluster):
    prefixes = sorted(str(p)[:-len(".index")] for p in big_run.glob("*.index"))
    c = small_tasks(cluster)
    first, second = open_checkpoint(prefixes[0]), open_checkpoint(prefixes[1])
    local = stats_of(second)
    assert any(r["nan"] for r in local) and any(r["inf"] for r in local)
    assert_same(local, stats_of(second, c))
    assert_same(local, stats_of(second, cluster))
    for x, y in ((first, second), (second, first), (second, second)):
        local = diff.diff_checkpoints(x, y)
        assert_same(local, diff.diff_checkpoints(x, y, cluster=c))
    w = next(r for r in local if r["name"] == "w")
    assert w["status"] == "same"
    w = next(r for r in diff.diff_checkpoints(first, second) if r["name"] == "w")
    assert w["status"] == "changed" and w["delta_l2"] is None  # NaN - NaN in a later chunk
    assert_same(steps_of(big_run), steps_of(big_run, c))


def test_a_worker_error_is_the_same_one_line_error(big_run, cluster, tmp_path):
    prefix = sorted(big_run.glob("ckpt-1.*"))
    for f in prefix:
        shutil.copy(f, tmp_path / f.name)
    copy = str(tmp_path / "ckpt-1")
    data = next(tmp_path.glob("ckpt-1.data-*"))
    ckpt = open_checkpoint(copy)
    last_key = max((k for k in ckpt.entries if ckpt.streamable(k)),
                   key=lambda k: ckpt.index.entries[k].offset)
    last = ckpt.index.entries[last_key]
    # A flipped byte inside the largest tensor: its checksum fails, on either side.
    w = ckpt.index.entries["w" + VALUE]
    with open(data, "r+b") as f:
        f.seek(w.offset + 10_000_000)
        byte = f.read(1)
        f.seek(w.offset + 10_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    messages = []
    for c in (None, small_tasks(cluster)):
        with pytest.raises(UserError) as err:
            stats_of(open_checkpoint(copy), c)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "fails its checksum" in messages[0]
    # A shard truncated while it is read (the last numeric tensor on disk ends early): opened
    # first, since opening checks every entry against the shard's size.
    opened = [open_checkpoint(copy), open_checkpoint(copy)]
    os.truncate(data, last.offset + last.size - 3)
    messages = []
    for ckpt, c in zip(opened, (None, small_tasks(cluster))):
        with pytest.raises(UserError) as err:
            list(iter_stats(ckpt, [last_key], cluster=c))
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "ends early" in messages[0]


def test_a_worker_killed_mid_run(big_run, cluster):
    prefix = sorted(str(p)[:-len(".index")] for p in big_run.glob("*.index"))[1]
    ckpt = open_checkpoint(prefix)
    local = stats_of(ckpt)
    client = cluster.client
    pids = client.run(os.getpid)
    victim = min(pids.values())
    killed = []

    def progress(done, total, label, nbytes):
        if nbytes and not killed:  # a task is done, the others are queued or running
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    try:
        remote = stats_of(ckpt, small_tasks(cluster, 1 << 20), progress=progress)
    except UserError as exc:  # failing is allowed, with one clear line
        assert "\n" not in str(exc) and "worker" in str(exc)
    else:
        assert_same(local, remote)
    assert killed
    client.wait_for_workers(2, timeout=120)  # the nanny starts a new one
    assert victim not in client.run(os.getpid).values()


# ------------------------------------------------------------------------ Keras files

KERAS_FIXTURES = ROOT / "tests" / "fixtures" / "tf215"


@pytest.fixture(scope="module")
def keras_files(tf, tmp_path_factory):
    """Keras 3 files written by Keras: a ModelCheckpoint run ``run/w.0{1,2}.weights.h5`` of a
    model with a 2 MiB kernel trained with Adam, ``model.keras`` (Keras stores its weights
    member uncompressed) and ``deflated.keras`` (the same archive, deflated); and ``odd.h5``
    written by h5py: the same values in both byte orders, chunked and gzip-compressed, float16,
    int16, with a NaN and an Inf; ``userblock.h5``, HDF5 after a 1 KiB user block. Returns the
    folder."""
    import zipfile

    import h5py
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((512,), name="x")
    h = keras.layers.Dense(1024, name="wide")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(3, name="out")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 512)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    folder = tmp_path_factory.mktemp("keras_dask")
    (folder / "run").mkdir()
    saver = keras.callbacks.ModelCheckpoint(str(folder / "run" / "w.{epoch:02d}.weights.h5"),
                                            save_weights_only=True)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[saver])
    model.save(str(folder / "model.keras"))
    with zipfile.ZipFile(folder / "model.keras") as src, \
            zipfile.ZipFile(folder / "deflated.keras", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    v = rng.normal(size=(700, 900)).astype("float32")
    v[5, 5], v[600, 1] = np.nan, np.inf
    with h5py.File(folder / "odd.h5", "w") as f:
        f.create_dataset("little/f4", data=v)
        f.create_dataset("big/f4", data=v.astype(">f4"))
        f.create_dataset("big/f8", data=v.astype(">f8"))
        f.create_dataset("big/i2", data=(np.nan_to_num(v[:50]) * 100).astype(">i2"))
        f.create_dataset("little/f2", data=v[:100].astype("<f2"))
        f.create_dataset("gzip/f4", data=v, chunks=(64, 900), compression="gzip")
    with h5py.File(folder / "userblock.h5", "w", userblock_size=1024) as f:
        f.create_dataset("f4", data=v[:300])  # offsets count the user block before HDF5
    return folder


def _keras_paths(folder: Path) -> list[Path]:
    return (sorted((folder / "run").glob("*.weights.h5"))
            + [folder / "model.keras", folder / "deflated.keras", folder / "odd.h5",
               folder / "userblock.h5"]
            + [KERAS_FIXTURES / n for n in ("keras2_full.h5", "keras2_full_legacy_adam.h5",
                                            "keras2_weights.h5")])


def test_keras_plans_are_the_bytes_h5py_reads(keras_files):
    """A contiguous dataset's plan is one byte range of the file (of the archive itself for a
    stored .keras), in its byte order, holding exactly what h5py reads; chunked, compressed
    and deflated ones have none (read through h5py)."""
    from tpuckpt_viz.checkpoint import shards

    planned = 0
    for path in _keras_paths(keras_files):
        ckpt = open_checkpoint(str(path))
        assert type(ckpt).__name__ == "KerasCheckpoint"
        for key, entry in ckpt.entries.items():
            plan = ckpt.plan(key)
            want = path.name != "deflated.keras" and not key.startswith("gzip/") \
                and entry.numel > 0
            assert plan.streamable == want, (path, key)
            if not want:
                continue
            planned += 1
            assert plan.ranges[0].path == str(path) and plan.crc32c is None
            chunks = list(shards.iter_chunks(plan, 1 << 20))
            value = ckpt.read(key)
            assert {c.dtype for c in chunks} == {value.dtype}, (path, key)  # '>f4' stays
            assert b"".join(c.tobytes() for c in chunks) == value.tobytes(), (path, key)
            # and the workers can read it, in ranges of whole blocks
            assert dask_engine.tensor_ranges(ckpt, key, 4096, 1 << 20), (path, key)
    assert planned >= 60
    odd = open_checkpoint(str(keras_files / "odd.h5"))
    assert odd.plan("big/f4").dtype == np.dtype(">f4")


def _transitions(cluster) -> int:
    def counter(dask_scheduler):
        return dask_scheduler.transition_counter

    return cluster.client.run_on_scheduler(counter)


def test_keras_stats_diff_and_steps_on_the_cluster(keras_files, cluster):
    """Bit for bit the in-process results, tensors spanning several tasks; the work goes to
    the workers (the scheduler's counter moves)."""
    c = small_tasks(cluster, 1 << 20)
    for path in _keras_paths(keras_files):
        ckpt = open_checkpoint(str(path))
        local = stats_of(ckpt)
        before = _transitions(cluster)
        assert_same(local, stats_of(ckpt, c))
        assert (_transitions(cluster) > before) == (path.name != "deflated.keras"), path
        assert_same(local, stats_of(ckpt, cluster))
        assert_same(stats_of(ckpt, keep_sample=True), stats_of(ckpt, c, keep_sample=True))
    odd = {r.pop("key"): r for r in stats_of(open_checkpoint(str(keras_files / "odd.h5")))}
    assert odd["big/f4"] == odd["little/f4"] == odd["gzip/f4"]  # same values, any storage
    assert odd["big/f4"]["nan"] == 1 and odd["big/f4"]["inf"] == 1
    run = keras_files / "run"
    w1, w2 = (open_checkpoint(str(p)) for p in sorted(run.glob("*.weights.h5")))
    archive = open_checkpoint(str(keras_files / "model.keras"))
    deflated = open_checkpoint(str(keras_files / "deflated.keras"))
    odd = open_checkpoint(str(keras_files / "odd.h5"))
    for x, y in ((w1, w2), (w2, w1), (w2, archive), (archive, deflated), (odd, odd)):
        local = diff.diff_checkpoints(x, y)
        assert_same(local, diff.diff_checkpoints(x, y, cluster=c))
        assert_same(local, diff.diff_checkpoints(x, y, cluster=cluster))
    assert any(r["status"] == "changed" for r in diff.diff_checkpoints(w1, w2))
    assert {r["status"] for r in diff.diff_checkpoints(archive, deflated)} == {"same"}
    assert_same(steps_of(run), steps_of(run, c))


def test_keras_cli_on_the_cluster(keras_files, cluster, capsys, monkeypatch):
    """``stats`` and ``diff`` of Keras files print the same JSON on the cluster."""
    from tpuckpt_viz.cli import main

    run = sorted((keras_files / "run").glob("*.weights.h5"))
    commands = [["stats", str(keras_files / "model.keras")], ["stats", str(run[1])],
                ["diff", str(run[0]), str(run[1])]]
    expected = []
    for argv in commands:
        assert main(argv + ["--format", "json"]) == 0
        expected.append(capsys.readouterr().out)
    monkeypatch.setenv("TPUCKPT_SCHEDULER", cluster.address)
    before = _transitions(cluster)
    for argv, want in zip(commands, expected):
        assert main(argv + ["--format", "json"]) == 0
        assert capsys.readouterr().out == want, argv
    assert _transitions(cluster) > before


# ------------------------------------------------------------------------ gs://

def test_gs_on_the_cluster(gcs, cluster, shared, keras_files):
    """Bundles and Keras files on the emulator's gs://: stats and diff on the cluster are
    exactly the in-process results, the workers fetching the bytes from storage themselves."""
    from tpuckpt_viz.checkpoint import remote

    taxi = shared / "tfx_chicago_taxi_estimator"
    t2t = gcs.upload(shared / "t2t_transformer_test_ckpt", "dask/t2t") + "/model.ckpt-1"
    steps = [gcs.upload(taxi / name, f"dask/taxi/{name}") for name in
             ("model.ckpt-0", "model.ckpt-1000")]
    keras_run = gcs.upload(keras_files / "run", "dask/keras/run")
    archive = gcs.upload(keras_files / "model.keras", "dask/keras/model.keras")
    w1, w2 = (f"{keras_run}/w.0{n}.weights.h5" for n in (1, 2))
    local = {t2t: shared / "t2t_transformer_test_ckpt" / "model.ckpt-1",
             steps[0]: taxi / "model.ckpt-0", steps[1]: taxi / "model.ckpt-1000",
             w1: keras_files / "run" / "w.01.weights.h5",
             w2: keras_files / "run" / "w.02.weights.h5",
             archive: keras_files / "model.keras"}
    emulator = gcs.proxy.url

    def settings():
        return os.environ.get("STORAGE_EMULATOR_HOST")

    assert set(cluster.client.run(settings).values()) == {emulator}
    c = small_tasks(cluster, 1 << 20)
    for url, path in local.items():
        ckpt = open_checkpoint(url)
        assert all(r.source.startswith("gs://ckpts/dask/") for k in ckpt.entries
                   if streamed(ckpt, k)
                   for r in dask_engine.tensor_ranges(ckpt, k, 4096, 1 << 20)), url
        want = stats_of(open_checkpoint(str(path)))
        gcs.proxy.reset()
        assert_same(want, stats_of(ckpt, c))
        tensors = sum(ckpt.plan(k).nbytes for k in ckpt.entries if streamed(ckpt, k))
        assert gcs.proxy.bytes >= tensors > 0, url  # fetched again, by the workers
        if "/keras/" not in url:  # 250 and 60 tensors: small ones close together share a read
            assert gcs.proxy.requests <= 8, (url, gcs.proxy.requests)
    for a, b in ((steps[0], steps[1]), (w1, w2), (archive, w2)):
        x, y = open_checkpoint(a), open_checkpoint(b)
        want = diff.diff_checkpoints(open_checkpoint(str(local[a])),
                                     open_checkpoint(str(local[b])))
        assert_same(want, diff.diff_checkpoints(x, y, cluster=c))

    def reads_gs():
        return "gs" in remote._filesystems

    assert all(cluster.client.run(reads_gs).values())


def streamed(ckpt, key) -> bool:
    return dask_engine.streamed(ckpt, key) and ckpt.entries[key].dtype != "string"


# ------------------------------------------------------------------------ the command line

def _marked(marker: str) -> list[int]:
    """Processes whose environment holds ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_cli_workers_leave_no_process(shared, tmp_path, capsys):
    from tpuckpt_viz.cli import main

    run = str(shared / "tfx_chicago_taxi_estimator")
    assert main(["steps", run, "--format", "json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    marker = f"TPUCKPT_TEST_MARKER=dask{os.getpid()}x{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env[marker.split("=")[0]] = marker.split("=")[1]
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tpuckpt_viz", "steps", run, "--workers", "2",
                             "--format", "json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    most = 0
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        most = max(most, len([p for p in _marked(marker) if p != proc.pid]))
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out) == expected
    assert most >= 2, "the workers never showed up"
    end = time.monotonic() + 2  # the kernel's own cleanup of exiting processes
    while _marked(marker) and time.monotonic() < end:
        time.sleep(0.05)
    assert _marked(marker) == [], "a worker outlived the command"
    assert list((tmp_path / "tmp").iterdir()) == []  # nor its scratch folder


def test_cli_refuses_both_and_unreachable(shared, capsys, monkeypatch):
    from tpuckpt_viz.cli import main

    monkeypatch.setattr(dask_engine, "CONNECT_TIMEOUT", "1s")
    path = str(shared / "t2t_transformer_test_ckpt" / "model.ckpt-1")
    assert main(["stats", path, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["stats", path, "--scheduler", "tcp://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    assert err.count("\n") == 1
    # A scheduler without workers: one line, not a wait for ever.
    import distributed

    empty = distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1",
                                     dashboard_address=None,
                                     scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    try:
        assert main(["stats", path, "--scheduler", empty.scheduler_address]) == 1
    finally:
        empty.close()
    err = capsys.readouterr().err
    assert "has no workers" in err and err.count("\n") == 1


def test_cli_scheduler_setting(shared, cluster, capsys, monkeypatch):
    from tpuckpt_viz.cli import main

    path = str(shared / "t2t_transformer_test_ckpt" / "model.ckpt-1")
    assert main(["stats", path, "--format", "json"]) == 0
    expected = capsys.readouterr().out
    monkeypatch.setenv("TPUCKPT_SCHEDULER", cluster.address)
    def counter(dask_scheduler):
        return dask_scheduler.transition_counter

    before = cluster.client.run_on_scheduler(counter)
    assert main(["stats", path, "--format", "json"]) == 0
    assert capsys.readouterr().out == expected
    assert cluster.client.run_on_scheduler(counter) > before  # the work went there


# ------------------------------------------------------------------------ the dashboard

def test_compare_page_on_the_cluster(app_env, cluster, monkeypatch):
    from apphelpers import COMPARE, clear_caches, open_app

    def tables(at):
        return [d.value for d in at.dataframe]

    local = tables(open_app(COMPARE))
    clear_caches()
    diff._transition_cache.clear()
    monkeypatch.setenv("TPUCKPT_SCHEDULER", cluster.address)
    def counter(dask_scheduler):
        return dask_scheduler.transition_counter

    before = cluster.client.run_on_scheduler(counter)
    try:
        remote = tables(open_app(COMPARE))
    finally:
        for shared_cluster in dask_engine._shared.values():
            shared_cluster.close()
        dask_engine._shared.clear()
    assert cluster.client.run_on_scheduler(counter) > before  # the work went there
    assert len(local) == len(remote) >= 2
    for x, y in zip(local, remote):
        assert x.equals(y)


# ------------------------------------------------------------------------ the benchmark

def test_cluster_benchmark_runs(tmp_path):
    """``bench.py --cluster --quick`` prints its figures (timings are not checked here)."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--cluster",
                          "--quick"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    for name in ("in_process", "workers_1", "workers_2"):
        figures = result["cluster"][name]
        assert figures["stats_gb_s"] > 0 and figures["diff_gb_s"] > 0, name
    assert result["per_worker_gb_s"] > 0 and result["estimate"]["hours"] > 0
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone
