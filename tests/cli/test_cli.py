"""The command line (docs/reference.md): formats, strict JSON, errors, quiet start-up.

A few commands run as real ``python -m tpuckpt_viz`` subprocesses (exit status, stderr free of
TensorFlow's start-up noise, no traceback); the rest call ``cli.main`` in-process, which is the
same code without the ~4 s TensorFlow import per call.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tpuckpt_viz.cli import commands as cli

ROOT = Path(__file__).resolve().parents[2]
V = "/.ATTRIBUTES/VARIABLE_VALUE"
NOISE = ("onednn", "absl::initializelog", "cuda", "traceback", "warning", "tensorflow/core",
         "i0000", "e0000", "w0000")


def strict_json(text: str):
    """json.loads that rejects NaN, Infinity and -Infinity."""
    def refuse(constant):
        raise ValueError(f"JSON holds {constant}")

    return json.loads(text, parse_constant=refuse)


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "tpuckpt_viz", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def assert_quiet(stderr: str) -> None:
    low = stderr.lower()
    for word in NOISE:
        assert word not in low, f"{word!r} in stderr:\n{stderr}"


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def nan_ckpt(tf, tmp_path_factory) -> str:
    """``partial`` has NaN, +Inf and -Inf among finite values; ``all_nan`` has nothing finite."""
    partial = np.array([1.0, np.nan, 3.0, np.inf, -2.0, 0.0, -np.inf], np.float32)
    ckpt = tf.train.Checkpoint(partial=tf.Variable(partial),
                               all_nan=tf.Variable(np.full((2, 2), np.nan, np.float32)),
                               step=tf.Variable(7, dtype=tf.int64, name="global_step"))
    return ckpt.write(str(tmp_path_factory.mktemp("nan") / "ckpt-7"))


@pytest.fixture(scope="module")
def pair(tf, tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("clipair")
    w = np.arange(6, dtype=np.float32)
    a = tf.train.Checkpoint(w=tf.Variable(w), gone=tf.Variable([1.0])).write(str(folder / "a"))
    b = tf.train.Checkpoint(w=tf.Variable(2 * w), new=tf.Variable([1.0])).write(str(folder / "b"))
    return a, b


# ------------------------------------------------------------------- subprocesses

def test_list_json_subprocess(shared):
    proc = run_cli("list", shared / "t2t_transformer_test_ckpt", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    records = strict_json(proc.stdout)
    assert len(records) == 250
    assert list(records[0]) == list(cli.LIST_COLUMNS)
    step = next(r for r in records if r["key"] == "global_step")
    assert (step["dtype"], step["kind"], step["shape"]) == ("int64", "counter", [])


def test_stats_json_subprocess_has_no_nan(nan_ckpt):
    proc = run_cli("stats", nan_ckpt, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert_quiet(proc.stderr)
    assert "NaN" not in proc.stdout and "Infinity" not in proc.stdout
    records = {r["name"]: r for r in strict_json(proc.stdout)}
    assert list(next(iter(records.values()))) == list(cli.STATS_COLUMNS)
    partial = records["partial"]
    assert (partial["min"], partial["max"], partial["nan"], partial["inf"]) == (-2.0, 3.0, 1, 2)
    assert partial["mean"] == pytest.approx(0.5) and partial["zeros"] == pytest.approx(1 / 7)
    all_nan = records["all_nan"]
    assert all_nan["min"] is None and all_nan["l2"] is None and all_nan["nan"] == 4


def test_diff_csv_subprocess(pair):
    a, b = pair
    proc = run_cli("diff", a, b, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert_quiet(proc.stderr)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert list(rows[0]) == list(cli.DIFF_COLUMNS)
    status = {r["name"]: r["status"] for r in rows}
    assert {k: status[k] for k in ("gone", "new")} == {"gone": "removed", "new": "added"}
    w = next(r for r in rows if r["key_a"] == "w" + V)
    assert w["status"] == "changed" and float(w["rel_change"]) == pytest.approx(1.0)
    assert w["shape_a"] == "[6]"


def test_steps_table_subprocess(shared):
    proc = run_cli("steps", shared / "tfx_chicago_taxi_estimator", "--match",
                   "hiddenlayer_0/kernel$")
    assert proc.returncode == 0, proc.stderr
    assert_quiet(proc.stderr)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == list(cli.STEPS_TABLE)
    assert [ln.split()[0] for ln in lines[1:]] == ["0", "999", "1000"]
    # not a terminal: whole values, one line per row (the checkpoint path is not cut)
    assert all(ln.rstrip().endswith(f"model.ckpt-{s}") for ln, s in zip(lines[1:],
                                                                      ("0", "999", "1000")))


def test_demo_subprocess(tmp_path):
    target = tmp_path / "demo_run"
    proc = run_cli("demo", target, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_quiet(proc.stderr)
    assert proc.stdout.strip() == str(target)
    assert (target / "checkpoint").is_file() and (target / "ckpt-300.index").is_file()


def test_error_is_one_line_subprocess(tmp_path):
    proc = run_cli("list", tmp_path / "no" / "such" / "ckpt")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "does not exist" in lines[0]
    assert_quiet(proc.stderr)


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["list"], ["list", "x", "--format", "xml"]])
def test_bad_usage_exits_2_subprocess(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr


# -------------------------------------------------------------------- in-process

@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_list_formats(capsys, shared, fmt):
    status, out, err = in_process(capsys, "list", shared / "tfx_chicago_taxi_estimator",
                                  "--format", fmt)
    assert status == 0 and err == ""
    if fmt == "json":
        records = strict_json(out)
    elif fmt == "csv":
        records = list(csv.DictReader(io.StringIO(out)))
    else:
        lines = out.splitlines()
        assert lines[0].split() == list(cli.LIST_TABLE)
        records = lines[1:]
    assert len(records) == 60


def test_list_default_format_is_table(capsys, shared):
    status, out, _ = in_process(capsys, "list", shared / "tf2onnx_regression" / "checkpoint")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("name") and lines[0].rstrip().endswith("key") and len(lines) == 3


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_stats_formats(capsys, nan_ckpt, fmt):
    status, out, err = in_process(capsys, "stats", nan_ckpt, "--match", "partial|all_nan",
                                  "--format", fmt)
    assert status == 0 and err == ""
    if fmt == "json":
        assert len(strict_json(out)) == 2
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [r["name"] for r in rows] == ["all_nan", "partial"]
        assert rows[0]["min"] == "" and rows[0]["nan"] == "4"
    else:
        assert len(out.splitlines()) == 3 and "nan" not in out.split("\n", 1)[1].split()


def test_stats_on_bf16_json(capsys, bf16_ckpt):
    prefix, values = bf16_ckpt
    status, out, _ = in_process(capsys, "stats", prefix, "--format", "json")
    assert status == 0
    records = {r["name"]: r for r in strict_json(out)}
    bf16 = values["bf16"].astype(np.float64)
    assert records["bf16"]["dtype"] == "bfloat16"
    assert records["bf16"]["max"] == pytest.approx(bf16.max())
    assert records["text"]["min"] is None and records["flag"]["mean"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_diff_formats(capsys, pair, fmt):
    a, b = pair
    status, out, err = in_process(capsys, "diff", a, b, "--by", "key", "--kind", "weight",
                                  "--format", fmt)
    assert status == 0 and err == ""
    if fmt == "json":
        rows = strict_json(out)
        assert {r["status"] for r in rows} == {"changed", "added", "removed"}
        assert all(list(r) == list(cli.DIFF_COLUMNS) for r in rows)
    elif fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(out)))) == 3
    else:
        assert len(out.splitlines()) == 4


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_steps_formats(capsys, demo_run, fmt):
    status, out, err = in_process(capsys, "steps", demo_run, "--match", "^dense/kernel$",
                                  "--format", fmt)
    assert status == 0 and err == ""
    # the demo saves with CheckpointManager(checkpoint_number=step): files are named by step
    saved = sorted(int(p.name[len("ckpt-"):-len(".index")]) for p in demo_run.glob("ckpt-*.index"))
    assert len(saved) >= 3 and saved[0] == 0
    if fmt == "json":
        rows = strict_json(out)
        assert [r["step"] for r in rows] == saved
        assert rows[0]["delta_l2"] is None and rows[0]["update_ratio"] is None
        assert all(list(r) == list(cli.STEPS_COLUMNS) for r in rows)
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert rows[0]["delta_l2"] == "" and len(rows) == len(saved)
    else:
        lines = out.splitlines()
        assert len(lines) == len(saved) + 1
        assert [int(ln.split()[0]) for ln in lines[1:]] == saved


def test_steps_json_with_nan_is_strict(capsys, tf, tmp_path):
    for i, w in enumerate(([1.0, 2.0], [np.nan, 2.0], [1.0, np.inf])):
        tf.train.Checkpoint(w=tf.Variable(np.array(w, np.float32))).write(
            str(tmp_path / f"ckpt-{i}"))
    status, out, _ = in_process(capsys, "steps", tmp_path, "--format", "json")
    assert status == 0
    rows = [r for r in strict_json(out) if r["name"] == "w"]
    assert [(r["nan"], r["inf"]) for r in rows] == [(0, 0), (1, 0), (0, 1)]


@pytest.mark.parametrize("args,words", [
    (["stats", "{path}", "--match", "("], ["regular expression"]),
    (["diff", "{path}", "/no/such/ckpt"], ["does not exist"]),
    (["steps", "/no/such/run"], ["does not exist"]),
    (["list", "{empty}"], ["empty"]),
])
def test_errors_in_process(capsys, shared, tmp_path, args, words):
    path = shared / "tf2onnx_regression" / "checkpoint"
    status, out, err = in_process(capsys, *[a.format(path=path, empty=tmp_path) for a in args])
    assert status == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    for word in words:
        assert word in err


def test_unreadable_tensor_is_an_error_not_a_traceback(capsys, shared):
    status, _, err = in_process(capsys, "stats", shared / "t5x_mtf_tiny_t5_PARTIAL")
    assert status == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert "model.ckpt-0.data-00001-of-00002" in err


def test_list_v1_folder(capsys, shared):
    status, out, _ = in_process(capsys, "list", shared / "serving_bad_half_plus_two" / "00000123",
                                "--format", "json")
    assert status == 0
    assert sorted(r["key"] for r in strict_json(out)) == ["Variable", "Variable_1"]


def test_demo_in_process_reuses_a_complete_run(capsys, demo_run):
    status, out, _ = in_process(capsys, "demo", demo_run)
    assert status == 0 and out.strip() == str(demo_run)


def test_demo_default_folder_is_the_isolated_one():
    # env_isolation points TPUCKPT_DEMO_DIR at a tmp folder; never the real home cache
    from tpuckpt_viz import config

    assert "pytest" in str(config.demo_dir()) or "tmp" in str(config.demo_dir())


# ------------------------------------------------------------- tables and progress

def test_table_columns_hold_the_contract_fields():
    for table, contract in ((cli.LIST_TABLE, cli.LIST_COLUMNS), (cli.STATS_TABLE,
                            cli.STATS_COLUMNS), (cli.DIFF_TABLE, cli.DIFF_COLUMNS),
                            (cli.STEPS_TABLE, cli.STEPS_COLUMNS)):
        assert sorted(table) == sorted(contract)
        assert table[-1].startswith(("key", "checkpoint")) and "name" in table[:2]


def test_table_wraps_to_width_and_cuts_nothing():
    from tpuckpt_viz.cli.output import write

    key = "model/layer_with_weights-0/" * 6 + "kernel/.ATTRIBUTES/VARIABLE_VALUE"
    records = [{"key": key, "name": "dense/kernel", "shape": [1024, 4096], "l2": 1.5}]
    buf = io.StringIO()
    write(records, "table", ["key", "name", "shape", "l2"], buf,
          table_columns=["name", "shape", "l2", "key"], width=60)
    lines = buf.getvalue().splitlines()
    assert max(len(ln) for ln in lines) <= 60 and len(lines) > 3
    assert lines[0].split() == ["name", "shape", "l2", "key"]
    # the key, folded over several lines of its cell, is all there
    assert "".join(ln.split()[-1] for ln in lines[2:]) == key


def test_numbers_and_short_words_are_not_folded_when_they_fit():
    from tpuckpt_viz.cli.output import write

    records = [{"name": "encoder/layer_" + "x" * 60, "kind": "weight", "l2": 123.456789,
                "key": "k/" * 40}]
    buf = io.StringIO()
    write(records, "table", ["name", "kind", "l2", "key"], buf, width=60)
    lines = buf.getvalue().splitlines()
    assert max(len(ln) for ln in lines) <= 60
    assert "weight" in lines[2].split() and "123.457" in lines[2].split()
    assert not any("123.457" in ln for ln in lines[3:])


def test_table_to_a_pipe_keeps_each_row_on_one_line():
    from tpuckpt_viz.cli.output import write

    long = "x" * 500
    buf = io.StringIO()  # not a terminal
    write([{"name": long, "key": "k"}], "table", ["key", "name"], buf,
          table_columns=["name", "key"])
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].split() == [long, "k"]


def test_infer_table_shows_all_60_numbers():
    from tpuckpt_viz.cli.output import write_object

    values = [round(0.001 * i + 1.5, 4) for i in range(60)]
    result = {"device": "/device:CPU:0", "outputs": {"output_0": [values]}, "latency_ms": 3.5,
              "restore": None}
    for width in (50, None):
        buf = io.StringIO()
        write_object(result, "table", buf, width=width)
        text = buf.getvalue()
        value_cells = "".join(ln[ln.index("outputs.output_0"):].split(None, 1)[-1]
                              if "outputs.output_0" in ln else ln.strip()
                              for ln in text.splitlines()
                              if "outputs.output_0" in ln or ln.startswith(" "))
        assert json.loads(value_cells) == [values], text
    buf = io.StringIO()
    write_object(result, "csv", buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["field"] for r in rows] == ["device", "outputs", "latency_ms", "restore"]
    assert json.loads(rows[1]["value"]) == {"output_0": [values]}


@pytest.mark.parametrize("command", ["stats", "steps"])
def test_catastrophic_pattern_returns_at_once(capsys, tf, tmp_path, command):
    import time

    long_name = "a" * 5000
    for i in range(2):
        tf.train.Checkpoint(**{long_name: tf.Variable([float(i)])}).write(
            str(tmp_path / f"ckpt-{i}"))
    target = tmp_path / "ckpt-1" if command == "stats" else tmp_path
    start = time.monotonic()
    status, out, err = in_process(capsys, command, target, "--match", "(.*.*.*)*!",
                                  "--format", "json")
    assert time.monotonic() - start < 10
    assert status == 0, err
    assert strict_json(out) == []
    status, out, err = in_process(capsys, command, target, "--match", "a{5}",
                                  "--format", "json")
    assert status == 0 and len(strict_json(out)) == (1 if command == "stats" else 2)


@pytest.mark.parametrize("pattern,word", [("(?<=a)b", "not supported"), ("(", "missing )")])
def test_unsupported_pattern_is_one_line(capsys, shared, pattern, word):
    path = shared / "tf2onnx_regression" / "checkpoint"
    status, out, err = in_process(capsys, "stats", path, "--match", pattern)
    assert status == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: --match") and word in err


def test_progress_says_checkpoints_for_steps(shared):
    env_run = run_cli_env({"TPUCKPT_PROGRESS": "always"}, "steps",
                          shared / "tfx_chicago_taxi_estimator", "--match", "hiddenlayer_0/kernel$")
    assert env_run.returncode == 0, env_run.stderr
    assert "3/3 checkpoints" in env_run.stderr
    proc = run_cli("stats", shared / "tf2onnx_regression" / "checkpoint", "--progress", "always")
    assert proc.returncode == 0 and "2/2 tensors" in proc.stderr
    quiet = run_cli("stats", shared / "tf2onnx_regression" / "checkpoint")
    assert quiet.stderr == ""  # auto: stderr is not a terminal here


def test_progress_closes_its_line_when_the_work_fails(shared):
    proc = run_cli("stats", shared / "t5x_mtf_tiny_t5_PARTIAL", "--progress", "always")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert "tensors" in lines[0] and "/105 tensors" in lines[0]
    assert lines[-1].startswith("error: ") and "missing data file" in lines[-1] and len(lines) == 2


def test_bad_progress_setting_is_one_line(shared):
    proc = run_cli_env({"TPUCKPT_PROGRESS": "sometimes"}, "stats",
                       shared / "tf2onnx_regression" / "checkpoint")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: TPUCKPT_PROGRESS='sometimes' is not valid: it takes "
                                   "one of auto, always, never")


def run_cli_env(extra: dict, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "tpuckpt_viz", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_tensorflow_is_imported_quietly_everywhere():
    """TensorFlow prints its start-up banner to fd 2 on its first import, protos included:
    every ``tensorflow`` import in the package comes after ``tf()`` (tfcompat's quiet import)
    in the same function. Static, so that a new lazy import cannot slip past the quiet-stderr
    tests above by being on a path they do not take."""
    import ast

    bad = []
    for path in sorted((ROOT / "tpuckpt_viz").rglob("*.py")):
        if path.name == "tfcompat.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef,
                                                                  ast.AsyncFunctionDef))]:
            quiet_at = min((n.lineno for n in ast.walk(func) if isinstance(n, ast.Call)
                            and getattr(n.func, "id", getattr(n.func, "attr", "")) == "tf"),
                           default=None)
            for node in ast.walk(func):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                         [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                if any(n.split(".")[0] == "tensorflow" for n in names) and (
                        quiet_at is None or quiet_at > node.lineno):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"tensorflow imported before tf() (tpuckpt_viz.tfcompat): {bad}"
