"""Bad input, nothing lost (issue 6): every entry point against a corpus of odd and broken input.

Every CLI command (``list``, ``stats``, ``diff`` against itself, ``steps``, ``infer``) runs on
every entry, in process (fast) and, for a handful, as a real subprocess (no traceback, no
TensorFlow noise on the terminal). Each must exit 0 with sane output or exit 1 with one line
``error: ...`` and nothing on stdout. The Browse, Compare and Infer pages open every entry
through AppTest: ``st.error`` or a normal page, never an exception. Every file of every
checkpoint folder opened is hashed before and after: nothing may change or appear beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from apphelpers import COMPARE, INFER, open_app

from tpuckpt_viz.cli import commands as cli

ROOT = Path(__file__).resolve().parents[1]
HALF_PLUS_TWO = "serving_saved_model_half_plus_two_cpu/00000123"
# Shared folders the corpus opens (read in place, hashed before and after).
SHARED_USED = ("t5x_mtf_tiny_t5_PARTIAL", "lingvo_lenet_test_model_PARTIAL",
               "serving_bad_half_plus_two", "serving_session_bundle_half_plus_two",
               "serving_tf_text_regression", "tfdf_saved_model_adult_rf",
               "serving_saved_model_half_plus_two_cpu")
LONG_NAME = ("encoder/" + "very_long_layer_name_" * 20)[:300] + "/kernel"
HUGE_NAME = "block/" * 700 + "kernel"  # 4,206 characters
BAD_UTF8 = b"bad\xff\xfename/kernel"
BAD_UTF8_SHOWN = "bad\\xff\\xfename/kernel"  # how every output shows it


@dataclass
class Case:
    """One corpus entry: the path and what each command must do with it.

    ``expect`` maps a command to 0 (must work), 1 (must fail with one clear line) or None
    (either, as long as the output is sane). ``says`` maps a command to a text its error must
    contain. ``tensors`` are names to select on the Browse page.
    """

    id: str
    path: str
    expect: dict = field(default_factory=dict)
    says: dict = field(default_factory=dict)
    tensors: tuple = ()


ALL_FAIL = {"list": 1, "stats": 1, "diff": 1, "steps": 1, "infer": 1}
ALL_WORK = {"list": 0, "stats": 0, "diff": 0, "steps": 0}


def _save_raw(tf, prefix: Path, items: list[tuple[bytes | str, object]]) -> str:
    """Write a V2 bundle with exactly these keys (any bytes) through ``SaveV2``."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = [k.encode() if isinstance(k, str) else k for k, _ in items]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=tf.constant(names, dtype=tf.string),
                      shape_and_slices=tf.constant([""] * len(items)),
                      tensors=[tf.convert_to_tensor(v) for _, v in items])
    return str(prefix)


