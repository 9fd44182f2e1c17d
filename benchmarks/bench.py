#!/usr/bin/env python3
"""Benchmark of the statistics engine: prints one JSON object.

    python benchmarks/bench.py            # full sizes: several minutes, ~10 GiB in a temp folder
    python benchmarks/bench.py --quick    # tiny sizes, seconds (the test suite runs this)
    python benchmarks/bench.py --cluster  # Dask: in-process vs 1 and 2 local workers

Every figure is a ratio measured side by side in the same run (the engine, then the
baseline, repetition after repetition), the median of the per-repetition ratios:

- ``stats_vs_read``: statistics of every tensor of a ~1 GiB checkpoint of 500 float32 tensors
  (half of them large kernels and embeddings of 2 to 6 MB, half small biases and scales; open,
  list with names and kinds, stats: what ``python -m tpuckpt_viz stats`` does) against a bare
  loop calling ``CheckpointReader.get_tensor`` on every tensor. Target <= 1.25.
- ``diff_vs_read``: ``diff_checkpoints`` of two such checkpoints against the bare loop over
  both. Target <= 1.5.
- ``peak_rss_mb_over_base``: in a child process, peak resident memory (``ru_maxrss``) of the
  ``stats`` command on a checkpoint holding one 2 GiB float32 tensor, minus the resident
  memory after importing TensorFlow. Target <= 600.
- ``list_vs_raw``: ``records.list_records`` (readable names, kinds, slot links) of a 20,000
  entry TF2 object-based checkpoint whose object graph holds optimizer slots, against a bare
  ``tf.train.list_variables``. Target <= 10.
- ``bf16_stats_vs_read``: as ``stats_vs_read`` on a ~1 GiB bfloat16 checkpoint. Target <= 1.5.
- ``list_process_vs_import_tf``: whole processes, ``python -m tpuckpt_viz list --format json``
  of the 20,000-entry checkpoint against a process that only imports TensorFlow (listing a
  bundle imports no TensorFlow). Target <= 0.3.
- ``stats_process_vs_read_process``: whole processes, ``python -m tpuckpt_viz stats`` of a
  4 GiB checkpoint of 500 float32 tensors against a process running the bare ``get_tensor``
  loop on it (TensorFlow's import included on that side only). Target <= 0.45.

Both whole-process figures run with compiled modules on both sides, after a warm-up run of
each process.

``--page`` measures only the Infer page instead (``python benchmarks/bench.py --page``):

- ``page_vs_cli``: a Keras model with a long-audio input ``[-1, 43844, 1]`` and outputs
  ``[-1, 172, 88]`` (a piano roll), built here and exported as a SavedModel; the Infer page
  opened on it and run once (Streamlit's AppTest in a fresh process: opening the page, the
  click, the rerun that draws the results) against ``python -m tpuckpt_viz infer DIR --format
  json`` (a whole process), the median of the per-repetition ratios. Target <= 1.5.

Inputs are generated in a temporary folder (removed at the end) by a child process, so the
memory used to write them is given back before anything is timed. Nothing is written into the
repository.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {
    "full": {"tensors": 500, "bytes": 1 << 30, "big_bytes": 2 << 30, "list_vars": 20000,
             "process_bytes": 4 << 30, "reps": 3, "cli_reps": 3},
    "quick": {"tensors": 16, "bytes": 6 << 20, "big_bytes": 24 << 20, "list_vars": 300,
              "process_bytes": 12 << 20, "reps": 3, "cli_reps": 1},
}


# ------------------------------------------------------------------------ input generation

def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tpuckpt_viz.tfcompat import tf

    return tf()


def _layout(n: int, total: int, itemsize: int) -> list[tuple[str, int]]:
    """Names and element counts of ``n`` tensors, about ``total`` bytes in all, laid out as a
    model's are: half of them large (kernels and embeddings, 0.5x to 1.5x the mean size),
    half small (biases and normalization scales, a few thousand values)."""
    parts = ("kernel", "bias", "embeddings", "gamma")
    big = [i for i in range(n) if parts[i % 4] in ("kernel", "embeddings")]
    weights = {i: 0.5 + (i % 10) / 9 for i in big}
    scale = total / itemsize / sum(weights.values())
    layout = []
    for i in range(n):
        numel = int(weights[i] * scale) if i in weights else 1024 + (97 * i) % 3072
        layout.append((f"model/layer_{i // 4:04d}/{parts[i % 4]}/.ATTRIBUTES/VARIABLE_VALUE",
                       numel))
    return layout


def _dense(tf, prefix: str, n: int, total: int, dtype: str, seed: int, twin: str | None = None):
    """A checkpoint of ``n`` tensors of ``dtype`` (see :func:`_layout`), written by SaveV2:
    normal values, around 1.0 for the normalization scales (a mean that dwarfs the spread).

    With ``twin``, also a second checkpoint where nine tensors in ten moved a little
    (b = 0.999 a + 0.001) and the tenth is bit-for-bit the same (as frozen layers are).
    """
    import numpy as np

    tf_dtype = {"float32": tf.float32, "bfloat16": tf.bfloat16}[dtype]
    itemsize = 4 if dtype == "float32" else 2
    rng = np.random.default_rng(seed)
    names, tensors = [], []
    for name, numel in _layout(n, total, itemsize):
        values = rng.standard_normal(numel, dtype=np.float32)
        if "/gamma/" in name:
            values = 1.0 + 0.01 * values
        names.append(name)
        tensors.append(tf.cast(tf.constant(values), tf_dtype))
        del values
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * n,
                      tensors=tensors)
    if twin:
        moved = [t if i % 10 == 9 else tf.cast(tf.cast(t, tf.float32) * 0.999 + 0.001, tf_dtype)
                 for i, t in enumerate(tensors)]
        tf.raw_ops.SaveV2(prefix=twin, tensor_names=names, shape_and_slices=[""] * n,
                          tensors=moved)


def _big(tf, prefix: str, nbytes: int):
    """One float32 tensor of ``nbytes`` (uniform random), plus a step counter."""
    import numpy as np

    rng = np.random.default_rng(7)
    values = tf.constant(rng.random(nbytes // 4, dtype=np.float32))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["embedding/table", "global_step"],
                      shape_and_slices=["", ""], tensors=[values, tf.constant(1000, tf.int64)])


def _many(tf, prefix: str, entries: int):
    """A TF2 object-based checkpoint (``tf.train.Checkpoint``) of about ``entries`` entries:
    layers of a kernel and a bias, each with Adam slots ``m`` and ``v`` recorded as
    ``slot_variables`` in the object graph.

    The slots are made as plain variables and handed to a TF1 ``AdamOptimizer`` (the graph
    writer asks the optimizer for them by name): its own slot creation measured 4 ms a
    variable here, 55 s for 20,000 entries.
    """
    from tensorflow.python.training import optimizer as optimizer_v1

    layers = max(1, entries // 6)
    model = tf.Module()
    model.layers = []
    for i in range(layers):
        layer = tf.Module(name=f"dense_{i}")
        layer.kernel = tf.Variable(tf.zeros([2, 2]), name=f"dense_{i}/kernel")
        layer.bias = tf.Variable(tf.zeros([2]), name=f"dense_{i}/bias")
        model.layers.append(layer)
    variables = [v for layer in model.layers for v in (layer.kernel, layer.bias)]
    opt = tf.compat.v1.train.AdamOptimizer(0.001)
    for slot in ("m", "v"):
        opt._slots[slot] = {optimizer_v1._var_key(v): tf.Variable(tf.zeros_like(v))
                            for v in variables}
    first = variables[0]
    opt._create_non_slot_variable(initial_value=0.9, name="beta1_power", colocate_with=first)
    opt._create_non_slot_variable(initial_value=0.999, name="beta2_power", colocate_with=first)
    tf.train.Checkpoint(model=model, optimizer=opt).write(prefix)


def make_inputs(folder: str, size: dict) -> dict:
    """Write every input checkpoint into ``folder`` (run in a child process)."""
    tf = _quiet_tf()
    paths = {"f32_a": f"{folder}/f32_a/ckpt", "f32_b": f"{folder}/f32_b/ckpt",
             "bf16": f"{folder}/bf16/ckpt", "big": f"{folder}/big/ckpt",
             "many": f"{folder}/many/ckpt"}
    for path in paths.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    _dense(tf, paths["f32_a"], size["tensors"], size["bytes"], "float32", 1, twin=paths["f32_b"])
    _dense(tf, paths["bf16"], size["tensors"], size["bytes"], "bfloat16", 2)
    _big(tf, paths["big"], size["big_bytes"])
    _many(tf, paths["many"], size["list_vars"])
    paths.update(make_process_input(folder, size))
    return paths


def make_process_input(folder: str, size: dict) -> dict:
    """The checkpoint of the whole-process ``stats`` figure: 4 GiB of 500 float32 tensors (the
    issue's size; a child process of its own, so that its memory is given back)."""
    tf = _quiet_tf()
    path = f"{folder}/f32_4g/ckpt"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _dense(tf, path, size["tensors"], size["process_bytes"], "float32", 4)
    return {"f32_4g": path}


# ------------------------------------------------------------------------------ workloads

def bare_read(prefixes: list[str]) -> None:
    """The baseline: TensorFlow's reader, ``get_tensor`` on every tensor."""
    tf = _quiet_tf()
    for prefix in prefixes:
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)


