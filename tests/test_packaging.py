"""A non-editable install serves the dashboard from any folder.

The project is copied (without tests), installed with pip into a fresh virtualenv made with
``--system-site-packages`` (so TensorFlow, Streamlit and the rest are the ones already
installed, and pip installs only the project: ``--no-deps``, no index), then
``tpuckpt-viz serve`` runs from an unrelated temporary folder. The test waits for
``/_stcore/health``, loads the page over Streamlit's own websocket protocol, as a browser does
(a ``rerun_script`` message; the script's elements come back as ``ForwardMsg`` deltas), checks
that the Browse page ran to its end without an exception or an error, and stops the server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tpuckpt_viz"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtualenv holding a non-editable install of the project; returns its folder."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    # a copy: building writes build/ and *.egg-info next to the sources, never in the repo
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "tests", "__pycache__", "*.egg-info", "build", ".venv", "test-output"))
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(env_dir)], check=True, timeout=60)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
         "--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check", "-q",
         str(source)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return env_dir


def _installed_package(venv: Path) -> Path:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import tpuckpt_viz, os; print(os.path.dirname(tpuckpt_viz.__file__))"],
                          cwd=venv.parent, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


def test_wheel_holds_every_module(venv):
    installed = _installed_package(venv)
    assert venv in installed.parents, f"{installed} is not the virtualenv's copy"
    wanted = {p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py")}
    have = {p.relative_to(installed) for p in installed.rglob("*.py")}
    assert wanted <= have, f"missing from the install: {sorted(map(str, wanted - have))}"
    assert (installed / "dashboard" / "app.py").is_file()
    assert (venv / "bin" / "tpuckpt-viz").is_file()


async def _load_page(port: int, timeout: float) -> list[str]:
    """Open the app as a browser does; return the problems its first run showed."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    problems: list[str] = []
    finished = False
    async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream",
                                  subprotocols=["streamlit"], max_size=None) as ws:
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_script_hash = ""
        await ws.send(msg.SerializeToString())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
            fwd = ForwardMsg()
            fwd.ParseFromString(raw)
            kind = fwd.WhichOneof("type")
            if kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                element = fwd.delta.new_element
                which = element.WhichOneof("type")
                if which == "exception":
                    problems.append(f"exception: {element.exception.type}: "
                                    f"{element.exception.message}")
                elif which == "alert" and element.alert.format == element.alert.ERROR:
                    problems.append(f"error: {element.alert.body}")
            elif kind == "script_finished":
                finished = True
                break
    if not finished:
        problems.append(f"the script did not finish within {timeout:.0f} s")
    return problems


def test_serve_from_another_folder(venv, demo_run, tmp_path):
    port = _free_port()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPUCKPT_")}
    env.pop("PYTHONPATH", None)  # the installed copy, not the repository
    env.update(TPUCKPT_DEMO_DIR=str(demo_run), TPUCKPT_PORT=str(port))
    server = subprocess.Popen([str(venv / "bin" / "tpuckpt-viz"), "serve"], cwd=elsewhere,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as response:
                    health = response.read().decode()
                    break
            except OSError:
                time.sleep(0.3)
        assert health == "ok", f"no health answer; server said:\n{_output(server)}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        problems = asyncio.run(_load_page(port, timeout=60))
        assert problems == [], f"{problems}\nserver said:\n{_output(server)}"
        assert server.poll() is None
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    # nothing written next to the user's files
    assert list(elsewhere.iterdir()) == []


def _output(server: subprocess.Popen) -> str:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    try:
        return server.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:
        return "(no output)"
