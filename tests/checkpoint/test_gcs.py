"""``gs://`` against a GCS emulator (fake-gcs-server) behind a loopback proxy (tests/gcsemu.py).

Real checkpoints, a real run and a real SavedModel are uploaded to the emulator; ``list``,
``stats``, ``diff``, ``steps``, ``infer`` and the pages run on the ``gs://`` paths and must
give what the same files give read locally. The proxy counts requests and bytes (fetch only
what is needed), and answers 401 / 403 for two buckets: the four failures (no network, no
credentials, denied, missing) must each be a different clear error within 10 s.
TensorFlow's own ``gs://`` filesystem (SavedModel inference) reaches the emulator through the
proxy's CONNECT tunnel, with a throwaway certificate trusted via ``CURL_CA_BUNDLE``.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from apphelpers import BROWSE, COMPARE, open_app

from tpuckpt_viz.checkpoint import remote
from tpuckpt_viz.cli import commands as cli

HALF_PLUS_TWO = "serving_saved_model_half_plus_two_cpu/00000123"


@pytest.fixture(scope="module")
def sized_run(tf, tmp_path_factory) -> str:
    """A run of two checkpoints (ckpt-1, ckpt-2), each 40 float32 tensors of 32 K values
    (5 MB) and a few small ones, with an object graph. Returns the run's folder."""
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("sized")
    variables = {f"w{i:02d}": tf.Variable(rng.normal(size=(128, 256)).astype("float32"))
                 for i in range(40)}
    variables.update(b=tf.Variable(np.ones(7, "float32")), step=tf.Variable(1, dtype=tf.int64))
    ckpt = tf.train.Checkpoint(**variables)
    ckpt.write(str(folder / "ckpt-1"))
    for v in variables.values():
        v.assign_add(tf.ones_like(v))
    ckpt.write(str(folder / "ckpt-2"))
    return str(folder)


@pytest.fixture(scope="module")
def bucket(gcs, demo_run, keras3_adam_ckpt, sized_run, shared):
    """gs:// URLs of what was uploaded, and the local paths they stand for."""
    return {
        "run": (gcs.upload(demo_run, "runs/demo"), str(demo_run)),
        "keras": (gcs.upload(keras3_adam_ckpt, "keras/ckpt"), keras3_adam_ckpt),
        "sized": (gcs.upload(sized_run, "sized") + "/ckpt-2", sized_run + "/ckpt-2"),
        "sized_run": (gcs.upload(sized_run, "sized"), sized_run),
        "model": (gcs.upload(shared / HALF_PLUS_TWO, "models/half_plus_two/00000123"),
                  str(shared / HALF_PLUS_TWO)),
    }


def run_json(capsys, *args) -> object:
    status = cli.main([str(a) for a in args] + ["--format", "json"])
    out, err = capsys.readouterr()
    assert status == 0, err
    return json.loads(out)


def run_error(capsys, *args) -> tuple[str, float]:
    start = time.monotonic()
    status = cli.main([str(a) for a in args])
    took = time.monotonic() - start
    out, err = capsys.readouterr()
    assert status == 1 and not out, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0], took


# -- the same answers as the local files ---------------------------------------------------

def demo_steps(folder: str) -> tuple[str, str]:
    """The first and the last checkpoint of a run folder (by step number)."""
    from pathlib import Path

    names = sorted((p.name[:-len(".index")] for p in Path(folder).glob("*.index")),
                   key=lambda n: int(n.rsplit("-", 1)[1]))
    return names[0], names[-1]


@pytest.mark.parametrize("command, which, extra", [
    ("list", "keras", ()),
    ("stats", "keras", ()),
    ("stats", "sized", ()),
    ("list", "run", ()),      # a folder: its newest checkpoint, through the state file
    ("steps", "sized_run", ()),
    ("diff", "run", ("first", "last")),
])
def test_commands_match_local(capsys, bucket, command, which, extra):
    url, local = bucket[which]
    if extra:
        extra = demo_steps(local)
        args = [f"{url}/{extra[0]}", f"{url}/{extra[1]}"]
        local_args = [f"{local}/{extra[0]}", f"{local}/{extra[1]}"]
    else:
        args, local_args = [url], [local]
    got = run_json(capsys, command, *args)
    want = run_json(capsys, command, *local_args)
    text = json.dumps(got).replace(url, local)
    assert json.loads(text) == want
    assert len(got) > 3


