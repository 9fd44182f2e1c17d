"""Every Streamlit cache of the dashboard, and the one place that opens a path.

Pages call these and only render. Sizes come from the settings table (``config.SETTINGS``):
``open_checkpoints`` opened checkpoints (a resource cache shared by every session),
``cache_entries`` results per cached function, ``run_ttl_s`` and ``bucket_ttl_s`` for how long
a run's checkpoints and a bucket's runs stay listed.

Cached functions take the checkpoint as an unhashed ``_ckpt`` argument, as Streamlit's docs
show (the leading underscore leaves it out of the key): its ``prefix`` and ``signature`` (the
index file's size and modification time) make the key, so a rewritten checkpoint is read
again and the same checkpoint opened on two pages is read once.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from tpuckpt_viz import config, demo
from tpuckpt_viz.checkpoint import remote
from tpuckpt_viz.checkpoint.reader import Checkpoint, open_checkpoint
from tpuckpt_viz.dashboard import pagedata
from tpuckpt_viz.dashboard.access import allowed_run, is_allowed, resolve_allowed
from tpuckpt_viz.engine import diff
from tpuckpt_viz.engine.cluster import configured as configured_cluster
from tpuckpt_viz.errors import UserError

# Read once, when the dashboard first imports this module (``serve`` has checked them).
OPEN_CHECKPOINTS = config.get_int("open_checkpoints")
RESULTS = config.get_int("cache_entries")
RUN_TTL_S = config.get_int("run_ttl_s")
BUCKET_TTL_S = config.get_int("bucket_ttl_s")


@st.cache_resource(show_spinner="Making the demo run (a few seconds, once)...")
def demo_run() -> str:
    """The demo run's folder, made on first use."""
    return str(demo.make_demo(config.demo_dir()))


# -- opening ---------------------------------------------------------------------------------

@st.cache_resource(max_entries=OPEN_CHECKPOINTS, show_spinner=False)
def checkpoint(prefix: str, signature: tuple) -> Checkpoint:
    """The opened checkpoint at ``prefix``; ``signature`` (see :func:`file_signature`) is in
    the key so that a rewritten checkpoint is opened again. Call :func:`open_allowed`."""
    return open_checkpoint(prefix)


def file_signature(prefix: str) -> tuple:
    """Size and modification time of the file that identifies the checkpoint (its ``.index``,
    or the file itself for a V1 or Keras file), read without opening it; () when unknown."""
    if remote.handles(prefix):  # from the folder's listing, itself cached for a few seconds
        try:
            meta = remote.info(prefix + ".index")
            return (meta.get("size"), str(meta.get("updated") or meta.get("mtime") or ""))
        except UserError:
            return ()
    for candidate in (prefix + ".index", prefix):
        try:
            stat = os.stat(candidate)
            return (stat.st_size, stat.st_mtime_ns)
        except OSError:
            continue
    return ()


def open_allowed(path: str) -> Checkpoint:
    """The one way the pages open a path: checked against the allowed roots and resolved
    (:func:`tpuckpt_viz.dashboard.access.resolve_allowed`), then opened (cached)."""
    resolved = resolve_allowed(path)
    return checkpoint(resolved.prefix, file_signature(resolved.prefix))


# -- one checkpoint (Browse) -----------------------------------------------------------------

@st.cache_data(max_entries=RESULTS, show_spinner="Reading the index...")
def variable_table(_ckpt: Checkpoint, prefix: str, signature: tuple) -> pd.DataFrame:
    """:func:`tpuckpt_viz.dashboard.pagedata.variable_table` of ``_ckpt``."""
    return pagedata.variable_table(_ckpt)


@st.cache_data(max_entries=RESULTS, show_spinner="Reading the object graph...")
def object_tree(_ckpt: Checkpoint, prefix: str, signature: tuple) -> pd.DataFrame | None:
    """:func:`tpuckpt_viz.dashboard.pagedata.object_tree` of ``_ckpt``."""
    return pagedata.object_tree(_ckpt, variable_table(_ckpt, prefix, signature))


