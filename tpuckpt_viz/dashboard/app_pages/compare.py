"""Compare: two checkpoints side by side, and a whole run across its steps."""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from tpuckpt_viz.checkpoint.paths import resolve_checkpoint, run_checkpoints
from tpuckpt_viz.checkpoint.records import KINDS, MODEL_KINDS
from tpuckpt_viz.dashboard import charts
from tpuckpt_viz.dashboard import pagedata as views
from tpuckpt_viz.dashboard.access import check_path
from tpuckpt_viz.dashboard.app_pages.common import (
    default_path,
    open_allowed,
    path_input,
    run_members,
    show_error,
)
from tpuckpt_viz.engine import diff
from tpuckpt_viz.engine.cluster import configured as configured_cluster

st.title("Compare training steps")
# The run at a glance, filled in once the Whole run tab has read the run: opening the page is
# enough to see the run's steps and its first NaN/Inf.
run_summary = st.empty()
two, run = st.tabs(["Two checkpoints", "Whole run"])


def _default_pair() -> tuple[str, str]:
    """The two newest checkpoints of the default run."""
    try:
        members = run_members(default_path())
    except Exception:
        return default_path(), default_path()
    if len(members) >= 2:
        return members[-2], members[-1]
    return (members[0], members[0]) if members else (default_path(), default_path())


@st.cache_data(max_entries=32, show_spinner=False)
def _diff(sig_a: tuple, sig_b: tuple, prefix_a: str, prefix_b: str, by: str) -> pd.DataFrame:
    a, b = open_allowed(prefix_a), open_allowed(prefix_b)
    bar = st.progress(0.0, text="Comparing tensors...")

    def progress(done, total, label):
        bar.progress(done / max(total, 1), text=f"Comparing {done}/{total}: {label}")

    records = diff.diff_checkpoints(a, b, by=by, progress=progress, cluster=configured_cluster())
    bar.empty()
    return pd.DataFrame(records)


@st.cache_data(max_entries=32, show_spinner=False)
def _pair_view(sig_a, sig_b, prefix_a, key_a, prefix_b, key_b) -> views.PairView:
    return views.pair_view(open_allowed(prefix_a), key_a, open_allowed(prefix_b), key_b)


with two:
    default_a, default_b = _default_pair()
    col_a, col_b = st.columns(2)
    with col_a:
        path_a = path_input("Checkpoint A", "a", "cmp_a", default_a)
    with col_b:
        path_b = path_input("Checkpoint B", "b", "cmp_b", default_b)
    by_key = st.checkbox("Match by raw key instead of readable name", key="cmp_by_key")
    try:
        ckpt_a, ckpt_b = open_allowed(path_a), open_allowed(path_b)
        table = _diff(ckpt_a.signature, ckpt_b.signature, ckpt_a.prefix, ckpt_b.prefix,
                      "key" if by_key else "name")
    except Exception as exc:
        show_error(exc)
        table = None
    if table is not None:
        counts = table["status"].value_counts()
        cols = st.columns(6)
        for col, status in zip(cols, ["changed", "same", "added", "removed", "shape_changed",
                                      "dtype_changed"]):
            col.metric(status.replace("_", " "), int(counts.get(status, 0)))
        f1, f2, f3 = st.columns([1, 1, 1])
        show_slots = f1.checkbox("Show optimizer slots and state", key="cmp_slots")
        kinds = f2.multiselect("Kind", [k for k in KINDS if k in set(table["kind"])],
                               key="cmp_kind")
        layers = f3.multiselect("Layer", sorted(table["layer"].dropna().unique()),
                                key="cmp_layer")
        shown = table
        if not show_slots and not kinds:
            shown = shown[shown["kind"].isin(MODEL_KINDS + ("counter", "metric", "other"))]
        if kinds:
            shown = shown[shown["kind"].isin(kinds)]
        if layers:
            shown = shown[shown["layer"].isin(layers)]
        columns = ["name", "status", "kind", "layer", "shape_a", "shape_b", "l2_a", "l2_b",
                   "delta_l2", "rel_change", "cosine", "max_abs_delta", "key_a", "key_b"]
        st.dataframe(shown[columns].sort_values("rel_change", ascending=False,
                                                na_position="last"),
                     hide_index=True, width="stretch", key="diff_table")
        st.download_button("Download CSV", shown.to_csv(index=False), file_name="diff.csv",
                           mime="text/csv", key="diff_csv")
        if shown["rel_change"].notna().any():
            c1, c2 = st.columns(2)
            c1.plotly_chart(charts.change_by_layer(shown), width="stretch", key="bars")
            c2.plotly_chart(charts.change_vs_size(shown), width="stretch", key="scatter")
        both = shown[shown["status"].isin(["changed", "same"])
                     & ~shown["dtype_a"].isin(["string"])]
        if len(both):
            # Most changed first, as in the table; the default is the most changed weight.
            both = both.sort_values("rel_change", ascending=False, na_position="last")
            weights = list(both["kind"] == "weight")
            pick = st.selectbox("Variable to compare", list(both["name"]), key="cmp_var",
                                index=weights.index(True) if True in weights else 0)
            row = both[both["name"] == pick].iloc[0]
            try:
                pv = _pair_view(ckpt_a.signature, ckpt_b.signature, ckpt_a.prefix,
                                row["key_a"], ckpt_b.prefix, row["key_b"])
                h1, h2 = st.columns(2)
                h1.plotly_chart(charts.overlaid_histograms(pv.sample_a, pv.sample_b,
                                                           f"{pick}: A and B"),
                                width="stretch", key="overlay")
                if pv.delta_heat is not None:
                    sr, sc = pv.delta_strides
                    note = "" if (sr, sc) == (1, 1) else f" (block means of {sr}x{sc} cells)"
                    h2.plotly_chart(charts.heatmap(pv.delta_heat, f"{pick}: B - A{note}",
                                                   diverging=True),
                                    width="stretch", key="delta_heat")
            except Exception as exc:
                show_error(exc)


