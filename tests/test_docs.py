"""The docs hold what the code does (like datasette's documentation tests).

``docs/reference.md`` is checked against the command line's ``--help`` (every option of every
command), the code's column lists (record fields and table orders), the infer object's fields
and the settings table; README's layout block against the tree; and every Markdown file that a
docstring or comment cites must be in the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tpuckpt_viz import config
from tpuckpt_viz.cli import commands as cli

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs/reference.md"
README = ROOT / "README.md"
RECORDS = {"list": (cli.LIST_COLUMNS, cli.LIST_TABLE), "stats": (cli.STATS_COLUMNS,
           cli.STATS_TABLE), "diff": (cli.DIFF_COLUMNS, cli.DIFF_TABLE),
           "steps": (cli.STEPS_COLUMNS, cli.STEPS_TABLE)}


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of its level
    or above."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    body = []
    for line in lines[start + 1:]:
        if re.match(r"#{1,%d} " % level, line):
            break
        body.append(line)
    return "\n".join(body)


def help_text(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def help_entries(text: str) -> list[tuple[str, bool]]:
    """(invocation, has help) for every argument listed in argparse's help text."""
    lines = text.splitlines()
    entries = []
    inside = False
    for i, line in enumerate(lines):
        if line.endswith(":") and not line.startswith(" "):
            inside = line in ("positional arguments:", "options:")
            continue
        indent = len(line) - len(line.lstrip(" "))
        if not inside or not line.strip() or indent == 0 or indent >= 20:
            continue
        body = line.strip()
        invocation, *rest = re.split(r"\s{2,}", body, maxsplit=1)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        more = len(following) - len(following.lstrip(" ")) > indent and following.strip()
        entries.append((invocation, bool(rest) or bool(more)))
    return entries


@pytest.fixture(scope="module")
def reference() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def test_top_level_help_lists_every_command(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch)
    entries = dict(help_entries(text))
    assert set(cli.COMMANDS) <= set(entries)
    assert all(entries.values()), entries


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_argument_has_help_and_is_documented(capsys, monkeypatch, reference, command):
    text = help_text(capsys, monkeypatch, command)
    entries = help_entries(text)
    assert len(entries) >= 2
    missing_help = [inv for inv, has in entries if not has]
    assert not missing_help, f"{command}: no help text for {missing_help}"
    doc = section(reference, f"### `{command}`")
    for invocation, _ in entries:
        if invocation.startswith("-h"):
            continue
        name = invocation.split()[0].rstrip(",")
        assert f"`{name}" in doc, f"docs/reference.md, `{command}`: {name} is not documented"
    usage = " ".join(text.split("\n\n")[0].split())
    for option in set(re.findall(r"--[a-z][a-z-]*", usage)) - {"--help"}:
        assert option in doc, f"docs/reference.md, `{command}`: {option} is not documented"


def test_zeros_is_documented_as_a_fraction(capsys, monkeypatch, reference):
    assert "fraction" in help_text(capsys, monkeypatch, "stats")
    assert "fraction" in section(reference, "### stats records")


def _bullets(doc: str) -> list[str]:
    return re.findall(r"^- `([a-z_0-9]+)`:", doc, flags=re.M)


@pytest.mark.parametrize("command", sorted(RECORDS))
def test_record_fields_and_table_order(reference, command):
    columns, table = RECORDS[command]
    doc = section(reference, f"### {command} records")
    assert _bullets(doc) == list(columns), f"docs/reference.md: {command} records"
    order = re.search(r"^Table order: (.+)\.$", doc, flags=re.M)
    assert order and re.findall(r"`([a-z_0-9]+)`", order.group(1)) == list(table)


def test_infer_object_fields(tf, reference):
    from tpuckpt_viz.inference.api import InferenceResult, result_to_json

    result = InferenceResult(device="/device:CPU:0", device_reasons=[], latency_ms=1.0,
                             outputs={"y": np.zeros((1, 2), np.float32)}, restore=None,
                             source="saved_model")
    assert _bullets(section(reference, "### infer object")) == list(result_to_json(result))


