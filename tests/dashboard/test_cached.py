"""The dashboard's caches (``dashboard/cached.py``): keyed by a checkpoint's prefix and signature
with the checkpoint itself unhashed (``_ckpt``), sized by the settings table, and the only
module of the dashboard that caches or opens a path."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpuckpt_viz.checkpoint.reader import open_checkpoint
from tpuckpt_viz.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "tpuckpt_viz" / "dashboard"


def _copy(src: Path, dest: Path, step: str) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.glob(f"{step}.*"):
        shutil.copy(f, dest / f.name)
    return str(dest / step)


def test_results_are_keyed_by_prefix_and_signature(demo_run, tmp_path, app_env):
    """A second Checkpoint object of the same files hits the cache (the object is not hashed);
    a rewritten index (a new signature) is read again."""
    from tpuckpt_viz.dashboard import cached, pagedata

    prefix = _copy(demo_run, tmp_path / "run", "ckpt-300")
    first = open_checkpoint(prefix)
    names = pagedata.variable_table(first).set_index("name")["key"]
    key, other = names["dense/kernel"], names["dense/bias"]
    view = cached.tensor_view(first, first.prefix, first.signature, key)
    data_file = next(Path(prefix).parent.glob("ckpt-300.data-*"))
    saved = data_file.read_bytes()
    data_file.unlink()  # from now on, any read of the tensor fails
    second = open_checkpoint(prefix)
    assert second is not first
    again = cached.tensor_view(second, second.prefix, second.signature, key)
    assert again.stats == view.stats  # from the cache: nothing was read
    with pytest.raises(UserError):  # not cached: read, and the data file is gone
        cached.tensor_view(second, second.prefix, second.signature, other)

    data_file.write_bytes(saved)
    index = Path(prefix + ".index")
    os.utime(index, ns=(index.stat().st_atime_ns, index.stat().st_mtime_ns + 10**9))
    third = open_checkpoint(prefix)
    assert third.signature != first.signature
    table = cached.variable_table(third, third.prefix, third.signature)
    assert key in set(table["key"])


def test_open_allowed_is_the_one_opener(app_env, tmp_path_factory):
    from tpuckpt_viz.dashboard import cached

    ckpt = cached.open_allowed(str(app_env))  # a run folder: its latest checkpoint
    assert ckpt.prefix == os.path.realpath(app_env / "ckpt-300")
    assert cached.open_allowed(str(app_env / "ckpt-300.index")) is ckpt  # the same, cached
    with pytest.raises(UserError, match="outside the allowed roots"):
        cached.open_allowed("/etc")


SIZES = """
import json
from tpuckpt_viz.dashboard import cached
print(json.dumps({name: [f._info.max_entries, f._info.ttl] for name, f in vars(cached).items()
                  if hasattr(f, "_info")}))
"""


def test_cache_sizes_come_from_the_settings():
    """Every cache's size and lifetime, read from the settings when the dashboard starts (the
    numbers are Streamlit's own record of each cached function)."""
    env = {**os.environ, "TPUCKPT_OPEN_CHECKPOINTS": "3", "TPUCKPT_CACHE_ENTRIES": "7",
           "TPUCKPT_RUN_TTL_S": "2", "TPUCKPT_BUCKET_TTL_S": "11"}
    out = subprocess.run([sys.executable, "-c", SIZES], env=env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    assert sizes.pop("demo_run") == [None, None]  # one folder, made once
    assert sizes.pop("checkpoint") == [3, None]
    assert sizes.pop("run_members") == sizes.pop("run_steps_of") == [7, 2]
    assert sizes.pop("bucket_runs") == [7, 11]
    assert sizes and all(v == [7, None] for v in sizes.values()), sizes


def test_a_malformed_cache_setting_is_a_clear_error():
    env = {**os.environ, "TPUCKPT_OPEN_CHECKPOINTS": "0"}
    out = subprocess.run([sys.executable, "-c", SIZES], env=env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode != 0
    assert "TPUCKPT_OPEN_CHECKPOINTS='0' is not valid: it takes a whole number of at least 1" \
        in out.stderr


def _decorators(path: Path) -> list[tuple[str, ast.FunctionDef]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                text = ast.unparse(dec)
                if "cache_data" in text or "cache_resource" in text:
                    found.append((text, node))
    return found


def test_only_cached_py_caches_and_checkpoints_are_unhashed():
    others = {str(p.relative_to(ROOT)): [t for t, _ in _decorators(p)]
              for p in DASHBOARD.rglob("*.py") if p.name != "cached.py"}
    assert not {p: d for p, d in others.items() if d}, "caches belong in dashboard/cached.py"
    for text, fn in _decorators(DASHBOARD / "cached.py"):
        assert fn.name == "demo_run" or "max_entries=" in text, f"{fn.name}: no max_entries"
        assert not any(ch.isdigit() for ch in text), f"{fn.name}: a literal size in {text}"
        for arg in fn.args.args:
            annotation = ast.unparse(arg.annotation) if arg.annotation else ""
            if annotation == "Checkpoint":
                assert arg.arg.startswith("_"), f"{fn.name}: hash {arg.arg} by prefix instead"


def test_pages_do_not_check_or_open_paths_themselves():
    """Only access.py checks paths; only cached.open_allowed opens them."""
    for path in (DASHBOARD / "app_pages").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in ("check_path", "open_checkpoint", "resolve_checkpoint", "run_checkpoints"):
            assert name not in text, f"{path.name} calls {name}"