def engine_stats(prefix: str) -> list[dict]:
    """What the ``stats`` command does, without printing: open, list, one engine pass."""
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records
    from tpuckpt_viz.engine.stats import iter_stats

    ckpt = open_checkpoint(prefix)
    names = {r["key"]: r["name"] for r in list_records(ckpt)}
    return list(iter_stats(ckpt, names, labels=names))


def engine_diff(prefix_a: str, prefix_b: str) -> list[dict]:
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.engine.diff import diff_checkpoints

    return diff_checkpoints(open_checkpoint(prefix_a), open_checkpoint(prefix_b))


def engine_list(prefix: str) -> list[dict]:
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records

    return list_records(open_checkpoint(prefix))


def raw_list(prefix: str):
    return _quiet_tf().train.list_variables(prefix)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def side_by_side(reps: int, engine, baseline) -> dict:
    """Median ratio engine/baseline over ``reps`` back-to-back pairs (after one warm-up)."""
    engine()
    baseline()
    ratios, t_engine, t_base = [], [], []
    for _ in range(reps):
        te, tb = _timed(engine), _timed(baseline)
        ratios.append(te / tb)
        t_engine.append(te)
        t_base.append(tb)
    return {"ratio": statistics.median(ratios), "engine_s": statistics.median(t_engine),
            "baseline_s": statistics.median(t_base)}