def _valid(tf, folder: Path, name: str = "ckpt") -> str:
    """A small ordinary tf.train.Checkpoint (one tensor big enough to truncate)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    ckpt = tf.train.Checkpoint(
        kernel=tf.Variable(rng.normal(size=(64, 64)).astype("float32"), name="dense/kernel"),
        bias=tf.Variable(np.zeros(64, np.float32), name="dense/bias"),
        global_step=tf.Variable(7, dtype=tf.int64, name="global_step"))
    return ckpt.write(str(folder / name))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def build_corpus(tf, root: Path, shared: Path) -> list[Case]:
    rng = np.random.default_rng(0)
    cases = [Case("missing_path", str(root / "missing" / "ckpt-1"), ALL_FAIL,
                  {"list": "does not exist"})]

    (root / "empty").mkdir()
    cases.append(Case("empty_folder", str(root / "empty"), ALL_FAIL, {"list": "empty"}))

    unrelated = root / "unrelated"
    (unrelated / "sub").mkdir(parents=True)
    (unrelated / "notes.txt").write_text("not a checkpoint\n")
    (unrelated / "photo.jpg").write_bytes(rng.bytes(2048))
    (unrelated / "sub" / "README.md").write_text("# hello\n")
    cases.append(Case("unrelated_files", str(unrelated), ALL_FAIL,
                      {"list": "no TensorFlow checkpoint"}))

    (root / "random_index").mkdir()
    (root / "random_index" / "x.index").write_bytes(rng.bytes(4096))
    cases.append(Case("random_index_folder", str(root / "random_index"), ALL_FAIL))
    cases.append(Case("random_index_file", str(root / "random_index" / "x.index"), ALL_FAIL))

    prefix = _valid(tf, root / "truncated_index")
    _truncate(Path(prefix + ".index"))
    cases.append(Case("truncated_index", prefix, ALL_FAIL))

    prefix = _valid(tf, root / "truncated_data")
    _truncate(Path(prefix + ".data-00000-of-00001"))
    # The object graph is past the cut too: names fall back to object paths ("kernel").
    cases.append(Case("truncated_data", prefix,
                      {"list": 0, "stats": 1, "diff": 1, "steps": 1, "infer": None},
                      {"stats": "truncated_data/ckpt"}, ("kernel",)))

    prefix = _valid(tf, root / "data_alone")
    os.remove(prefix + ".index")
    cases.append(Case("data_shard_without_index", prefix + ".data-00000-of-00001", ALL_FAIL,
                      {"list": ".index"}))

    prefix = _valid(tf, root / "via_data_file")
    cases.append(Case("path_to_data_file", prefix + ".data-00000-of-00001", ALL_WORK))

    stale = root / "stale_state"
    _valid(tf, stale, "ckpt-1")
    (stale / "checkpoint").write_text(
        'model_checkpoint_path: "/gone/elsewhere/ckpt-1"\n'
        'all_model_checkpoint_paths: "/gone/elsewhere/ckpt-7"\n'
        'all_model_checkpoint_paths: "/gone/elsewhere/ckpt-1"\n')
    cases.append(Case("state_file_naming_gone_paths", str(stale), ALL_WORK))

    (root / "gone_only").mkdir()
    (root / "gone_only" / "checkpoint").write_text('model_checkpoint_path: "/gone/ckpt-1"\n')
    cases.append(Case("state_file_only_gone_paths", str(root / "gone_only"), ALL_FAIL,
                      {"list": "no TensorFlow checkpoint"}))

    garbage = root / "garbage_state"
    _valid(tf, garbage, "ckpt-3")
    (garbage / "checkpoint").write_bytes(b"\x00\xff garbage {{{ " + rng.bytes(512))
    cases.append(Case("garbage_state_file", str(garbage), ALL_WORK))

    (root / "garbage_only").mkdir()
    (root / "garbage_only" / "checkpoint").write_bytes(rng.bytes(300))
    cases.append(Case("garbage_state_file_only", str(root / "garbage_only"), ALL_FAIL))
    cases.append(Case("garbage_state_file_itself", str(root / "garbage_only" / "checkpoint"),
                      ALL_FAIL))

    prefix = _save_raw(tf, root / "non_utf8" / "ckpt",
                       [(BAD_UTF8, np.arange(3, dtype=np.float32)),
                        (b"dense/kernel", np.ones((2, 2), np.float32))])
    cases.append(Case("non_utf8_variable_name", prefix, {**ALL_WORK, "infer": None},
                      tensors=(BAD_UTF8_SHOWN, "dense/kernel")))

    prefix = _save_raw(tf, root / "long_name" / "ckpt",
                       [(LONG_NAME, np.ones((2, 3), np.float32)),
                        (HUGE_NAME, np.full((4,), 2.0, np.float32))])
    cases.append(Case("very_long_variable_names", prefix, {**ALL_WORK, "infer": None},
                      tensors=(LONG_NAME, HUGE_NAME)))

    prefix = _save_raw(tf, root / "zero_size" / "ckpt",
                       [("empty/kernel", np.zeros((0, 3), np.float32)),
                        ("empty/bias", np.zeros((0,), np.float32))])
    cases.append(Case("zero_size_tensor", prefix, {**ALL_WORK, "infer": None},
                      tensors=("empty/kernel", "empty/bias")))

    prefix = _save_raw(tf, root / "scalar_string" / "ckpt",
                       [("vocab/file", tf.constant(b"vocab.txt \xff\xfe")),
                        ("w", np.ones((2,), np.float32))])
    cases.append(Case("scalar_string_tensor", prefix, {**ALL_WORK, "infer": None},
                      tensors=("vocab/file", "w")))

    (root / "foreign").mkdir()
    (root / "foreign" / "model.keras").write_bytes(b"PK\x03\x04" + rng.bytes(100))
    (root / "foreign" / "model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + rng.bytes(100))
    cases.append(Case("keras_archive", str(root / "foreign" / "model.keras"), ALL_FAIL,
                      {"list": "Keras"}))
    cases.append(Case("keras_weights_h5", str(root / "foreign" / "model.weights.h5"), ALL_FAIL,
                      {"list": "Keras"}))
    orbax = root / "orbax"
    (orbax / "d").mkdir(parents=True)
    (orbax / "_CHECKPOINT_METADATA").write_text("{}")
    (orbax / "manifest.ocdbt").write_bytes(rng.bytes(64))
    cases.append(Case("orbax_folder", str(orbax), ALL_FAIL, {"list": "Orbax"}))

    # The shared ones, read in place.
    cases += [
        Case("t5x_missing_data_shard", str(shared / "t5x_mtf_tiny_t5_PARTIAL"),
             {"list": 0, "stats": 1, "diff": 1, "steps": 1, "infer": None},
             {"stats": "model.ckpt-0.data-00001-of-00002"}),
        Case("lingvo_index_only", str(shared / "lingvo_lenet_test_model_PARTIAL"),
             {"list": 0, "stats": 1, "diff": 1, "steps": 1, "infer": None},
             {"stats": "lenet_test_model.data-00000-of-00001"}),
        Case("legacy_v1_file", str(shared / "serving_bad_half_plus_two" / "00000123" / "export"),
             {"list": 0, "stats": 0, "diff": 0, "steps": 0, "infer": None}),
        Case("legacy_v1_folder", str(shared / "serving_bad_half_plus_two" / "00000123"),
             {"infer": None}),
        Case("legacy_v1_session_bundle",
             str(shared / "serving_session_bundle_half_plus_two" / "00000123"), {"infer": None}),
        # Its variables/ checkpoint holds the object graph alone: Browse says so.
        Case("saved_model_without_pb", str(shared / "serving_tf_text_regression" / "01"),
             {**ALL_WORK, "infer": 1}, {"infer": "saved_model.pb", "browse": "no variables"}),
        Case("saved_model_custom_ops", str(shared / "tfdf_saved_model_adult_rf"),
             {**ALL_WORK, "infer": 1}),
    ]
    return cases


# -- fixtures --------------------------------------------------------------------------------

def _hash_tree(paths) -> dict[str, str]:
    """sha256 of every file under each of ``paths``, and every folder listed ('dir')."""
    out = {}
    for top in paths:
        top = Path(top)
        if not top.exists():
            out[str(top)] = "absent"
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            out[dirpath] = "dir"
            for name in filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    out[p] = "link:" + os.readlink(p)
                    continue
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                out[p] = h.hexdigest()
    return out


@pytest.fixture(scope="module")
def corpus(tf, shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(tf, root, shared)
    watched = [root] + [shared / name for name in SHARED_USED]
    return root, cases, watched, _hash_tree(watched)


CASE_IDS = [
    "missing_path", "empty_folder", "unrelated_files", "random_index_folder",
    "random_index_file", "truncated_index", "truncated_data", "data_shard_without_index",
    "path_to_data_file", "state_file_naming_gone_paths", "state_file_only_gone_paths",
    "garbage_state_file", "garbage_state_file_only", "garbage_state_file_itself",
    "non_utf8_variable_name", "very_long_variable_names", "zero_size_tensor",
    "scalar_string_tensor", "keras_archive", "keras_weights_h5", "orbax_folder",
    "t5x_missing_data_shard", "lingvo_index_only", "legacy_v1_file", "legacy_v1_folder",
    "legacy_v1_session_bundle", "saved_model_without_pb", "saved_model_custom_ops",
]


def _case(corpus, case_id: str) -> Case:
    return next(c for c in corpus[1] if c.id == case_id)


def test_case_list_is_complete(corpus):
    assert [c.id for c in corpus[1]] == CASE_IDS


# -- the command line ------------------------------------------------------------------------

def _strict_json(text: str):
    def refuse(token):
        raise AssertionError(f"JSON output holds {token}")

    return json.loads(text, parse_constant=refuse)


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code: int, out: str, err: str, what: str) -> str:
    assert code == 1, (what, code, out[:300], err[:300])
    assert out == "", (what, out[:300])
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (what, err)
    assert "Traceback" not in err
    # The catch-all for bugs says "unexpected: please report it": no corpus entry may need it.
    assert "unexpected" not in err, (what, err)
    return lines[0]


COMMANDS = ("list", "stats", "diff", "steps", "infer")


def _argv(command: str, path: str) -> list[str]:
    if command == "diff":
        return ["diff", path, path, "--format", "json"]
    return [command, path, "--format", "json"]


def _check_output(command: str, out: str, what: str) -> None:
    data = _strict_json(out)
    if command == "infer":
        assert isinstance(data, dict) and "device" in data and "outputs" in data, what
        return
    assert isinstance(data, list), what
    if command == "list":
        assert data and all({"key", "name", "kind", "shape", "dtype"} <= set(r) for r in data)
    if command == "stats":
        assert data and all({"key", "min", "max", "nan"} <= set(r) for r in data)
    if command == "diff":
        assert data and {r["status"] for r in data} == {"same"}, what  # against itself


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_cli_commands(corpus, case_id, capsys):
    case = _case(corpus, case_id)
    for command in COMMANDS:
        what = f"{command} {case.id}"
        code, out, err = run_cli(capsys, _argv(command, case.path))
        expected = case.expect.get(command, 0 if command != "infer" else None)
        if expected == 0 or (expected is None and code == 0):
            assert code == 0, (what, err)
            _check_output(command, out, what)
        else:
            line = assert_clean_failure(code, out, err, what)
            if command in case.says:
                assert case.says[command] in line, (what, line)


def test_non_utf8_name_is_shown_escaped_and_read(corpus, capsys):
    path = _case(corpus, "non_utf8_variable_name").path
    code, out, err = run_cli(capsys, ["stats", path, "--format", "json"])
    assert code == 0, err
    stats = {r["key"]: r for r in _strict_json(out)}
    assert stats[BAD_UTF8_SHOWN]["name"] == BAD_UTF8_SHOWN
    assert (stats[BAD_UTF8_SHOWN]["min"], stats[BAD_UTF8_SHOWN]["max"]) == (0, 2)  # arange(3)


def test_cli_table_and_csv_formats(corpus, capsys):
    """The other formats cope with the odd names and values too."""
    for case_id in ("non_utf8_variable_name", "very_long_variable_names", "zero_size_tensor",
                    "scalar_string_tensor", "legacy_v1_file"):
        path = _case(corpus, case_id).path
        for fmt in ("table", "csv"):
            for command in ("list", "stats"):
                code, out, err = run_cli(capsys, [command, path, "--format", fmt])
                assert code == 0 and out.strip(), (case_id, fmt, command, err)


def test_infer_right_input_works(shared, capsys):
    """The control for the rows below: the right input gives the known outputs."""
    code, out, err = run_cli(capsys, ["infer", str(shared / HALF_PLUS_TWO), "--input",
                                      "x=[[1.0],[2.0],[5.0]]", "--format", "json"])
    assert code == 0, err
    assert _strict_json(out)["outputs"]["y"] == [[2.5], [3.0], [4.5]]


@pytest.mark.parametrize("bad", ['x=[["a"],["b"]]', "x=__import__('os')", "y=[[1.0]]",
                                 "x=/nonexistent/input.npy", "x", 'x={"a": 1}'])
def test_infer_rejects_wrong_dtype_and_names(shared, capsys, bad):
    code, out, err = run_cli(capsys, ["infer", str(shared / HALF_PLUS_TWO), "--input", bad,
                                      "--format", "json"])
    assert_clean_failure(code, out, err, bad)


# (a flat list such as [1.0, 2.0] is the column [[1.0], [2.0]] for an input declared [-1, 1])
@pytest.mark.parametrize("bad", ["x=[[[1.0]]]", "x=[[1.0, 2.0]]", "x=1.0"])
def test_infer_rejects_wrong_shape(shared, capsys, bad):
    """The signature says x is float32 [-1, 1]: other shapes get one clear line."""
    code, out, err = run_cli(capsys, ["infer", str(shared / HALF_PLUS_TWO), "--input", bad,
                                      "--format", "json"])
    line = assert_clean_failure(code, out, err, bad)
    assert "shape" in line


def test_real_processes_print_one_line(corpus, shared):
    """A few real runs: exit status, one ``error:`` line, no traceback, no TensorFlow noise."""
    runs = [
        (["list", _case(corpus, "random_index_file").path], 1),
        (["stats", _case(corpus, "t5x_missing_data_shard").path], 1),
        (["steps", _case(corpus, "empty_folder").path], 1),
        (["list", _case(corpus, "non_utf8_variable_name").path], 0),
        (["infer", _case(corpus, "saved_model_custom_ops").path], 1),
    ]
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the tool itself must keep TensorFlow quiet
    for argv, expected in runs:
        proc = subprocess.run([sys.executable, "-m", "tpuckpt_viz", *argv], cwd=ROOT, env=env,
                              capture_output=True, timeout=300)
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == expected, (argv, err)
        assert "Traceback" not in err
        for noise in ("oneDNN", "absl::InitializeLog", "cuda", "WARNING", "ERROR:tensorflow"):
            assert noise not in err, (argv, err)
        if expected == 1:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
            assert proc.stdout == b""
        else:
            assert proc.stdout.strip() and err == ""


# -- the pages -------------------------------------------------------------------------------

_RAW_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception|Interrupt|Exit)\b")


def assert_clear_errors(at, what: str) -> None:
    """Every st.error is one of ours (a UserError), not an exception's name and text."""
    for e in at.error:
        assert not _RAW_EXCEPTION.match(e.value), (what, e.value)
        assert "Traceback" not in e.value and "\n" not in e.value.strip(), (what, e.value)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_browse_page(corpus, app_env, case_id):
    case = _case(corpus, case_id)
    at = open_app(ckpt=case.path)
    assert_clear_errors(at, case.id)
    if case.expect.get("list") == 1:
        assert at.error, case.id
        assert not at.metric
        return
    assert at.metric and not [e.value for e in at.error if "outside" in e.value]
    if "browse" in case.says:  # nothing to pick: the page says why, and no error
        assert not at.error, (case.id, [e.value for e in at.error])
        assert any(case.says["browse"] in i.value for i in at.info), [i.value for i in at.info]
        return
    names = at.selectbox(key="tensor").options
    if case.expect.get("stats") == 1:
        # Reading fails: each tensor selected shows one clear error, the listing stays (a few
        # tensors suffice: each rerun costs a fraction of a second). Some tensors may still be
        # readable (in the shard that is there, before the cut), so the check is on the
        # tensors that cannot be read: the case's own, else any selected that shows an error.
        failed = []
        for name in list(case.tensors) or names[:: max(1, len(names) // 4)][:5]:
            at.selectbox(key="tensor").set_value(name)
            at.run()
            assert not at.exception, (case.id, name, [e.value for e in at.exception])
            assert_clear_errors(at, case.id)
            assert at.metric and len(at.error) <= 1, (case.id, name, [e.value for e in at.error])
            if at.error:
                failed.append(name)
                if "stats" in case.says:
                    assert case.says["stats"] in at.error[0].value, (name, at.error[0].value)
        assert failed == (list(case.tensors) or failed) and failed, (case.id, failed)
        return
    wanted = [n for n in case.tensors if n in names]
    assert wanted == list(case.tensors), (case.tensors, names)
    wanted = wanted or names[:3]
    for name in wanted:
        at.selectbox(key="tensor").set_value(name)
        at.run()
        assert not at.exception, (case.id, name, [e.value for e in at.exception])
        assert not at.error, (case.id, name, [e.value for e in at.error])


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_compare_page(corpus, app_env, case_id):
    case = _case(corpus, case_id)
    at = open_app(COMPARE, a=case.path, b=case.path, run=case.path)
    assert_clear_errors(at, case.id)
    errors = [e.value for e in at.error]
    if case.expect.get("list") == 1:
        # B (the current checkpoint) cannot be opened: one line that says so, and the page
        # stops there (no pair, no run).
        assert len(errors) == 1 and not at.metric, (case.id, errors)
        if "list" in case.says:
            assert case.says["list"] in errors[0], (case.id, errors)
        return
    # A = B: the page does not compare a checkpoint with itself; it says so and reads nothing.
    assert not errors and not at.metric, (case.id, errors)
    assert any("A and B are the same checkpoint" in i.value for i in at.info), case.id
    if case.expect.get("diff") == 1:
        # Against another checkpoint (matched by raw key), reading fails: one clear line
        # that names the damaged file.
        at.checkbox(key="cmp_by_key").check()
        at.text_input(key="cmp_a").set_value(_case(corpus, "path_to_data_file").path)
        at.run()
        assert not at.exception, (case.id, [e.value for e in at.exception])
        assert_clear_errors(at, case.id)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and case.says["stats"] in errors[0], (case.id, errors)


def _infer_page_exists() -> bool:
    page = ROOT / "tpuckpt_viz" / "dashboard" / INFER
    return page.is_file() and page.stat().st_size > 0


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_infer_page(corpus, app_env, case_id):
    """No corpus entry runs (none fits the demo model builder): each gets a clear st.error,
    before or after pressing Run."""
    assert _infer_page_exists(), "tpuckpt_viz/dashboard/app_pages/infer.py is not written yet"
    case = _case(corpus, case_id)
    at = open_app(INFER, ckpt=case.path)
    assert_clear_errors(at, case.id)
    run = [b for b in at.button if b.label == "Run"]
    if run:
        run[0].click()
        at.run()
        assert not at.exception, (case.id, [e.value for e in at.exception])
        assert_clear_errors(at, case.id)
    assert at.error, case.id
    assert not [m for m in at.metric if m.label == "Device"], case.id  # nothing ran


# -- nothing lost ----------------------------------------------------------------------------

def test_nothing_changed_or_appeared(corpus):
    """Runs last in this file: every file opened is byte-identical and nothing new is there."""
    root, cases, watched, before = corpus
    after = _hash_tree(watched)
    assert sorted(set(after) - set(before)) == []
    assert sorted(set(before) - set(after)) == []
    changed = [p for p in before if before[p] != after[p]]
    assert changed == []