def needed_bytes(prefixes: list[str], tensors: bool = True) -> int:
    from tpuckpt_viz.checkpoint.reader import open_checkpoint

    total = 0
    for prefix in prefixes:
        total += len(open(prefix + ".index", "rb").read())
        entries = open_checkpoint(prefix).entries
        # list needs the object graph (names, slots); the others every tensor.
        total += sum(e.nbytes for k, e in entries.items()
                     if tensors or k == "_CHECKPOINTABLE_OBJECT_GRAPH")
    return total


@pytest.mark.parametrize("command", ["list", "stats", "diff", "steps"])
def test_fetches_only_what_it_needs(capsys, gcs, bucket, command):
    """bytes fetched / bytes needed <= 1.2 (every response body counted, listings included),
    each index in one request. Needed: the .index files, the object graph for list, plus
    each tensor's bytes once for the others
    (``steps`` reads every checkpoint twice: the second time comes from the spill cache)."""
    run_url, run = bucket["sized_run"]
    prefixes = {"list": ["ckpt-2"], "stats": ["ckpt-2"], "diff": ["ckpt-1", "ckpt-2"],
                "steps": ["ckpt-1", "ckpt-2"]}[command]
    args = [run_url] if command == "steps" else [f"{run_url}/{p}" for p in prefixes]
    needed = needed_bytes([f"{run}/{p}" for p in prefixes], tensors=command != "list")
    remote.filesystem(run_url).invalidate_cache()
    remote.spill.clear()
    gcs.proxy.reset()
    records = run_json(capsys, command, *args)
    assert records
    log = list(gcs.proxy.log)
    slack = 4 << 10 if command == "list" else 0  # one folder listing (JSON) beside a tiny index
    assert gcs.proxy.bytes <= 1.2 * needed + slack, (gcs.proxy.bytes, needed, log)
    index_reads = [p for m, p, r in log if ".index" in p and "alt=media" in p]
    assert len(index_reads) == len(prefixes), log
    if command == "stats":  # 5 MB in ~2 MB units, plus the listing and the index
        assert gcs.proxy.requests <= 12, log


def test_many_ranges_in_flight(gcs, bucket):
    """remote.read_ranges runs its requests at once: 8 ranges with 0.2 s each take < 1 s."""
    url, _ = bucket["sized"]
    gcs.proxy.delay = 0.2
    try:
        start = time.monotonic()
        parts = remote.read_ranges(url + ".data-00000-of-00001", [(i << 16, 1000) for i in range(8)])
        took = time.monotonic() - start
    finally:
        gcs.proxy.delay = 0.0
    assert [len(p) for p in parts] == [1000] * 8
    assert took < 1.0


# -- the four failures: different clear errors, each within 10 s ---------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connections are refused


@pytest.mark.parametrize("case, expected", [
    ("network", "cannot reach the storage service"),
    ("credentials", "needs credentials and none were found"),
    ("denied", "is denied"),
    ("missing", "does not exist"),
])
@pytest.mark.parametrize("command", ["list", "stats"])
def test_four_failures_cli(capsys, monkeypatch, gcs, bucket, case, expected, command):
    path = {"network": "gs://ckpts/elsewhere/ckpt", "credentials": "gs://nocreds/run/ckpt",
            "denied": "gs://denied/run/ckpt", "missing": "gs://ckpts/no/such/ckpt"}[case]
    if case == "network":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed_port()}")
    remote.filesystem(path).invalidate_cache()
    line, took = run_error(capsys, command, path)
    assert expected in line, line
    assert path in line
    assert took < 10, took
    assert not any(word in line for word in ("Traceback", "please report")), line


