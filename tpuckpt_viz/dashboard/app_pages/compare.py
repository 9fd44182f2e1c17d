"""Compare: two checkpoints side by side, and a whole run across its steps.

Both follow the current checkpoint (see ``common.py``): B is the current checkpoint, A the
step before it in its run, and the Whole run tab shows that run. The data comes from
``comparedata`` and ``cached``; this page lays out widgets and renders.
"""

from __future__ import annotations

import os

import streamlit as st

from tpuckpt_viz.checkpoint.records import KINDS, MODEL_KINDS
from tpuckpt_viz.dashboard import cached, charts
from tpuckpt_viz.dashboard import comparedata as data
from tpuckpt_viz.dashboard.access import resolve_allowed
from tpuckpt_viz.dashboard.app_pages.common import (
    CURRENT,
    current_path,
    set_current,
    show_error,
    sync_url,
)
from tpuckpt_viz.dashboard.pagedata import heat_axes

st.title("Compare training steps")
linked = data.linked_checkpoint(*(st.query_params.get(k) for k in ("ckpt", "b", "run")))
if CURRENT not in st.session_state and linked:  # a link: ?ckpt=, else ?b=, else ?run=
    st.session_state[CURRENT] = linked
try:
    current = current_path()
    resolved = resolve_allowed(current)
    run = cached.run_steps_of(current)
except Exception as exc:
    show_error(exc)
    st.stop()
run_dir = resolved.run_dir or os.path.dirname(resolved.prefix)
prefixes = [d["checkpoint"] for d in run]

# The pair on screen, remembered for the current checkpoint it was made for: a checkpoint
# opened on another page starts a new pair (B = it, A = the step before it).
pair = st.session_state.get("cmp_pair")
if pair is None or pair["for"] != current:
    links = (st.query_params.get("a"), st.query_params.get("b")) if pair is None else ()
    pair = st.session_state["cmp_pair"] = data.initial_pair(current, resolved.prefix,
                                                            prefixes, *links)


def _set_side(side: str) -> None:
    value = st.session_state[f"cmp_{side}"].strip()
    pair[side] = value
    if side == "b" and value:  # opening a checkpoint makes it the current one
        set_current(value)
        pair["for"] = value


def _pick_step() -> None:
    chosen = st.session_state["cmp_step"]
    set_current(chosen)
    pair.update({"for": chosen, "b": chosen, "a": data.step_before(prefixes, chosen)})


def _two_checkpoints(ckpt_a, ckpt_b, by: str) -> None:
    """The diff of A and B: counts, table, charts, and one variable's values side by side."""
    table = data.variables_only(cached.diff_table(ckpt_a, ckpt_b, ckpt_a.prefix,
                                                  ckpt_a.signature, ckpt_b.prefix,
                                                  ckpt_b.signature, by))
    f1, f2, f3 = st.columns([1, 1, 1])
    show_all = f1.checkbox("Include slots, counters, other", key="cmp_slots",
                           help="Optimizer slots and state, counters, metrics and other "
                                "entries are left out of the counts, table and charts "
                                "unless ticked")
    kinds = f2.multiselect("Kind", [k for k in KINDS if k in set(table["kind"])], key="cmp_kind")
    layers = f3.multiselect("Layer", sorted(table["layer"].dropna().unique()), key="cmp_layer")
    view = data.filter_diff(table, show_all, kinds, layers)
    for col, (status, count) in zip(st.columns(len(view.counts)), view.counts.items()):
        col.metric(status.replace("_", " "), count)
    st.caption(view.caption)
    shown = view.shown
    st.dataframe(view.table, hide_index=True, width="stretch", key="diff_table",
                 height=500, column_config={"key_a": "raw key A", "key_b": "raw key B"})
    st.download_button("Download CSV", shown.to_csv(index=False), file_name="diff.csv",
                       mime="text/csv", key="diff_csv")
    if shown["rel_change"].notna().any():
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.change_by_layer(shown), width="stretch", key="bars")
        c2.plotly_chart(charts.change_vs_size(shown), width="stretch", key="scatter")
    names, first = data.comparable(shown)
    if not names:
        return
    pick = st.selectbox("Variable to compare", names, key="cmp_var", index=first)
    row = shown[shown["name"] == pick].iloc[0]
    pv = cached.pair_view(ckpt_a, ckpt_b, ckpt_a.prefix, ckpt_a.signature, row["key_a"],
                          ckpt_b.prefix, ckpt_b.signature, row["key_b"])
    title = charts.tail_name(pick, 36)
    h1, h2 = st.columns(2)
    h1.plotly_chart(charts.overlaid_histograms(pv.sample_a, pv.sample_b, f"{title}: A and B"),
                    width="stretch", key="overlay")
    if pv.delta_heat is not None:
        rows_title, cols_title, note = heat_axes(row["shape_a"], pv.delta_strides)
        h2.plotly_chart(charts.heatmap(pv.delta_heat, f"{title}: B - A"
                                       + (f" ({note})" if note else ""), diverging=True,
                                       bad=pv.delta_bad, axes=(rows_title, cols_title)),
                        width="stretch", key="delta_heat")