@st.cache_data(max_entries=RESULTS, show_spinner="Reading the tensor...")
def tensor_view(_ckpt: Checkpoint, prefix: str, signature: tuple,
                key: str) -> pagedata.TensorView:
    """:func:`tpuckpt_viz.dashboard.pagedata.tensor_view` of ``key`` in ``_ckpt``."""
    return pagedata.tensor_view(_ckpt, key)


# -- two checkpoints and a run (Compare) -----------------------------------------------------

@st.cache_data(max_entries=RESULTS, show_spinner=False)
def diff_table(_a: Checkpoint, _b: Checkpoint, prefix_a: str, signature_a: tuple,
               prefix_b: str, signature_b: tuple, by: str) -> pd.DataFrame:
    """The diff records of A and B (paired by ``by``: ``name`` or ``key``) as a DataFrame,
    with a progress bar while it reads."""
    bar = st.progress(0.0, text="Comparing tensors...")

    def progress(done, total, label):
        bar.progress(done / max(total, 1), text=f"Comparing {done}/{total}: {label}")

    records = diff.diff_checkpoints(_a, _b, by=by, progress=progress,
                                    cluster=configured_cluster())
    bar.empty()
    return pd.DataFrame(records)


@st.cache_data(max_entries=RESULTS, show_spinner=False)
def pair_view(_a: Checkpoint, _b: Checkpoint, prefix_a: str, signature_a: tuple, key_a: str,
              prefix_b: str, signature_b: tuple, key_b: str) -> pagedata.PairView:
    """:func:`tpuckpt_viz.dashboard.pagedata.pair_view` of ``key_a`` in A and ``key_b`` in B."""
    return pagedata.pair_view(_a, key_a, _b, key_b)


@st.cache_data(max_entries=RESULTS, ttl=RUN_TTL_S, show_spinner=False)
def run_members(path: str) -> list[str]:
    """The allowed checkpoints of the run that ``path`` belongs to (newest last); listed again
    after ``run_ttl_s``, since a run that is still training gains checkpoints."""
    from tpuckpt_viz.checkpoint.paths import run_checkpoints

    resolved = resolve_allowed(path)
    folder = resolved.run_dir or os.path.dirname(resolved.prefix)
    try:
        return [p for p in run_checkpoints(folder) if is_allowed(p)]
    except UserError:
        return [resolved.prefix]


@st.cache_data(max_entries=RESULTS, ttl=RUN_TTL_S, show_spinner=False)
def run_steps_of(path: str) -> list[dict]:
    """The run that ``path`` belongs to, in training order: per checkpoint its ``checkpoint``
    (prefix), ``step``, ``step_source``, ``save`` and ``label`` (see
    :func:`tpuckpt_viz.engine.diff.run_order`)."""
    order = diff.run_order(run_members(path), opener=open_allowed)
    return [{k: v for k, v in d.items() if not k.startswith("_")} for d in order]


def run_steps(run_dir: str, match: str, kinds: tuple) -> pd.DataFrame:
    """The steps records of the whole run in ``run_dir`` (every checkpoint checked against the
    roots first), filtered by ``match`` and ``kinds``; cached by the run's checkpoints, so a
    checkpoint saved since is read on the next call and the others come from the core's memo."""
    return _steps(run_dir, tuple(allowed_run(run_dir)), match, tuple(kinds))


@st.cache_data(max_entries=RESULTS, show_spinner=False)
def _steps(run_dir: str, members: tuple, match: str, kinds: tuple) -> pd.DataFrame:
    bar = st.progress(0.0, text="Reading the run...")

    def progress(done, total, label):
        bar.progress(done / max(total, 1),
                     text=f"Checkpoint {done}/{total}: {os.path.basename(label)}")

    records = diff.run_steps(run_dir, match=match or None, kinds=kinds or None,
                             progress=progress, cluster=configured_cluster())
    bar.empty()
    return pd.DataFrame(records)


# -- remote roots ----------------------------------------------------------------------------

@st.cache_data(max_entries=RESULTS, ttl=BUCKET_TTL_S,
               show_spinner="Listing the runs in the bucket...")
def bucket_runs(root: str) -> list[str]:
    """Folders under the remote root ``root`` that hold checkpoints (see remote.find_runs);
    listed again after ``bucket_ttl_s``."""
    return remote.find_runs(root)
