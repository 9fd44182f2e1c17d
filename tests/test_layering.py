"""Layering: one rule per folder of the package (README.md, "Layout").

- ``dashboard/`` alone imports Streamlit (and ``app.py``, which only runs it).
- ``checkpoint/``, ``engine/``, ``inference/`` and ``cli/`` import no Streamlit, pandas or plotly.
- No module imports an underscore name from another module: the line between public and
  private is real.
- The CLI's reading path stays light at import time.
- ``tests/`` mirrors the package: a folder of tests per folder of the package.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tpuckpt_viz"
ALL_FILES = sorted(PACKAGE.rglob("*.py"))
HEAVY = ("streamlit", "pandas", "plotly")
# folder -> top-level packages that folder's modules may not import
RULES = {
    "checkpoint": HEAVY,
    "engine": HEAVY,
    "inference": HEAVY,
    "cli": HEAVY,
    "": ("streamlit",),  # the package's own top-level modules (config, errors, demo, ...)
}


def _folder(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def _imports(path: Path) -> list[ast.AST]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in _imports(path):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_folder_has_a_rule():
    folders = {_folder(p) for p in ALL_FILES}
    assert folders == set(RULES) | {"dashboard"}, folders


def test_tests_mirror_the_package_folders():
    """Each folder of the package has its tests in the folder of the same name, and no
    folder of tests names a folder the package does not have."""
    package = {_folder(p) for p in ALL_FILES} - {""}
    tests = {p.parent.name for p in (ROOT / "tests").glob("*/test_*.py")}
    assert tests == package, f"tests/ has {sorted(tests)}, the package {sorted(package)}"
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    # No __init__.py in tests/: pytest imports test files by their base name.
    assert len(names) == len(set(names)), "two test files share a name"


@pytest.mark.parametrize("path", [p for p in ALL_FILES if _folder(p) in RULES],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_folder_rule(path):
    banned = RULES[_folder(path)]
    bad = sorted(m for m in _imported_modules(path) if m.split(".")[0] in banned)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: not allowed in " \
                    f"tpuckpt_viz/{_folder(path) or '(top level)'}"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_modules(path):
    crossing = sorted(alias.name for node in _imports(path) if isinstance(node, ast.ImportFrom)
                      for alias in node.names if alias.name.startswith("_"))
    assert not crossing, f"{path.relative_to(ROOT)} imports private names {crossing}"


def test_app_py_only_runs_the_packaged_dashboard():
    assert "streamlit" not in _imported_modules(ROOT / "app.py")


def test_cli_reading_path_stays_light():
    code = ("import json, sys; import tpuckpt_viz.cli, tpuckpt_viz.engine.stats, "
            "tpuckpt_viz.checkpoint.reader; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pandas', 'plotly', 'streamlit'))))")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == [], f"importing the CLI's reading path imported {heavy}"
