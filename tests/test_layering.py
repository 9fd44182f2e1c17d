"""Layering: the core never imports Streamlit; the CLI's reading path stays light.

Streamlit belongs to ``app.py`` and ``tpuckpt_viz/app_pages/`` alone (DESIGN.md section 2).
The modules that the CLI needs to read tensors must not pull in pandas, plotly or Streamlit.
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
CORE_FILES = sorted(p for p in PACKAGE.rglob("*.py") if "app_pages" not in p.relative_to(PACKAGE).parts)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value))
    return found


def test_core_files_found():
    names = {p.name for p in CORE_FILES}
    assert {"cli.py", "reader.py", "stats.py", "diff.py", "grouping.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_does_not_import_streamlit(path):
    streamlit = sorted(m for m in _imported_modules(path)
                       if m == "streamlit" or m.startswith("streamlit."))
    assert not streamlit, f"{path.relative_to(ROOT)} imports {streamlit}: only app.py and " \
                          "tpuckpt_viz/app_pages/ may"


def test_cli_reading_path_stays_light():
    code = ("import json, sys; import tpuckpt_viz.cli, tpuckpt_viz.stats, tpuckpt_viz.reader; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pandas', 'plotly', 'streamlit'))))")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == [], f"importing the CLI's reading path imported {heavy}"
