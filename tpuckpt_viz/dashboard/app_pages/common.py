"""What every page shares: the current checkpoint, its pickers, and error display.

Caches and opening live in ``dashboard/cached.py``; the data the pages show in the page-data
modules (``pagedata``, ``comparedata``, ``inferdata``).
"""

from __future__ import annotations

import sys

import streamlit as st

from tpuckpt_viz.checkpoint import remote
from tpuckpt_viz.checkpoint.reader import Checkpoint
from tpuckpt_viz.dashboard import cached
from tpuckpt_viz.dashboard.access import allowed_roots, resolve_allowed
from tpuckpt_viz.dashboard.comparedata import step_label
from tpuckpt_viz.errors import UserError, first_line


def _cli_default() -> str | None:
    """``serve PATH`` passes ``--ckpt PATH`` after ``--`` to the script."""
    argv = sys.argv[1:]
    if "--ckpt" in argv and argv.index("--ckpt") + 1 < len(argv):
        return argv[argv.index("--ckpt") + 1]
    return None


def default_path() -> str:
    """The checkpoint a session starts on: ``serve PATH``, else the demo run."""
    return _cli_default() or cached.demo_run()


def show_error(exc: BaseException) -> None:
    """One clear line in the page, never a traceback."""
    if isinstance(exc, UserError):
        st.error(str(exc), icon=":material/error:")
    else:
        st.error(f"{type(exc).__name__}: {first_line(exc)}", icon=":material/error:")


# -- the current checkpoint, one for every page -----------------------------------------------
#
# ``st.session_state[CURRENT]`` holds the path of the checkpoint on screen (as typed, linked or
# picked: a folder, a prefix, a SavedModel). It is not a widget's key, so it survives page
# switches (Streamlit drops the state of widgets that a page does not draw). It starts from
# ``?ckpt=`` (a link), else ``serve PATH``, else the demo; every page writes it back to the URL.

CURRENT = "current_ckpt"


def current_path() -> str:
    """The current checkpoint's path (set on the session's first run)."""
    if CURRENT not in st.session_state:
        st.session_state[CURRENT] = (st.query_params.get("ckpt") or "").strip() or default_path()
    return st.session_state[CURRENT]


def set_current(path: str) -> None:
    """Make ``path`` the current checkpoint on every page, and put it in the URL."""
    path = (path or "").strip()
    if path:
        st.session_state[CURRENT] = path
        st.query_params["ckpt"] = path


def sync_url(**params: str | None) -> None:
    """Write what is on screen into the URL (None or "" removes a parameter)."""
    for name, value in params.items():
        if value:
            if st.query_params.get(name) != str(value):
                st.query_params[name] = str(value)
        elif name in st.query_params:
            del st.query_params[name]


def bucket_run_picker(key: str) -> None:
    """For ``gs://`` (and other fsspec) roots: choose a run from the bucket instead of typing
    it; the choice fills the path box ``key``. Nothing shows without a remote root."""
    roots = [r for r in allowed_roots() if remote.handles(r)]
    if not roots:
        return
    runs: list[str] = []
    for root in roots:
        try:
            runs += cached.bucket_runs(root)
        except UserError as exc:
            show_error(exc)
    if not runs:
        return

    def chosen() -> None:
        value = st.session_state.get(key + "_bucket")
        if value:
            set_current(value)
            st.session_state.pop(key + "_step", None)

    current = current_path()
    st.selectbox("Run in the bucket", runs, key=key + "_bucket", on_change=chosen,
                 index=runs.index(current) if current in runs else None,
                 placeholder="Choose a folder that holds checkpoints",
                 help="Folders under the remote roots that hold checkpoints (listed again "
                      f"every {cached.BUCKET_TTL_S} s)")


def pick_path(label: str, key: str, help_text: str | None = None) -> str:
    """The path box of the current checkpoint; typing in it changes the current one."""
    bucket_run_picker(key)
    st.session_state[key] = current_path()
    value = st.text_input(label, key=key, on_change=lambda: set_current(st.session_state[key]),
                          help=help_text or "A checkpoint folder, prefix, .index file or "
                          "SavedModel folder. Allowed roots: " + ", ".join(allowed_roots()))
    return value.strip()


def pick_step(path: str, key: str, label: str = "Step of this run") -> str:
    """For a run of several checkpoints, a choice among its steps (picking one makes it
    current); returns the chosen checkpoint prefix, inside the allowed roots (the run lists
    only allowed ones). A single checkpoint: its prefix."""
    resolved = resolve_allowed(path)
    run = cached.run_steps_of(path)
    if len(run) <= 1:
        return resolved.prefix
    prefixes = [d["checkpoint"] for d in run]
    labels = {d["checkpoint"]: step_label(d) for d in run}
    current = resolved.prefix if resolved.prefix in prefixes else prefixes[-1]
    st.session_state[key] = current
    return st.selectbox(label, prefixes, key=key, format_func=labels.get,
                        on_change=lambda: set_current(st.session_state[key]),
                        help="The run's checkpoints in training order, by step (a step "
                             "variable, else the optimizer's iterations, else the number in "
                             "the file name, else save_counter)")


def pick_checkpoint(label: str = "Checkpoint", key: str = "ckpt_path") -> Checkpoint | None:
    """The checkpoint picker: the current checkpoint's path and, for a run, its steps."""
    path = pick_path(label, key)
    sync_url(ckpt=path)
    try:
        return cached.open_allowed(pick_step(path, key + "_step"))
    except Exception as exc:  # never a traceback in the page
        show_error(exc)
    return None
