"""Compare: two checkpoints side by side, and a whole run across its steps.

Both follow the current checkpoint (see ``common.py``): B is the current checkpoint, A the
step before it in its run, and the Whole run tab shows that run.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from tpuckpt_viz.checkpoint.objectgraph import OBJECT_GRAPH_KEY
from tpuckpt_viz.checkpoint.paths import resolve_checkpoint, run_checkpoints
from tpuckpt_viz.checkpoint.records import KINDS, MODEL_KINDS
from tpuckpt_viz.dashboard import charts
from tpuckpt_viz.dashboard import pagedata as views
from tpuckpt_viz.dashboard.access import check_path
from tpuckpt_viz.dashboard.app_pages.common import (
    CURRENT,
    current_path,
    open_allowed,
    run_members,
    run_steps_of,
    set_current,
    show_error,
    step_label,
    sync_url,
)
from tpuckpt_viz.engine import diff
from tpuckpt_viz.engine.cluster import configured as configured_cluster

# A link to the run alone (?run=DIR) opens that run: its newest checkpoint becomes current.
if CURRENT not in st.session_state and st.query_params.get("run") and not (
        st.query_params.get("ckpt") or st.query_params.get("b")):
    st.session_state[CURRENT] = st.query_params.get("run")
elif CURRENT not in st.session_state and st.query_params.get("b"):
    st.session_state[CURRENT] = st.query_params.get("b")

st.title("Compare training steps")
try:
    current = current_path()
    resolved = resolve_checkpoint(check_path(current))
    run = run_steps_of(current)
except Exception as exc:
    show_error(exc)
    st.stop()
run_dir = resolved.run_dir or os.path.dirname(resolved.prefix)
prefixes = [d["checkpoint"] for d in run]
by_prefix = {d["checkpoint"]: d for d in run}


def _before(prefix: str) -> str:
    """The checkpoint before ``prefix`` in its run ("" when there is none)."""
    if prefix in prefixes:
        i = prefixes.index(prefix)
        return prefixes[i - 1] if i > 0 else (prefixes[1] if len(prefixes) > 1 else "")
    return ""


def _describe(path: str) -> str:
    item = by_prefix.get(path)
    return step_label(item) if item else f"`{path}`"


# The pair on screen, remembered for the current checkpoint it was made for: a checkpoint
# opened on another page starts a new pair (B = it, A = the step before it).
pair = st.session_state.get("cmp_pair")
if pair is None or pair["for"] != current:
    b = resolved.prefix
    a = _before(b)
    if pair is None and st.query_params.get("a") and st.query_params.get("b"):
        a, b = st.query_params.get("a"), st.query_params.get("b")
    pair = st.session_state["cmp_pair"] = {"for": current, "a": a, "b": b}


def _set_side(side: str) -> None:
    value = st.session_state[f"cmp_{side}"].strip()
    pair[side] = value
    if side == "b" and value:  # opening a checkpoint makes it the current one
        set_current(value)
        pair["for"] = value


def _pick_step() -> None:
    chosen = st.session_state["cmp_step"]
    set_current(chosen)
    pair.update({"for": chosen, "b": chosen, "a": _before(chosen)})


# One line that says what each part of the page shows, filled in below.
run_summary = st.empty()
two, whole = st.tabs(["Two checkpoints", "Whole run"])


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


# Kinds the page's rankings and charts leave out unless asked: they are not model weights.
HIDDEN_KINDS = ("slot", "optimizer", "counter", "metric", "other")

with two:
    if len(prefixes) > 1:
        st.session_state["cmp_step"] = pair["b"] if pair["b"] in prefixes else prefixes[-1]
        st.selectbox("Step (B); A is the step before it", prefixes, key="cmp_step",
                     format_func=lambda p: step_label(by_prefix[p]), on_change=_pick_step)
    with st.expander("Any two checkpoints", expanded=not pair["a"] or len(prefixes) <= 1):
        col_a, col_b = st.columns(2)
        st.session_state["cmp_a"], st.session_state["cmp_b"] = pair["a"], pair["b"]
        path_a = col_a.text_input("Checkpoint A", key="cmp_a", on_change=_set_side, args=("a",),
                                  help="A checkpoint folder, prefix or .index file")
        path_b = col_b.text_input("Checkpoint B", key="cmp_b", on_change=_set_side, args=("b",),
                                  help="Opening B makes it the current checkpoint on every page")
    by_key = st.checkbox("Match by raw key instead of readable name", key="cmp_by_key")
    table = None
    if not path_a.strip():
        st.info(f"`{run_dir}` holds one checkpoint ({_describe(pair['b'])}): there is nothing "
                "to compare it with yet. Type a second checkpoint as A above, or open a run "
                "folder that holds several.")
    else:
        try:
            ckpt_a, ckpt_b = open_allowed(path_a.strip()), open_allowed(path_b.strip())
            if ckpt_a.prefix == ckpt_b.prefix:
                st.info(f"A and B are the same checkpoint (`{ckpt_a.prefix}`): pick another "
                        "step, or type another checkpoint as A.")
            else:
                table = _diff(ckpt_a.signature, ckpt_b.signature, ckpt_a.prefix,
                              ckpt_b.prefix, "key" if by_key else "name")
                st.caption(f"A = {_describe(ckpt_a.prefix)} · B = {_describe(ckpt_b.prefix)}")
        except Exception as exc:
            show_error(exc)
    sync_url(ckpt=current, a=path_a.strip(), b=path_b.strip(), run=run_dir, tensor=None)
    if table is not None:
        # The object graph is not a variable: out of the page's counts and tables.
        table = table[(table["key_a"] != OBJECT_GRAPH_KEY) & (table["key_b"] != OBJECT_GRAPH_KEY)]
        f1, f2, f3 = st.columns([1, 1, 1])
        show_all = f1.checkbox("Include slots, counters, other", key="cmp_slots",
                               help="Optimizer slots and state, counters, metrics and other "
                                    "entries are left out of the counts, table and charts "
                                    "unless ticked")
        kinds = f2.multiselect("Kind", [k for k in KINDS if k in set(table["kind"])],
                               key="cmp_kind")
        layers = f3.multiselect("Layer", sorted(table["layer"].dropna().unique()),
                                key="cmp_layer")
        shown = table
        if not show_all and not kinds:
            shown = shown[~shown["kind"].isin(HIDDEN_KINDS)]
        if kinds:
            shown = shown[shown["kind"].isin(kinds)]
        if layers:
            shown = shown[shown["layer"].isin(layers)]
        counts = shown["status"].value_counts()
        cols = st.columns(6)
        for col, status in zip(cols, ["changed", "same", "added", "removed", "shape_changed",
                                      "dtype_changed"]):
            col.metric(status.replace("_", " "), int(counts.get(status, 0)))
        left_out = len(table) - len(shown)
        st.caption(f"{len(shown):,} of {len(table):,} variables"
                   + (f": {left_out:,} optimizer slots and state, counters, metrics and other "
                      "entries left out (tick the box to include them)"
                      if left_out and not show_all and not kinds and not layers else ""))
        columns = ["name", "status", "kind", "layer", "shape_a", "shape_b", "l2_a", "l2_b",
                   "delta_l2", "rel_change", "cosine", "max_abs_delta", "key_a", "key_b"]
        st.dataframe(shown[columns].sort_values("rel_change", ascending=False,
                                                na_position="last"),
                     hide_index=True, width="stretch", key="diff_table", height=500,
                     column_config={"key_a": "raw key A", "key_b": "raw key B"})
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
                h1.plotly_chart(charts.overlaid_histograms(
                    pv.sample_a, pv.sample_b, f"{charts.tail_name(pick, 36)}: A and B"),
                                width="stretch", key="overlay")
                if pv.delta_heat is not None:
                    rows_title, cols_title, note = views.heat_axes(row["shape_a"],
                                                                   pv.delta_strides)
                    h2.plotly_chart(charts.heatmap(
                        pv.delta_heat, f"{charts.tail_name(pick, 36)}: B - A"
                        + (f" ({note})" if note else ""),
                        diverging=True, bad=pv.delta_bad, axes=(rows_title, cols_title)),
                        width="stretch", key="delta_heat")
            except Exception as exc:
                show_error(exc)


@st.cache_data(max_entries=16, show_spinner=False)
def _steps(run_dir: str, members: tuple, match: str, kinds: tuple) -> pd.DataFrame:
    # ``members`` (the run's checkpoints) is part of the key: a refresh after a new save
    # recomputes, and the core's per-checkpoint memo reads only the new checkpoints.
    bar = st.progress(0.0, text="Reading the run...")

    def progress(done, total, label):
        bar.progress(done / max(total, 1),
                     text=f"Checkpoint {done}/{total}: {os.path.basename(label)}")

    records = diff.run_steps(run_dir, match=match or None, kinds=kinds or None,
                             progress=progress, cluster=configured_cluster())
    bar.empty()
    return pd.DataFrame(records)


with whole:
    st.caption(f"Run `{run_dir}`, the run of the current checkpoint.")
    r1, r2, r3 = st.columns([2, 2, 1])
    match = r1.text_input("Name pattern (regular expression)", key="run_match")
    run_kinds = r2.multiselect("Kind", list(KINDS), default=list(MODEL_KINDS), key="run_kind")
    r3.button("Refresh", key="run_refresh", help="Pick up checkpoints saved since")
    steps = None
    if len(prefixes) <= 1:
        st.info(f"Run `{run_dir}` holds one checkpoint ({_describe(resolved.prefix)}): "
                "a run view needs at least two. Open a folder with several checkpoints, or "
                "save another one.")
    else:
        try:
            members = tuple(run_members(run_dir))
            for member in run_checkpoints(run_dir):  # a state file must not lead out of roots
                check_path(member)
            steps = _steps(run_dir, members, match, tuple(run_kinds))
        except Exception as exc:
            show_error(exc)
    if steps is not None and len(steps):
        bad = diff.first_nonfinite(steps.to_dict("records"))
        labels = list(steps.drop_duplicates("save").sort_values("save")["label"])
        numbered = labels[0].startswith("step ")
        step_list = ", ".join(label.split(" ", 1)[1] for label in labels)
        glance = (f"Run `{run_dir}`: {len(labels)} checkpoints "
                  + (f"at steps {step_list}. " if numbered else
                     "without step numbers (shown in the order saved). "))
        if bad:
            run_summary.error(glance + f"First NaN/Inf at {bad['label']}: `{bad['name']}` "
                              f"({bad['nan']} NaN, {bad['inf']} Inf). See the Whole run tab.")
        else:
            run_summary.success(glance + f"No NaN or Inf in {len(labels)} checkpoints "
                                f"({steps['name'].nunique()} variables); norms and update "
                                "ratios in the Whole run tab.")
        c1, c2 = st.columns(2)
        mark = bad["label"] if bad else None
        c1.plotly_chart(charts.steps_lines(steps, "l2", "L2 norm per layer (finite values)",
                                           mark=mark), width="stretch", key="l2_lines")
        if steps["update_ratio"].notna().any():
            c2.plotly_chart(charts.steps_lines(steps, "update_ratio", "Update ratio per layer",
                                               mark=mark), width="stretch", key="ratio_lines")
            st.plotly_chart(charts.update_heatmap(steps), width="stretch", key="ratio_heat")
        columns = ["label", "step", "name", "kind", "layer", "l2", "delta_l2", "update_ratio",
                   "nan", "inf"]
        st.dataframe(steps[columns], hide_index=True, width="stretch", key="steps_table",
                     height=420, column_config={"label": "checkpoint"})
        st.download_button("Download CSV", steps.to_csv(index=False), file_name="steps.csv",
                           mime="text/csv", key="steps_csv")
    elif steps is not None:
        st.info("No variable matches the filters.")