# ------------------------------------------------------------------------- child processes

def peak_rss_child(prefix: str) -> dict:
    """In this (child) process: RSS after importing TensorFlow, then the ``stats`` command's
    peak RSS. Linux reports ``ru_maxrss`` in KiB (macOS in bytes)."""
    import resource

    _quiet_tf()
    from tpuckpt_viz import cli  # noqa: F401  (the command's own imports)

    def current_mb() -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return _maxrss_mb(resource)

    base = current_mb()
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["stats", prefix, "--format", "json"])
    return {"base_mb": base, "peak_mb": _maxrss_mb(resource), "status": status}


def _maxrss_mb(resource) -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


# Whole-process figures compare installed code, whose modules come compiled (pip writes
# their .pyc). Where PYTHONDONTWRITEBYTECODE is set, this checkout's modules would compile on
# every run while TensorFlow's do not: the timed children keep their .pyc in a folder of the
# run instead (PYTHONPYCACHEPREFIX), filled by a warm-up run of each.
PYCACHE: dict[str, str] = {}


def _child(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), **PYCACHE)
    if PYCACHE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=timeout, check=False)


def _json_child(*args: str) -> dict:
    out = _child(str(Path(__file__).resolve()), *args)
    if out.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_BARE_PROCESS = (
    "import sys\n"
    "from tpuckpt_viz.tfcompat import tf\n"
    "r = tf().compat.v1.train.NewCheckpointReader(sys.argv[1])\n"
    "for k in r.get_variable_to_shape_map(): r.get_tensor(k)\n"
)
_IMPORT_ONLY = "from tpuckpt_viz.tfcompat import tf\ntf()\n"


