"""Allowed roots (issue 6, "Access"): every path the dashboard opens stays inside them.

Real folders and symlinks in tmp_path; the roots come from ``TPUCKPT_ROOTS`` as in production.
"""

from __future__ import annotations

import os
import shutil

import pytest
from apphelpers import COMPARE, open_app

from tpuckpt_viz import config
from tpuckpt_viz.dashboard.access import (
    allowed_roots,
    allowed_run,
    check_path,
    is_allowed,
    resolve_allowed,
)
from tpuckpt_viz.errors import UserError


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """``root/`` (the only allowed root), ``outside/`` beside it, and the demo folder."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "run").mkdir(parents=True)
    outside.mkdir()
    (root / "run" / "ckpt-1.index").write_bytes(b"")
    (outside / "secret.index").write_bytes(b"")
    demo = tmp_path / "demo_home" / "demo"
    demo.mkdir(parents=True)
    monkeypatch.setenv("TPUCKPT_ROOTS", str(root))
    monkeypatch.setenv("TPUCKPT_DEMO_DIR", str(demo))
    return root, outside, demo


def _refused(path) -> str:
    with pytest.raises(UserError) as info:
        check_path(str(path))
    return str(info.value)


def test_inside_root_is_allowed_and_resolved(tree):
    root, _, _ = tree
    assert check_path(str(root / "run")) == os.path.realpath(root / "run")
    assert check_path(str(root / "run" / "ckpt-1.index")) == os.path.realpath(
        root / "run" / "ckpt-1.index")
    # A prefix is not a file itself: it is allowed when its folder is inside.
    assert check_path(str(root / "run" / "ckpt-1")) == os.path.join(
        os.path.realpath(root / "run"), "ckpt-1")
    # The root itself, with a trailing slash and "." parts.
    assert check_path(str(root) + "/") == os.path.realpath(root)
    assert check_path(str(root / "." / "run" / ".")) == os.path.realpath(root / "run")


def test_dotdot_escape_is_refused(tree):
    root, outside, _ = tree
    message = _refused(f"{root}/run/../../outside/secret")
    assert "outside the allowed roots" in message
    assert str(os.path.realpath(root)) in message  # says which roots are allowed
    assert "--root" in message and "TPUCKPT_ROOTS" in message  # and how to add one
    _refused(f"{root}/..")
    # ".." that stays inside is fine.
    assert check_path(f"{root}/run/../run") == os.path.realpath(root / "run")


def test_absolute_path_elsewhere_is_refused(tree):
    _, outside, _ = tree
    _refused(outside)
    _refused(outside / "secret.index")
    _refused("/etc/passwd")
    _refused("/")
    _refused("~")


def test_sibling_with_common_prefix_is_refused(tree, tmp_path):
    root, _, _ = tree
    twin = tmp_path / (root.name + "2")  # /tmp/.../root2 must not pass for /tmp/.../root
    twin.mkdir()
    _refused(twin)


def test_symlink_leading_out_is_refused(tree):
    root, outside, _ = tree
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "run" / "file_link.index").symlink_to(outside / "secret.index")
    _refused(root / "link")
    _refused(root / "link" / "secret")  # a prefix below a link that leads out
    _refused(root / "link" / "secret.index")
    _refused(root / "run" / "file_link.index")


def test_symlink_leading_in_is_allowed(tree, tmp_path):
    root, outside, _ = tree
    (outside / "back").symlink_to(root / "run", target_is_directory=True)
    assert check_path(str(outside / "back")) == os.path.realpath(root / "run")


def test_relative_paths_start_at_the_working_folder(tree, monkeypatch):
    root, _, _ = tree
    monkeypatch.chdir(root)
    assert check_path("run") == os.path.realpath(root / "run")
    with pytest.raises(UserError):
        check_path("../outside")


def test_empty_and_nul_paths_are_refused(tree):
    assert "no path" in _refused("   ")
    assert "NUL" in _refused("run\x00/../../etc")


def test_remote_needs_a_root_of_the_same_bucket(tree, monkeypatch):
    root, _, _ = tree
    _refused("gs://bucket/run")  # no remote root at all
    monkeypatch.setenv("TPUCKPT_ROOTS", os.pathsep.join([str(root), "gs://bucket/team"]))
    assert check_path("gs://bucket/team/run/ckpt-5") == "gs://bucket/team/run/ckpt-5"
    assert check_path("gs://bucket/team") == "gs://bucket/team"
    assert check_path("gs://bucket//team/./run") == "gs://bucket/team/run"
    _refused("gs://bucket/other/run")  # same bucket, outside the root's prefix
    _refused("gs://bucket/teamX/run")  # common prefix is not a folder
    _refused("gs://other-bucket/team/run")
    _refused("s3://bucket/team/run")  # same bucket name, other scheme
    _refused("file:///etc/passwd")
    assert "'..'" in _refused("gs://bucket/team/../other")
    # A remote root does not open local paths.
    monkeypatch.setenv("TPUCKPT_ROOTS", "gs://bucket")
    _refused(root)


def test_whole_bucket_root(tree, monkeypatch):
    monkeypatch.setenv("TPUCKPT_ROOTS", "gs://bucket")
    assert check_path("gs://bucket/any/where") == "gs://bucket/any/where"
    _refused("gs://bucket2/x")


def test_demo_folder_is_always_allowed(tree, monkeypatch, tmp_path):
    root, _, demo = tree
    (demo / "ckpt-0.index").write_bytes(b"")
    assert check_path(str(demo / "ckpt-0")) == os.path.join(os.path.realpath(demo), "ckpt-0")
    # Whatever the configured roots are.
    monkeypatch.setenv("TPUCKPT_ROOTS", "gs://bucket/x")
    assert check_path(str(demo)) == os.path.realpath(demo)
    assert os.path.realpath(demo) in allowed_roots()
    # But not its parent.
    with pytest.raises(UserError):
        check_path(str(demo.parent))


def test_roots_from_environment_with_several_entries(tree, monkeypatch, tmp_path):
    assert os.pathsep == ":"  # POSIX: gs:// URIs contain the separator
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    value = ":".join([str(a), "gs://bucket/prefix", str(b), "gs://other", ""])
    monkeypatch.setenv("TPUCKPT_ROOTS", value)
    assert config.roots() == [str(a), "gs://bucket/prefix", str(b), "gs://other"]
    roots = allowed_roots()
    assert roots[:4] == [os.path.realpath(a), "gs://bucket/prefix", os.path.realpath(b),
                         "gs://other"]
    assert check_path(str(a)) and check_path(str(b))
    assert check_path("gs://bucket/prefix/x") == "gs://bucket/prefix/x"
    assert check_path("gs://other/y") == "gs://other/y"
    with pytest.raises(UserError):
        check_path("gs://bucket/elsewhere")


def test_default_root_is_the_working_folder(tree, monkeypatch, tmp_path):
    root, outside, _ = tree
    monkeypatch.delenv("TPUCKPT_ROOTS")
    monkeypatch.chdir(outside)
    assert config.roots() == [os.getcwd()]
    assert check_path(str(outside / "secret")) == os.path.join(os.path.realpath(outside),
                                                              "secret")
    with pytest.raises(UserError):
        check_path(str(root))


def test_roots_with_tilde_and_symlinks_are_resolved(tree, monkeypatch, tmp_path):
    root, _, _ = tree
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    monkeypatch.setenv("TPUCKPT_ROOTS", str(alias))
    assert os.path.realpath(root) in allowed_roots()
    assert check_path(str(root / "run")) == os.path.realpath(root / "run")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TPUCKPT_ROOTS", "~/root")
    assert check_path("~/root/run") == os.path.realpath(root / "run")


def test_resolve_allowed_checks_where_a_folder_leads(tree, demo_run):
    """A folder inside a root whose state file names a checkpoint outside: refused, whether
    the folder or the file it names is what gets checked."""
    root, outside, _ = tree
    shutil.copytree(demo_run, root / "good")
    resolved = resolve_allowed(str(root / "good"))
    assert resolved.prefix == os.path.join(os.path.realpath(root / "good"), "ckpt-300")
    assert is_allowed(str(root / "good")) and not is_allowed(str(outside))
    shutil.copytree(demo_run, outside / "run")
    lure = root / "lure"
    lure.mkdir()
    (lure / "checkpoint").write_text(f'model_checkpoint_path: "{outside / "run" / "ckpt-300"}"\n')
    with pytest.raises(UserError, match="outside the allowed roots"):
        resolve_allowed(str(lure))


def test_allowed_run_checks_every_checkpoint(tree, demo_run):
    """A whole-run view reads every checkpoint of the run: one that leads out (a link to a
    checkpoint outside) refuses the run, rather than leaving that step out."""
    root, outside, _ = tree
    run = root / "run2"
    shutil.copytree(demo_run, run)
    members = allowed_run(str(run))
    assert members[-1].endswith("ckpt-300") and len(members) >= 2
    shutil.copytree(demo_run, outside / "run")
    for f in (outside / "run").glob("ckpt-0.*"):
        (run / f.name).unlink()
        (run / f.name).symlink_to(f)
    with pytest.raises(UserError, match="leads outside the allowed roots"):
        allowed_run(str(run))


# -- in the dashboard ----------------------------------------------------------------------

def _errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def test_page_refuses_paths_outside_roots(tree, demo_run, fresh_caches, monkeypatch, tmp_path):
    """Browse via ?ckpt= outside the roots: st.error naming the roots, no tensor read."""
    root, outside, demo = tree
    shutil.rmtree(demo)
    shutil.copytree(demo_run, demo)
    shutil.copytree(demo_run, outside / "run")
    at = open_app(ckpt=str(outside / "run"))
    assert "outside the allowed roots" in _errors(at)
    assert not at.metric  # nothing of the checkpoint is shown
    (root / "escape").symlink_to(outside / "run", target_is_directory=True)
    at = open_app(ckpt=str(root / "escape"))
    assert "outside the allowed roots" in _errors(at)
    at = open_app(ckpt=f"{root}/../outside/run")
    assert "outside the allowed roots" in _errors(at)


def test_state_file_must_not_lead_out(tree, demo_run, fresh_caches, tmp_path):
    """A state file inside a root that names a checkpoint outside it is refused too."""
    root, outside, demo = tree
    shutil.rmtree(demo)
    shutil.copytree(demo_run, demo)
    shutil.copytree(demo_run, outside / "run")
    lure = root / "lure"
    lure.mkdir()
    target = outside / "run" / "ckpt-300"
    (lure / "checkpoint").write_text(f'model_checkpoint_path: "{target}"\n'
                                     f'all_model_checkpoint_paths: "{target}"\n')
    at = open_app(ckpt=str(lure))
    assert "outside the allowed roots" in _errors(at)
    assert not at.metric
    # The Whole run tab of Compare must not read them either.
    at = open_app(COMPARE, run=str(lure))
    assert "outside the allowed roots" in _errors(at)
    assert not at.success
