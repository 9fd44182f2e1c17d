"""What every page shares: the checkpoint picker, cached readers, and error display."""

from __future__ import annotations

import os
import sys

import streamlit as st

from tpuckpt_viz import config, demo
from tpuckpt_viz.checkpoint import remote
from tpuckpt_viz.checkpoint.paths import resolve_checkpoint, run_checkpoints
from tpuckpt_viz.checkpoint.reader import Checkpoint, open_checkpoint
from tpuckpt_viz.dashboard.access import allowed_roots, check_path
from tpuckpt_viz.errors import UserError, first_line


@st.cache_resource(show_spinner="Making the demo run (a few seconds, once)...")
def demo_run() -> str:
    """The demo run's folder, made on first use."""
    return str(demo.make_demo(config.demo_dir()))


def _cli_default() -> str | None:
    """``serve PATH`` passes ``--ckpt PATH`` after ``--`` to the script."""
    argv = sys.argv[1:]
    if "--ckpt" in argv and argv.index("--ckpt") + 1 < len(argv):
        return argv[argv.index("--ckpt") + 1]
    return None


def default_path() -> str:
    return _cli_default() or demo_run()


@st.cache_resource(max_entries=64, show_spinner=False)
def _open(prefix: str, signature_hint: tuple) -> Checkpoint:
    return open_checkpoint(prefix)


def _signature_hint(prefix: str) -> tuple:
    """Size and mtime of the index, so a rewritten checkpoint is reopened."""
    if remote.handles(prefix):  # from the folder's listing, itself cached for a few seconds
        try:
            meta = remote.info(prefix + ".index")
            return (meta.get("size"), str(meta.get("updated") or meta.get("mtime") or ""))
        except UserError:
            return ()
    try:
        st_ = os.stat(prefix + ".index")
        return (st_.st_size, st_.st_mtime_ns)
    except OSError:
        return ()


def open_allowed(path: str) -> Checkpoint:
    """Check ``path`` against the allowed roots, resolve it and open it (cached)."""
    resolved_path = check_path(path)
    resolved = resolve_checkpoint(resolved_path)
    check_path(resolved.prefix)  # a state file must not lead out of the roots either
    return _open(resolved.prefix, _signature_hint(resolved.prefix))


# A short ttl: a run that is still training gains checkpoints while the page is open.
@st.cache_data(max_entries=64, ttl=5, show_spinner=False)
def run_members(path: str) -> list[str]:
    """The checkpoints of the run that ``path`` belongs to (newest last)."""
    resolved = resolve_checkpoint(check_path(path))
    folder = resolved.run_dir or os.path.dirname(resolved.prefix)
    try:
        return [p for p in run_checkpoints(folder) if is_allowed(p)]
    except UserError:
        return [resolved.prefix]


def is_allowed(path: str) -> bool:
    """Whether ``path`` (and every file opening it reads) lies inside the allowed roots."""
    try:
        check_path(path)
        return True
    except UserError:
        return False


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


@st.cache_data(max_entries=64, ttl=5, show_spinner=False)
def run_steps_of(path: str) -> list[dict]:
    """The run that ``path`` belongs to, in training order: per checkpoint its ``checkpoint``
    (prefix), ``step``, ``step_source``, ``save`` and ``label`` (see
    :func:`tpuckpt_viz.engine.diff.run_order`)."""
    from tpuckpt_viz.engine.diff import run_order

    order = run_order(run_members(path), opener=open_allowed)
    return [{k: v for k, v in d.items() if not k.startswith("_")} for d in order]


def step_label(item: dict) -> str:
    """``step 300 · ckpt-300``: the step and the file it is in."""
    return f"{item['label']} · {os.path.basename(item['checkpoint'])}"


# Listing a bucket costs a request per 1000 names: cached briefly, new runs show up soon.
@st.cache_data(max_entries=16, ttl=30, show_spinner="Listing the runs in the bucket...")
def bucket_runs(root: str) -> list[str]:
    """Folders under the remote root ``root`` that hold checkpoints (see remote.find_runs)."""
    return remote.find_runs(root)


def bucket_run_picker(key: str) -> None:
    """For ``gs://`` (and other fsspec) roots: choose a run from the bucket instead of typing
    it; the choice fills the path box ``key``. Nothing shows without a remote root."""
    roots = [r for r in allowed_roots() if remote.handles(r)]
    if not roots:
        return
    runs: list[str] = []
    for root in roots:
        try:
            runs += bucket_runs(root)
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
                      "every 30 s)")


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
    current); returns the chosen checkpoint prefix. A single checkpoint: its prefix."""
    resolved = resolve_checkpoint(check_path(path))
    run = run_steps_of(path)
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
        return open_allowed(pick_step(path, key + "_step"))
    except UserError as exc:
        show_error(exc)
    except Exception as exc:  # never a traceback in the page
        show_error(exc)
    return None


def path_input(label: str, param: str, key: str, default: str) -> str:
    """A text box for a path, preset from ``?param=`` in the URL on the session's first run."""
    if key not in st.session_state:
        st.session_state[key] = st.query_params.get(param) or default
    value = st.text_input(label, key=key,
                          help="A checkpoint folder, prefix, .index file or SavedModel folder. "
                               "Allowed roots: " + ", ".join(allowed_roots()))
    return value.strip()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