def cli_side_by_side(prefix: str, many: str, reps: int) -> dict:
    """Whole processes, side by side in each repetition: ``stats`` of ``prefix`` through the
    CLI, a bare read loop over it, TensorFlow's import alone, and ``list`` of ``many``."""
    def run(*args) -> float:
        start = time.perf_counter()
        out = _child(*args)
        elapsed = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"{args}: {out.stderr.strip()[-2000:]}")
        return elapsed

    cli = ("-m", "tpuckpt_viz", "stats", prefix, "--format", "json")
    lister = ("-m", "tpuckpt_viz", "list", many, "--format", "json")
    if reps > 1:
        PYCACHE["PYTHONPYCACHEPREFIX"] = str(Path(prefix).parent.parent / "pycache")
        run("-c", _IMPORT_ONLY)  # warm the file caches, and compile every module once
        run("-c", _BARE_PROCESS, prefix)
        run(*cli)
        run(*lister)
    stats_ratios, list_ratios = [], []
    t_cli, t_bare, t_imp, t_list = [], [], [], []
    for _ in range(reps):
        imp = run("-c", _IMPORT_ONLY)
        c = run(*cli)
        b = run("-c", _BARE_PROCESS, prefix)
        li = run(*lister)
        stats_ratios.append(c / b)
        list_ratios.append(li / imp)
        t_cli.append(c)
        t_bare.append(b)
        t_imp.append(imp)
        t_list.append(li)
    PYCACHE.clear()
    med = statistics.median
    return {"stats_ratio": med(stats_ratios), "list_ratio": med(list_ratios),
            "cli_s": med(t_cli), "bare_s": med(t_bare), "import_s": med(t_imp),
            "list_s": med(t_list)}


# ------------------------------------------------------------------------ the Infer page

AUDIO = {"full": {"samples": 43844, "frames": 172, "notes": 88, "reps": 3},
         "quick": {"samples": 4384, "frames": 18, "notes": 88, "reps": 1}}


def make_audio_model(folder: str, mode: str) -> str:
    """A Keras model from long audio to a piano roll, exported as a SavedModel in ``folder``."""
    tf = _quiet_tf()
    size = AUDIO[mode]
    keras = tf.keras
    keras.utils.set_random_seed(0)
    stride = -(-size["samples"] // size["frames"])
    inputs = keras.Input((size["samples"], 1), name="audio")
    x = keras.layers.Conv1D(32, 2 * stride, strides=stride, padding="same",
                            activation="relu", name="frames")(inputs)
    outputs = keras.layers.Dense(size["notes"], activation="sigmoid", name="notes")(x)
    model = keras.Model(inputs, outputs, name="transcriber")
    assert tuple(model.output.shape[1:]) == (size["frames"], size["notes"])
    path = str(Path(folder) / "transcriber")
    model.export(path, verbose=False)
    return path


_PAGE_PROCESS = """
import json, os, sys, time
sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
start = time.perf_counter()
from apphelpers import INFER, open_app
at = open_app(INFER, timeout=600, ckpt=sys.argv[1])
opened = time.perf_counter()
at.button(key="infer_run").click().run()
assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
assert any(m.label == "Device" for m in at.metric)
done = time.perf_counter()
print(json.dumps({"open_s": opened - start, "run_s": done - opened, "page_s": done - start}))
"""


def page_side_by_side(saved_model: str, reps: int) -> dict:
    """The Infer page (a fresh process each time) against the ``infer`` command."""
    env_roots = {"TPUCKPT_ROOTS": str(Path(saved_model).parent)}

    def run(*args) -> tuple[float, str]:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), **env_roots)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                             cwd=str(ROOT), timeout=900, check=False)
        elapsed = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"{args[:3]}: {out.stderr.strip()[-2000:]}")
        return elapsed, out.stdout

    cli_args = ("-m", "tpuckpt_viz", "infer", saved_model, "--format", "json")
    ratios, pages, clis, runs = [], [], [], []
    for _ in range(reps):
        cli_s, _ = run(*cli_args)
        _, out = run("-c", _PAGE_PROCESS, saved_model, str(ROOT))
        page = json.loads(out.strip().splitlines()[-1])
        ratios.append(page["page_s"] / cli_s)
        pages.append(page["page_s"])
        runs.append(page["run_s"])
        clis.append(cli_s)
    return {"ratio": statistics.median(ratios), "page_s": statistics.median(pages),
            "page_run_s": statistics.median(runs), "cli_s": statistics.median(clis)}