def _settings_rows(reference: str) -> dict[str, list[str]]:
    doc = section(reference, "## Settings")
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 6 and cells[0] not in ("setting", "---"):
            rows[cells[0]] = cells
    return rows


def test_settings_table_matches_the_code(reference):
    rows = _settings_rows(reference)
    assert set(rows) == {s.name for s in config.SETTINGS}, "docs/reference.md: settings table"
    for s in config.SETTINGS:
        name, env, flag, commands, default, takes = rows[s.name]
        assert (env, flag) == (f"`{s.env}`", f"`{s.flag}`"), s.name
        assert sorted(c.strip() for c in commands.split(",")) == sorted(s.commands), s.name
        if s.default:
            assert default == f"`{s.default}`", s.name
        assert takes == s.takes(), s.name
        assert f"- `{s.env}`:" in reference, f"docs/reference.md does not say what {s.env} does"


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
def test_readme_settings_table_has_every_setting(setting):
    doc = section(README.read_text(encoding="utf-8"), "## Settings")
    assert f"`{setting.env}`" in doc and f"`{setting.flag}`" in doc, setting.env


def test_readme_lists_every_command():
    doc = section(README.read_text(encoding="utf-8"), "## Command line")
    for command in cli.COMMANDS:
        assert f"| `{command}" in doc, f"README's command table lacks {command}"


def _layout_paths() -> list[str]:
    doc = section(README.read_text(encoding="utf-8"), "## Layout")
    block = re.search(r"```\n(.*?)```", doc, flags=re.S)
    assert block, "README's Layout section has no code block"
    paths, parents = [], []  # parents: (indent, folder) of the enclosing folders
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        first = line.split()[0]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        prefix = parents[-1][1] if parents else ""
        for item in re.split(r",\s*", line.strip().split("  ")[0]):
            item = item.strip()
            if item and re.match(r"^[\w.{}/-]+$", item):
                paths += _expand(prefix + item)
        if first.endswith("/"):
            parents.append((indent, prefix + first))
    return paths


def _expand(path: str) -> list[str]:
    match = re.search(r"\{([^}]+)\}", path)
    if not match:
        return [path]
    return [p for alt in match.group(1).split(",")
            for p in _expand(path[:match.start()] + alt + path[match.end():])]


def test_readme_layout_matches_the_tree():
    listed = _layout_paths()
    assert listed, "README's Layout block lists nothing"
    for path in listed:
        assert (ROOT / path).exists(), f"README's Layout lists {path}, which does not exist"
    folders = {str(p.parent.relative_to(ROOT)) + "/" for p in (ROOT / "tpuckpt_viz").rglob(
        "__init__.py")}
    missing = sorted(folders - set(listed))
    assert not missing, f"README's Layout does not list the package folders {missing}"
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "tpuckpt_viz").rglob("*.py")
               if p.name != "__init__.py"}
    unlisted = sorted(modules - set(listed))
    assert not unlisted, f"README's Layout does not list the modules {unlisted}"


def test_cited_markdown_files_exist():
    """The package cites only files of the repository; tests may also cite the shared test
    data's own notes (``../shared/checkpoints/SOURCES.md``), which they read in place."""
    shared = ROOT.parent / "shared" / "checkpoints"
    cited = []
    for path in [*sorted((ROOT / "tpuckpt_viz").rglob("*.py")), *sorted((ROOT / "tests").rglob(
            "*.py"))]:
        places = [ROOT] if path.is_relative_to(ROOT / "tpuckpt_viz") else [ROOT, shared]
        for name in re.findall(r"[\w./-]*\w\.md\b", path.read_text(encoding="utf-8")):
            if not any((place / name).is_file() for place in places):
                cited.append(f"{path.relative_to(ROOT)}: {name}")
    assert not cited, f"cited but not in the repository: {cited}"
