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
from tpuckpt_viz.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SAMPLE = {"roots": "/data", "address": "0.0.0.0", "port": "8600", "model": "pkg.mod:build",
          "upload_mb": "5", "slice_mb": "3", "chunk_mb": "1", "cache_entries": "9",
          "allow_unsafe_ops": "1", "demo_dir": "/tmp/demo-x", "progress": "never",
          "worker_mb": "2048", "worker_timeout_s": "30", "scheduler": "tcp://host:8786",
          "workers": "3", "open_checkpoints": "7", "run_ttl_s": "2", "bucket_ttl_s": "60"}
BAD = {"port": ["abc", "0", "70000"], "upload_mb": ["-1", "1.5"], "slice_mb": ["-1", "x"],
       "chunk_mb": ["-1", "lots"], "cache_entries": ["many"], "allow_unsafe_ops": ["maybe", "2"],
       "progress": ["sometimes"], "worker_mb": ["-1", "lots"], "worker_timeout_s": ["0"],
       "workers": ["0", "two"], "open_checkpoints": ["0", "all"], "run_ttl_s": ["0", "5s"],
       "bucket_ttl_s": ["-30", "1.5"]}


def test_settings_table_is_well_formed():
    names = [s.name for s in config.SETTINGS]
    assert len(set(names)) == len(names)
    for s in config.SETTINGS:
        assert s.env.startswith("TPUCKPT_") and s.env == s.env.upper()
        assert s.flag.startswith("--") and s.help.strip() and s.commands
        assert s.kind in config.KINDS and (s.kind != "choice" or s.default in s.choices)
        if s.default:
            s.parse(s.default)  # every default is valid
    assert set(SAMPLE) == set(names), "add a sample value for the new setting"
    assert set(BAD) <= set(names)


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
def test_readme_documents_every_setting(setting):
    assert README.is_file(), ("README.md is missing: it must document every setting of "
                              "tpuckpt_viz/config.py (environment variable and flag)")
    text = README.read_text(encoding="utf-8")
    assert setting.env in text, f"README.md does not mention {setting.env}"
    assert setting.flag in text, f"README.md does not mention {setting.flag}"


def _flag_args(setting) -> list[str]:
    return [setting.flag] if setting.kind == "bool" else [setting.flag, SAMPLE[setting.name]]


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
def test_commands_accept_every_flag(setting):
    parser = cli.build_parser()
    for command in setting.commands:
        positional = {"diff": ["a", "b"], "serve": []}.get(command, ["p"])
        args = parser.parse_args([command, *positional, *_flag_args(setting)])
        assert getattr(args, setting.name) not in (None, [])


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_setting_is_a_clear_error(monkeypatch, name):
    row = config.setting(name)
    for bad in BAD[name]:
        monkeypatch.setenv(row.env, bad)
        with pytest.raises(UserError) as err:
            config.value(name)
        message = str(err.value)
        assert message.startswith(f"{row.env}={bad!r} is not valid: it takes ")
        assert "\n" not in message
        with pytest.raises(UserError):
            config.check_all()
        monkeypatch.delenv(row.env)


@pytest.mark.parametrize("env,words", [
    ({"TPUCKPT_PORT": "abc"}, ["TPUCKPT_PORT='abc'", "from 1 to 65535"]),
    ({"TPUCKPT_CHUNK_MB": "-1"}, ["TPUCKPT_CHUNK_MB='-1'", "at least 1"]),
    ({"TPUCKPT_ALLOW_UNSAFE_OPS": "maybe"}, ["TPUCKPT_ALLOW_UNSAFE_OPS='maybe'", "1 or 0"]),
])
def test_serve_refuses_a_malformed_setting(monkeypatch, capsys, env, words):
    monkeypatch.setattr(cli.os, "execvpe", lambda *a: pytest.fail("the server started"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert all(w in err for w in words), err


def test_malformed_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["serve", "--port", "abc"])
    assert exit_.value.code == 2
    assert "--port: 'abc' is not valid: it takes a whole number" in capsys.readouterr().err


def test_serve_passes_flags_on_as_environment(monkeypatch, tmp_path):
    captured = {}

    class Exec(Exception):
        pass

    def fake_exec(file, argv, env):
        captured.update(argv=argv, env=env)
        raise Exec

    monkeypatch.setattr(cli.os, "execvpe", fake_exec)
    argv = ["serve", "ckpt_dir"]
    served = [s for s in config.SETTINGS if "serve" in s.commands]
    for s in served:
        argv += _flag_args(s)
    args = cli.build_parser().parse_args(argv)
    with pytest.raises(Exec):
        cli.COMMANDS["serve"](args)
    env = captured["env"]
    for s in served:
        assert env[s.env] == SAMPLE[s.name], s.env
    assert captured["argv"][captured["argv"].index("--server.maxUploadSize") + 1] == "5"
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
    assert config.value("progress") == "auto"
    monkeypatch.setenv("TPUCKPT_SLICE_MB", "12")
    monkeypatch.setenv("TPUCKPT_CHUNK_MB", " ")  # blank: the default
    monkeypatch.setenv("TPUCKPT_ALLOW_UNSAFE_OPS", "yes")
    monkeypatch.setenv("TPUCKPT_PROGRESS", "Never")
    assert config.get_int("slice_mb") == 12 and config.get_int("chunk_mb") == 8
    assert config.get_bool("allow_unsafe_ops") is True and config.value("progress") == "never"


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