def _whole_run(steps, banner) -> None:
    """The run at a glance (in ``banner``, above the tabs), its norms and update ratios per
    layer, and its table."""
    summary = data.run_summary(steps, run_dir)
    (banner.error if summary.bad_label else banner.success)(summary.text)
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.steps_lines(steps, "l2", "L2 norm per layer (finite values)",
                                       mark=summary.bad_label), width="stretch", key="l2_lines")
    if steps["update_ratio"].notna().any():
        c2.plotly_chart(charts.steps_lines(steps, "update_ratio", "Update ratio per layer",
                                           mark=summary.bad_label), width="stretch",
                        key="ratio_lines")
        st.plotly_chart(charts.update_heatmap(steps), width="stretch", key="ratio_heat")
    st.dataframe(steps[data.STEPS_COLUMNS], hide_index=True, width="stretch", key="steps_table",
                 height=420, column_config={"label": "checkpoint"})
    st.download_button("Download CSV", steps.to_csv(index=False), file_name="steps.csv",
                       mime="text/csv", key="steps_csv")


# One line that says what each part of the page shows, filled in below.
run_summary = st.empty()
two, whole = st.tabs(["Two checkpoints", "Whole run"])

with two:
    if len(prefixes) > 1:
        st.session_state["cmp_step"] = pair["b"] if pair["b"] in prefixes else prefixes[-1]
        st.selectbox("Step (B); A is the step before it", prefixes, key="cmp_step",
                     format_func=lambda p: data.describe(run, p), on_change=_pick_step)
    with st.expander("Any two checkpoints", expanded=not pair["a"] or len(prefixes) <= 1):
        col_a, col_b = st.columns(2)
        st.session_state["cmp_a"], st.session_state["cmp_b"] = pair["a"], pair["b"]
        path_a = col_a.text_input("Checkpoint A", key="cmp_a", on_change=_set_side, args=("a",),
                                  help="A checkpoint folder, prefix or .index file").strip()
        path_b = col_b.text_input("Checkpoint B", key="cmp_b", on_change=_set_side, args=("b",),
                                  help="Opening B makes it the current checkpoint on every "
                                       "page").strip()
    by_key = st.checkbox("Match by raw key instead of readable name", key="cmp_by_key")
    sync_url(ckpt=current, a=path_a, b=path_b, run=run_dir, tensor=None)
    if not path_a:
        st.info(f"`{run_dir}` holds one checkpoint ({data.describe(run, pair['b'])}): there "
                "is nothing to compare it with yet. Type a second checkpoint as A above, or "
                "open a run folder that holds several.")
    else:
        try:
            ckpt_a, ckpt_b = cached.open_allowed(path_a), cached.open_allowed(path_b)
            if ckpt_a.prefix == ckpt_b.prefix:
                st.info(f"A and B are the same checkpoint (`{ckpt_a.prefix}`): pick another "
                        "step, or type another checkpoint as A.")
            else:
                st.caption(f"A = {data.describe(run, ckpt_a.prefix)} · "
                           f"B = {data.describe(run, ckpt_b.prefix)}")
                _two_checkpoints(ckpt_a, ckpt_b, "key" if by_key else "name")
        except Exception as exc:
            show_error(exc)

with whole:
    st.caption(f"Run `{run_dir}`, the run of the current checkpoint.")
    r1, r2, r3 = st.columns([2, 2, 1])
    match = r1.text_input("Name pattern (regular expression)", key="run_match")
    run_kinds = r2.multiselect("Kind", list(KINDS), default=list(MODEL_KINDS), key="run_kind")
    r3.button("Refresh", key="run_refresh", help="Pick up checkpoints saved since")
    steps = None
    if len(prefixes) <= 1:
        st.info(f"Run `{run_dir}` holds one checkpoint ({data.describe(run, resolved.prefix)})"
                ": a run view needs at least two. Open a folder with several checkpoints, or "
                "save another one.")
    else:
        try:
            steps = cached.run_steps(run_dir, match, tuple(run_kinds))
        except Exception as exc:
            show_error(exc)
    if steps is not None and len(steps):
        _whole_run(steps, run_summary)
    elif steps is not None:
        st.info("No variable matches the filters.")
