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
def sized_ckpt(tf, tmp_path_factory) -> str:
    """40 float32 tensors of 32 K values (5 MB) and a few small ones, with an object graph."""
    rng = np.random.default_rng(3)
    variables = {f"w{i:02d}": tf.Variable(rng.normal(size=(128, 256)).astype("float32"))
                 for i in range(40)}
    variables.update(b=tf.Variable(np.ones(7, "float32")), step=tf.Variable(5, dtype=tf.int64))
    return tf.train.Checkpoint(**variables).write(str(tmp_path_factory.mktemp("sized") / "ckpt"))


@pytest.fixture(scope="module")
def bucket(gcs, demo_run, keras3_adam_ckpt, sized_ckpt, shared):
    """gs:// URLs of what was uploaded, and the local paths they stand for."""
    return {
        "run": (gcs.upload(demo_run, "runs/demo"), str(demo_run)),
        "keras": (gcs.upload(keras3_adam_ckpt, "keras/ckpt"), keras3_adam_ckpt),
        "sized": (gcs.upload(sized_ckpt, "sized/ckpt"), sized_ckpt),
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

@pytest.mark.parametrize("command, which, extra", [
    ("list", "keras", ()),
    ("stats", "keras", ()),
    ("stats", "sized", ()),
    ("list", "run", ()),      # a folder: its newest checkpoint, through the state file
    ("steps", "run", ()),
    ("diff", "run", ("ckpt-60", "ckpt-300")),
])
def test_commands_match_local(capsys, bucket, command, which, extra):
    url, local = bucket[which]
    if extra:
        args = [f"{url}/{extra[0]}", f"{url}/{extra[1]}"]
        local_args = [f"{local}/{extra[0]}", f"{local}/{extra[1]}"]
    else:
        args, local_args = [url], [local]
    got = run_json(capsys, command, *args)
    want = run_json(capsys, command, *local_args)
    text = json.dumps(got).replace(url, local)
    assert json.loads(text) == want
    assert len(got) > 3


def test_stats_fetches_only_what_it_needs(capsys, gcs, bucket):
    """bytes fetched / bytes needed <= 1.2, the index in one request, ranges in parallel."""
    url, local = bucket["sized"]
    from tpuckpt_viz.checkpoint.reader import open_checkpoint

    ckpt = open_checkpoint(local)
    needed = sum(e.nbytes for e in ckpt.entries.values()) + len(open(local + ".index", "rb").read())
    remote.filesystem(url).invalidate_cache()
    gcs.proxy.reset()
    records = run_json(capsys, "stats", url)
    assert len(records) == len(ckpt.entries)
    log = list(gcs.proxy.log)
    assert gcs.proxy.bytes / needed <= 1.2, (gcs.proxy.bytes, needed, log)
    index_reads = [p for m, p, r in log if ".index" in p and "alt=media" in p]
    assert len(index_reads) == 1, log
    assert gcs.proxy.requests <= 12, log  # 5 MB in ~2 MB units, plus listing and index


def test_list_fetches_index_and_object_graph_only(capsys, gcs, bucket):
    url, local = bucket["sized"]
    remote.filesystem(url).invalidate_cache()
    gcs.proxy.reset()
    run_json(capsys, "list", url)
    index = len(open(local + ".index", "rb").read())
    assert gcs.proxy.bytes <= 1.2 * index + (64 << 10), gcs.proxy.log  # + graph and a listing
    assert gcs.proxy.requests <= 5, gcs.proxy.log


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
    for key, value in gcs.tf_env.items():
        monkeypatch.setenv(key, value)
    url, local = bucket["model"]
    args = ["--input", "x=[[1],[2],[5]]", "--device", "cpu"]
    got = run_json(capsys, "infer", url, *args)
    want = run_json(capsys, "infer", local, *args)
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
    url, _ = gs_app["run"]
    at = open_app(COMPARE, a=f"{url}/ckpt-60", b=f"{url}/ckpt-300")
    assert not at.error, [e.value for e in at.error]
    assert frames(at, "status")


def test_bucket_run_picker(gs_app):
    at = open_app(BROWSE, ckpt=gs_app["keras"][0])
    picker = at.selectbox(key="ckpt_path_bucket")
    runs = [gs_app[k][0].rsplit("/", 1)[0] if k in ("keras", "sized") else gs_app[k][0]
            for k in ("keras", "model", "run", "sized")]
    assert list(picker.options) == sorted(runs)
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