@st.cache_data(max_entries=16, show_spinner=False)
def _steps(run_dir: str, members: tuple, match: str, kinds: tuple) -> pd.DataFrame:
    # ``members`` (the run's checkpoints) is part of the key: a refresh after a new save
    # recomputes, and the core's per-checkpoint memo reads only the new checkpoints.
    bar = st.progress(0.0, text="Reading the run...")

    def progress(done, total, label):
        bar.progress(done / max(total, 1), text=f"Checkpoint {done}/{total}: {os.path.basename(label)}")

    records = diff.run_steps(run_dir, match=match or None, kinds=kinds or None,
                             progress=progress, cluster=configured_cluster())
    bar.empty()
    return pd.DataFrame(records)


with run:
    run_path = path_input("Run folder", "run", "run_dir", os.path.dirname(run_members(default_path())[-1])
                          if run_members(default_path()) else default_path())
    r1, r2, r3 = st.columns([2, 2, 1])
    match = r1.text_input("Name pattern (regular expression)", key="run_match")
    run_kinds = r2.multiselect("Kind", list(KINDS), default=list(MODEL_KINDS), key="run_kind")
    r3.button("Refresh", key="run_refresh", help="Pick up checkpoints saved since")
    try:
        folder = check_path(run_path)
        resolved = resolve_checkpoint(folder)
        run_dir = resolved.run_dir or os.path.dirname(resolved.prefix)
        members = tuple(run_members(run_dir))
        for member in run_checkpoints(run_dir):  # a state file must not lead out of the roots
            check_path(member)
        steps = _steps(run_dir, members, match, tuple(run_kinds))
    except Exception as exc:
        show_error(exc)
        steps = None
    if steps is not None and len(steps):
        bad = diff.first_nonfinite(steps.to_dict("records"))
        step_list = ", ".join(str(s) for s in steps["step"].drop_duplicates())
        glance = (f"Run `{run_dir}`: {steps['step'].nunique()} checkpoints at steps "
                  f"{step_list}. ")
        if bad:
            run_summary.error(glance + f"First NaN/Inf at step {bad['step']}: `{bad['name']}` "
                              f"({bad['nan']} NaN, {bad['inf']} Inf). See the Whole run tab.")
        else:
            run_summary.success(glance + f"No NaN or Inf in {steps['step'].nunique()} "
                                f"checkpoints ({steps['name'].nunique()} variables); norms "
                                "and update ratios in the Whole run tab.")
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.steps_lines(steps, "l2", "L2 norm per layer"), width="stretch",
                        key="l2_lines")
        if steps["update_ratio"].notna().any():
            c2.plotly_chart(charts.steps_lines(steps, "update_ratio", "Update ratio per layer"),
                            width="stretch", key="ratio_lines")
            st.plotly_chart(charts.update_heatmap(steps), width="stretch", key="ratio_heat")
        st.dataframe(steps.drop(columns=["checkpoint"]), hide_index=True, width="stretch",
                     key="steps_table")
        st.download_button("Download CSV", steps.to_csv(index=False), file_name="steps.csv",
                           mime="text/csv", key="steps_csv")
    elif steps is not None:
        st.info("No variable matches the filters.")
