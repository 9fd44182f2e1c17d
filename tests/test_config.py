"""The settings table (tpuckpt_viz.config): README documents every row, flags reach `serve`.

Like datasette's settings: one table with defaults and help, and a test that the README
mentions each environment variable and command-line flag.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpuckpt_viz import config
from tpuckpt_viz.cli import commands as cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SAMPLE = {"roots": "/data", "address": "0.0.0.0", "port": "8600", "model": "pkg.mod:build",
          "upload_mb": "5", "slice_mb": "3", "chunk_mb": "1", "cache_entries": "9",
          "allow_unsafe_ops": "1", "demo_dir": "/tmp/demo-x"}


def test_settings_table_is_well_formed():
    names = [s.name for s in config.SETTINGS]
    assert len(set(names)) == len(names)
    for s in config.SETTINGS:
        assert s.env.startswith("TPUCKPT_") and s.env == s.env.upper()
        assert s.flag.startswith("--") and s.help.strip()
    assert set(SAMPLE) == set(names), "add a sample value for the new setting"


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
def test_readme_documents_every_setting(setting):
    assert README.is_file(), ("README.md is missing: it must document every setting of "
                              "tpuckpt_viz/config.py (environment variable and flag)")
    text = README.read_text(encoding="utf-8")
    assert setting.env in text, f"README.md does not mention {setting.env}"
    assert setting.flag in text, f"README.md does not mention {setting.flag}"


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
def test_serve_accepts_every_flag(setting):
    args = [setting.flag] if setting.name == "allow_unsafe_ops" else [setting.flag,
                                                                      SAMPLE[setting.name]]
    cli.build_parser().parse_args(["serve", *args])


def test_serve_passes_flags_on_as_environment(monkeypatch, tmp_path):
    captured = {}

    class Exec(Exception):
        pass

    def fake_exec(file, argv, env):
        captured.update(argv=argv, env=env)
        raise Exec

    monkeypatch.setattr(cli.os, "execvpe", fake_exec)
    argv = ["serve", "ckpt_dir"]
    for s in config.SETTINGS:
        argv += [s.flag] if s.name == "allow_unsafe_ops" else [s.flag, SAMPLE[s.name]]
    args = cli.build_parser().parse_args(argv)
    with pytest.raises(Exec):
        cli.COMMANDS["serve"](args)
    env = captured["env"]
    for s in config.SETTINGS:
        if s.name not in ("address", "port"):  # those go to Streamlit's own flags
            assert env[s.env] == SAMPLE[s.name], s.env
    assert captured["argv"][captured["argv"].index("--server.port") + 1] == "8600"
    assert captured["argv"][captured["argv"].index("--server.address") + 1] == "0.0.0.0"
    assert captured["argv"][-2:] == ["--ckpt", "ckpt_dir"]


def test_serve_path_allows_its_folder(monkeypatch, tmp_path):
    captured = {}

    class Exec(Exception):
        pass

    def fake_exec(file, argv, env):
        captured.update(env=env)
        raise Exec

    monkeypatch.setattr(cli.os, "execvpe", fake_exec)
    monkeypatch.delenv("TPUCKPT_ROOTS", raising=False)
    (tmp_path / "run").mkdir()
    for argv, roots in ((["serve", str(tmp_path / "run")], [os.getcwd(), str(tmp_path / "run")]),
                        (["serve", str(tmp_path / "run" / "ckpt-5")],
                         [os.getcwd(), str(tmp_path / "run")]),
                        (["serve", str(tmp_path / "run"), "--root", "/r"], ["/r"])):
        with pytest.raises(Exec):
            cli.COMMANDS["serve"](cli.build_parser().parse_args(argv))
        assert captured["env"]["TPUCKPT_ROOTS"].split(os.pathsep) == roots


def test_get_defaults_and_environment(monkeypatch):
    for s in config.SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    assert config.get("port") == "8501" and config.get_int("slice_mb") == 64
    assert config.get_bool("allow_unsafe_ops") is False
    monkeypatch.setenv("TPUCKPT_SLICE_MB", "12")
    monkeypatch.setenv("TPUCKPT_CHUNK_MB", "lots")  # malformed: the default
    monkeypatch.setenv("TPUCKPT_ALLOW_UNSAFE_OPS", "yes")
    assert config.get_int("slice_mb") == 12 and config.get_int("chunk_mb") == 8
    assert config.get_bool("allow_unsafe_ops") is True


def test_demo_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TPUCKPT_DEMO_DIR", str(tmp_path / "d"))
    assert config.demo_dir() == tmp_path / "d"
    monkeypatch.delenv("TPUCKPT_DEMO_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert config.demo_dir() == tmp_path / "cache" / "tpuckpt-viz" / "demo"


def test_roots(monkeypatch, tmp_path):
    monkeypatch.delenv("TPUCKPT_ROOTS", raising=False)
    assert config.roots() == [os.getcwd()]
    value = os.pathsep.join([str(tmp_path), "gs://bucket/runs", "ram://x", "/other"])
    monkeypatch.setenv("TPUCKPT_ROOTS", value)
    assert config.roots() == [str(tmp_path), "gs://bucket/runs", "ram://x", "/other"]