def test_unanswered_connection_times_out(capsys, monkeypatch, gcs):
    """A server that accepts the connection but never answers: an error, not a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{silent.getsockname()[1]}")
        line, took = run_error(capsys, "list", "gs://ckpts/silent/ckpt")
    assert "cannot reach the storage service" in line
    assert took < 10, took


# -- TensorFlow's own gs:// for SavedModels (through the CONNECT proxy) ------------------

def test_infer_saved_model_on_gs(capsys, monkeypatch, gcs, bucket):
    from tpuckpt_viz import sandbox

    for key, value in gcs.tf_env.items():
        monkeypatch.setenv(key, value)
    # TensorFlow runs models in the worker process, which reads its GCS settings (the proxy,
    # the test CA) from its environment once: start a fresh one with them, and stop it after
    # so that later tests get a worker without them.
    sandbox.stop_all()
    try:
        url, local = bucket["model"]
        args = ["--input", "x=[[1],[2],[5]]", "--device", "cpu"]
        got = run_json(capsys, "infer", url, *args)
        want = run_json(capsys, "infer", local, *args)
    finally:
        sandbox.stop_all()
    assert got["outputs"] == want["outputs"]
    assert np.allclose(np.ravel(got["outputs"]["y"]), [2.5, 3.0, 4.5])


# -- other fsspec URLs -----------------------------------------------------------------------

def test_memory_filesystem(capsys, keras3_adam_ckpt):
    """``memory://`` (fsspec's in-memory filesystem) takes the same path as gs://."""
    import fsspec

    fs = fsspec.filesystem("memory")
    from pathlib import Path

    local = Path(keras3_adam_ckpt)
    for file in local.parent.glob(local.name + ".*"):
        fs.pipe(f"/k/{file.name}", file.read_bytes())
    try:
        assert remote.handles("memory://k/ckpt")
        got = run_json(capsys, "stats", "memory://k/ckpt")
        assert got == run_json(capsys, "stats", keras3_adam_ckpt)
    finally:
        fs.rm("/k", recursive=True)


# -- the pages -------------------------------------------------------------------------------

@pytest.fixture
def gs_app(app_env, monkeypatch, bucket):
    from tpuckpt_viz import config

    monkeypatch.setenv("TPUCKPT_ROOTS", "gs://ckpts")
    assert config.roots() == ["gs://ckpts"]
    return bucket


def frames(at, *columns):
    return [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]


def test_browse_page_on_gs_matches_local(gs_app, monkeypatch, tmp_path_factory):
    url, local = gs_app["keras"]
    at = open_app(ckpt=url)
    assert not at.error, [e.value for e in at.error]
    remote_table = frames(at, "name", "key", "kind", "dtype")[0]
    monkeypatch.setenv("TPUCKPT_ROOTS", str(tmp_path_factory.getbasetemp()))
    at = open_app(ckpt=local)
    local_table = frames(at, "name", "key", "kind", "dtype")[0]
    assert remote_table.to_dict("records") == local_table.to_dict("records")


def test_compare_page_on_gs(gs_app):
    url, _ = gs_app["sized_run"]
    at = open_app(COMPARE, a=f"{url}/ckpt-1", b=f"{url}/ckpt-2")
    assert not at.error, [e.value for e in at.error]
    (table,) = [f for f in frames(at, "status") if len(f) > 3]
    assert set(table["status"]) >= {"changed"}


def test_bucket_run_picker(gs_app):
    at = open_app(BROWSE, ckpt=gs_app["keras"][0])
    picker = at.selectbox(key="ckpt_path_bucket")
    runs = [gs_app[k][0].rsplit("/", 1)[0] if k == "keras" else gs_app[k][0]
            for k in ("keras", "model", "run", "sized_run")]
    assert set(runs) <= set(picker.options) and list(picker.options) == sorted(picker.options)
    assert all(o.startswith("gs://ckpts/") for o in picker.options)
    picker.set_value(gs_app["run"][0]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.text_input(key="ckpt_path").value == gs_app["run"][0]


@pytest.mark.parametrize("path, expected", [
    ("gs://nocreds/run/ckpt", "needs credentials"),
    ("gs://denied/run/ckpt", "is denied"),
    ("gs://ckpts/no/such/ckpt", "does not exist"),
])
def test_page_failures(app_env, monkeypatch, gcs, path, expected):
    monkeypatch.setenv("TPUCKPT_ROOTS", "gs://nocreds:gs://denied:gs://ckpts")
    start = time.monotonic()
    at = open_app(ckpt=path)
    assert time.monotonic() - start < 20
    shown = " | ".join(e.value for e in at.error)
    assert expected in shown, shown


def test_page_no_network(app_env, monkeypatch, gcs):
    monkeypatch.setenv("TPUCKPT_ROOTS", "gs://ckpts")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed_port()}")
    remote.filesystem("gs://ckpts").invalidate_cache()
    at = open_app(ckpt="gs://ckpts/elsewhere/ckpt")
    shown = " | ".join(e.value for e in at.error)
    assert "cannot reach the storage service" in shown, shown