def run_page_benchmark(mode: str) -> dict:
    folder = tempfile.mkdtemp(prefix="tpuckpt-bench-page-")
    started = time.perf_counter()
    try:
        path = _json_child("--make-audio", folder, mode)["path"]
        size = AUDIO[mode]
        page = page_side_by_side(path, size["reps"])
        return {
            "page_vs_cli": round(page["ratio"], 3),
            "targets": {"page_vs_cli": 1.5},
            "seconds": {"page": round(page["page_s"], 2), "page_run": round(page["page_run_s"], 2),
                        "cli_infer_process": round(page["cli_s"], 2)},
            "inputs": {"mode": mode, "input_shape": [-1, size["samples"], 1],
                       "output_shape": [-1, size["frames"], size["notes"]], "batch": 4,
                       "repetitions": size["reps"]},
            "machine": _machine(),
            "wall_s": round(time.perf_counter() - started, 1),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------- main

def _machine() -> dict:
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import tensorflow as tf_module
        tf_version = tf_module.__version__
    except Exception:  # pragma: no cover
        tf_version = None
    return {"cpu_count": os.cpu_count(), "cpu": cpu, "numpy": np.__version__,
            "tensorflow": tf_version, "python": platform.python_version(),
            "platform": platform.platform()}


def run_benchmark(mode: str, keep: str | None = None) -> dict:
    size = SIZES[mode]
    reps = size["reps"]
    folder = keep or tempfile.mkdtemp(prefix="tpuckpt-bench-")
    started = time.perf_counter()
    try:
        if not (keep and Path(folder, "done.json").exists()):
            paths = _json_child("--make", folder, mode)
            if keep:
                Path(folder, "done.json").write_text(json.dumps(paths))
        else:
            paths = json.loads(Path(folder, "done.json").read_text())
            if "f32_4g" not in paths:  # inputs kept by an older version of this script
                paths.update(_json_child("--make-process-input", folder, mode))
                Path(folder, "done.json").write_text(json.dumps(paths))
        generated = time.perf_counter() - started
        _quiet_tf()

        a, b, bf16 = paths["f32_a"], paths["f32_b"], paths["bf16"]
        stats = side_by_side(reps, lambda: engine_stats(a), lambda: bare_read([a]))
        diff = side_by_side(reps, lambda: engine_diff(a, b), lambda: bare_read([a, b]))
        bf = side_by_side(reps, lambda: engine_stats(bf16), lambda: bare_read([bf16]))
        many = side_by_side(reps, lambda: engine_list(paths["many"]),
                            lambda: raw_list(paths["many"]))
        rss = _json_child("--rss", paths["big"])
        if rss["status"] != 0:
            raise RuntimeError(f"stats on the big checkpoint failed: {rss}")
        cli = cli_side_by_side(paths["f32_4g"], paths["many"], size["cli_reps"])
        listed = len(raw_list(paths["many"]))
        return {
            "stats_vs_read": round(stats["ratio"], 3),
            "diff_vs_read": round(diff["ratio"], 3),
            "peak_rss_mb_over_base": round(rss["peak_mb"] - rss["base_mb"], 1),
            "list_vs_raw": round(many["ratio"], 3),
            "bf16_stats_vs_read": round(bf["ratio"], 3),
            "list_process_vs_import_tf": round(cli["list_ratio"], 3),
            "stats_process_vs_read_process": round(cli["stats_ratio"], 3),
            "targets": {"stats_vs_read": 1.25, "diff_vs_read": 1.5,
                        "peak_rss_mb_over_base": 600, "list_vs_raw": 10,
                        "bf16_stats_vs_read": 1.5, "list_process_vs_import_tf": 0.3,
                        "stats_process_vs_read_process": 0.45},
            "seconds": {
                "stats": round(stats["engine_s"], 4), "read": round(stats["baseline_s"], 4),
                "diff": round(diff["engine_s"], 4), "read_both": round(diff["baseline_s"], 4),
                "bf16_stats": round(bf["engine_s"], 4), "bf16_read": round(bf["baseline_s"], 4),
                "list": round(many["engine_s"], 4), "list_raw": round(many["baseline_s"], 4),
                "cli_stats_process": round(cli["cli_s"], 3),
                "bare_read_process": round(cli["bare_s"], 3),
                "import_tensorflow_process": round(cli["import_s"], 3),
                "cli_list_process": round(cli["list_s"], 3),
                "generate_inputs": round(generated, 1),
            },
            "rss_mb": {"base": round(rss["base_mb"], 1), "peak": round(rss["peak_mb"], 1)},
            "inputs": {"mode": mode, "tensors": size["tensors"], "bytes": size["bytes"],
                       "process_stats_bytes": size["process_bytes"],
                       "big_tensor_bytes": size["big_bytes"], "list_entries": listed,
                       "repetitions": reps, "cli_repetitions": size["cli_reps"]},
            "machine": _machine(),
            "wall_s": round(time.perf_counter() - started, 1),
        }
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def remote_figures(quick: bool, before: str | None) -> int:
    """``--remote``: the gs:// figures of ``benchmarks/bench_remote.py``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_remote import run_remote

    print(json.dumps(run_remote("quick" if quick else "full", before), indent=1))
    return 0


# --------------------------------------------------------------------- --cluster (Dask)

def _make_dense_pair(folder: str, mode: str) -> dict:
    """The two float32 checkpoints of ``stats_vs_read`` / ``diff_vs_read`` only."""
    tf = _quiet_tf()
    size = SIZES[mode]
    paths = {"f32_a": f"{folder}/f32_a/ckpt", "f32_b": f"{folder}/f32_b/ckpt"}
    for path in paths.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    _dense(tf, paths["f32_a"], size["tensors"], size["bytes"], "float32", 1, twin=paths["f32_b"])
    return paths


def _process_cpu() -> float:
    """CPU seconds (user + system) of the calling process, threads included."""
    t = os.times()
    return t.user + t.system


def _cpu_seconds(cluster) -> float:
    """CPU seconds used so far by this process (None) or by all the cluster's workers."""
    if cluster is None:
        return _process_cpu()
    return sum(cluster.client.run(_process_cpu).values())


def cluster_benchmark(mode: str, keep: str | None = None) -> dict:
    """Throughput of ``stats`` and ``diff`` in-process and on local Dask clusters of 1 and 2
    worker processes, side by side in one run (each repetition runs all three), medians.

    The clusters are started once, before timing (their start is reported apart); every
    variant reads the same files from the page cache, after one warm-up, and the results are
    checked to be identical. ``per_worker_gb_s`` (stats bytes per CPU second of the one
    worker) gives the paper estimate of a 1 TB run on 32 workers that ``estimate`` spells out.
    """
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records
    from tpuckpt_viz.engine import cluster as dask_engine
    from tpuckpt_viz.engine.diff import diff_checkpoints
    from tpuckpt_viz.engine.stats import iter_stats

    size = SIZES[mode]
    reps = size["reps"]
    folder = keep or tempfile.mkdtemp(prefix="tpuckpt-bench-cluster-")
    started = time.perf_counter()
    clusters = {}
    try:
        done = Path(folder, "done-cluster.json")
        if keep and done.exists():
            paths = json.loads(done.read_text())
        else:
            paths = _json_child("--make-pair", folder, mode)
            if keep:
                done.write_text(json.dumps(paths))
        a, b = paths["f32_a"], paths["f32_b"]
        ckpt_a = open_checkpoint(a)
        nbytes = sum(e.nbytes for e in ckpt_a.entries.values())
        start_s = {}
        for n in (1, 2):
            t = time.perf_counter()
            clusters[n] = dask_engine.open_cluster(workers=n)
            start_s[f"workers_{n}"] = round(time.perf_counter() - t, 2)

        def stats(c):
            ckpt = open_checkpoint(a)
            names = {r["key"]: r["name"] for r in list_records(ckpt)}
            return list(iter_stats(ckpt, names, labels=names, cluster=c))

        def diff(c):
            return diff_checkpoints(open_checkpoint(a), open_checkpoint(b), cluster=c)

        variants = {"in_process": None, "workers_1": clusters[1], "workers_2": clusters[2]}
        times = {name: {"stats": [], "diff": [], "stats_cpu": []} for name in variants}
        reference = {}
        for name, c in variants.items():  # warm-up, and the same numbers everywhere
            got = (json.dumps(stats(c)), json.dumps(diff(c)))
            reference.setdefault("r", got)
            if got != reference["r"]:
                raise RuntimeError(f"{name} gives other numbers than in-process")
        for _ in range(reps):
            for name, c in variants.items():
                cpu = _cpu_seconds(c)
                times[name]["stats"].append(_timed(stats, c))
                times[name]["stats_cpu"].append(_cpu_seconds(c) - cpu)
                times[name]["diff"].append(_timed(diff, c))
        gb = nbytes / 1e9
        out = {}
        for name in variants:
            st, df, cpu = (statistics.median(times[name][k])
                           for k in ("stats", "diff", "stats_cpu"))
            out[name] = {"stats_s": round(st, 4), "diff_s": round(df, 4),
                         "stats_gb_s": round(gb / st, 3), "diff_gb_s": round(2 * gb / df, 3),
                         "stats_cpu_s": round(cpu, 4),
                         "stats_gb_per_cpu_s": round(gb / max(cpu, 1e-6), 3)}
        # CPU seconds, not wall time: on a shared machine a worker's wall time counts the
        # time other processes held its core; its CPU time is what a core of its own gives.
        per_worker = out["workers_1"]["stats_gb_per_cpu_s"]
        hours = 1000 / (32 * per_worker) / 3600
        return {
            "cluster": out,
            "speedup_2_over_1_worker": round(out["workers_1"]["stats_s"]
                                             / out["workers_2"]["stats_s"], 3),
            "per_worker_gb_s": per_worker,
            "estimate": {"tb": 1, "workers": 32, "hours": round(hours, 3),
                         "note": "1 TB / (32 x per_worker_gb_s), per_worker_gb_s = stats bytes "
                                 "per CPU second of one worker (reads from page cache); "
                                 "storage bandwidth per worker caps it (gs://)"},
            "cluster_start_s": start_s,
            "inputs": {"mode": mode, "tensors": size["tensors"], "bytes": nbytes,
                       "repetitions": reps},
            "machine": _machine(),
            "wall_s": round(time.perf_counter() - started, 1),
        }
    finally:
        for c in clusters.values():
            c.close()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--keep", metavar="DIR",
                        help="generate inputs into DIR once and reuse them (not removed)")
    parser.add_argument("--make", nargs=2, metavar=("DIR", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--make-process-input", nargs=2, metavar=("DIR", "MODE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--rss", metavar="PREFIX", help=argparse.SUPPRESS)
    parser.add_argument("--remote", action="store_true",
                        help="gs:// figures against a GCS emulator instead (bench_remote.py)")
    parser.add_argument("--before", metavar="DIR",
                        help="with --remote: also measure the code checked out in DIR")
    parser.add_argument("--cluster", action="store_true",
                        help="only the Dask figures: stats and diff in-process and on local "
                             "clusters of 1 and 2 workers")
    parser.add_argument("--make-pair", nargs=2, metavar=("DIR", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--page", action="store_true",
                        help="measure the Infer page against the infer command instead "
                             "(a long-audio model; about a minute per repetition)")
    parser.add_argument("--make-audio", nargs=2, metavar=("DIR", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_audio:
        print(json.dumps({"path": make_audio_model(*args.make_audio)}))
        return 0
    if args.page:
        print(json.dumps(run_page_benchmark("quick" if args.quick else "full"), indent=1))
        return 0
    if args.remote:
        return remote_figures(args.quick, args.before)
    if args.make_pair:
        print(json.dumps(_make_dense_pair(*args.make_pair)))
        return 0
    if args.cluster:
        result = cluster_benchmark("quick" if args.quick else "full", args.keep)
        print(json.dumps(result, indent=1))
        return 0
    if args.make:
        print(json.dumps(make_inputs(args.make[0], SIZES[args.make[1]])))
        return 0
    if args.make_process_input:
        folder, mode = args.make_process_input
        print(json.dumps(make_process_input(folder, SIZES[mode])))
        return 0
    if args.rss:
        print(json.dumps(peak_rss_child(args.rss)))
        return 0
    result = run_benchmark("quick" if args.quick else "full", args.keep)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
