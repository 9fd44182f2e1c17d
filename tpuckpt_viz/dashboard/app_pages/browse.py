"""Browse: every variable of a checkpoint, grouped, filtered, with any tensor's statistics.

The data comes from ``pagedata`` (through ``cached``); this page lays out widgets and renders.
"""

from __future__ import annotations

import streamlit as st

from tpuckpt_viz.checkpoint.records import KINDS
from tpuckpt_viz.dashboard import cached, charts
from tpuckpt_viz.dashboard import pagedata as views
from tpuckpt_viz.dashboard.app_pages.common import pick_checkpoint, show_error, sync_url


def _render_stats(view: views.TensorView, title: str, column, label: str | None = None) -> None:
    """A tensor's statistics and histogram (a string tensor: its values) in ``column``."""
    if view.strings is not None:
        column.write(f"{len(view.strings)} string value(s) shown:")
        column.dataframe({"value": view.strings}, width="stretch")
        return
    column.dataframe(views.stats_table(view.stats), hide_index=True, width="stretch",
                     key=f"stats_{title}")
    if len(view.counts):
        column.plotly_chart(charts.histogram(view.counts, view.edges,
                                             views.histogram_title(view, label)),
                            width="stretch", key=f"hist_{title}")


def _summary(ckpt, table) -> None:
    """The counts at the top, and the summary by kind and dtype."""
    summary = views.summarize(table)
    st.caption(f"`{ckpt.prefix}` · {ckpt.format} format")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Model parameters", f"{summary.parameters:,}",
              help="As Keras's model.summary() counts them: weights, biases and normalization "
                   "parameters (trainable) and running statistics (non-trainable); optimizer "
                   "state, counters and metrics are not model parameters")
    c1.caption(f"trainable {summary.trainable:,} · non-trainable {summary.non_trainable:,}")
    c2.metric("Optimizer state", f"{summary.optimizer:,}",
              help="Elements of optimizer slots (Adam's m and v, ...) and optimizer scalars")
    c3.metric("Variables", f"{summary.variables:,}")
    c4.metric("Size", views.human_bytes(summary.nbytes))
    with st.expander("Summary by kind and dtype, and where the parameters are", expanded=True):
        left, right = st.columns([1, 2])
        left.dataframe(summary.by_kind, hide_index=True, width="stretch")
        left.dataframe(summary.by_dtype, hide_index=True, width="stretch")
        if int(table["numel"].sum()):
            right.plotly_chart(charts.parameter_treemap(table), width="stretch")


def _object_graph(tree) -> None:
    """The saved objects, as a chart and as indented text."""
    with st.expander(f"Saved objects: the object graph ({len(tree):,} objects and variables)"):
        st.caption("What `tf.train.Checkpoint` saved, object by object: the model, its layers, "
                   "the optimizer, their variables and slots. Click a box to open it.")
        st.plotly_chart(charts.object_tree_chart(tree), width="stretch", key="object_tree")
        st.code(views.tree_text(tree), language=None)


def _variables(table):
    """The filters and the variable table: (rows shown, the table's key, its selection)."""
    st.subheader("Variables")
    f1, f2, f3, f4 = st.columns([1, 1, 1, 2])
    kinds = f1.multiselect("Kind", [k for k in KINDS if k in set(table["kind"])], key="f_kind")
    layers = f2.multiselect("Layer", sorted(table["layer"].dropna().unique()), key="f_layer")
    dtypes = f3.multiselect("Dtype", sorted(table["dtype"].unique()), key="f_dtype")
    pattern = f4.text_input("Name pattern (regular expression)", key="f_pattern")
    shown, pattern_error = views.filter_or_explain(table, kinds, layers, dtypes, pattern)
    if pattern_error:
        f4.error(pattern_error)
    shown = views.model_first(shown)
    table_key = views.selection_key(kinds, layers, dtypes, pattern, len(shown))
    event = st.dataframe(views.display_table(shown), hide_index=True, width="stretch",
                         key=table_key, on_select="rerun", selection_mode="single-row",
                         height=min(913, 35 * (len(shown) + 1) + 3),
                         column_config={"slot_of_name": "slot of", "nbytes": "bytes",
                                        "numel": "elements", "key": "raw key"})
    st.caption(f"{len(shown):,} of {len(table):,} variables")
    st.download_button("Download CSV", shown.drop(columns=["slot_of_name"]).to_csv(index=False),
                       file_name="variables.csv", mime="text/csv")
    return shown, table_key, event


def _pick_tensor(table, shown, table_key: str, event) -> str:
    """The tensor to show: a row clicked in the table, else the selectbox (also ?tensor=NAME)."""
    names = list(shown["name"]) or list(table["name"])
    selected_rows = getattr(getattr(event, "selection", None), "rows", None) or []
    if selected_rows and selected_rows[0] < len(shown):
        picked = shown.iloc[selected_rows[0]]["name"]
        if st.session_state.get("_picked_row") != (table_key, picked):
            st.session_state["_picked_row"] = (table_key, picked)
            st.session_state["tensor"] = picked
    if st.session_state.get("tensor") not in names:
        st.session_state["tensor"] = views.default_tensor(
            table, names, st.session_state.get("_tensor") or st.query_params.get("tensor"))
    name = st.selectbox("Tensor", names, key="tensor")
    st.session_state["_tensor"] = name  # kept across pages (the widget's own state is not)
    sync_url(tensor=name, a=None, b=None, run=None)  # only what this page shows
    return name


def _slots(ckpt, table, row, view) -> None:
    """The optimizer slots of the tensor shown (side by side with it), or whose slot it is."""
    slots = table[table["slot_of"] == row["key"]]
    if len(slots):
        st.subheader("Optimizer slots")
        slot_views = {row["name"]: view}
        for col, (_, slot_row) in zip(st.columns(len(slots)), slots.iterrows()):
            try:
                slot_view = cached.tensor_view(ckpt, ckpt.prefix, ckpt.signature, slot_row["key"])
            except Exception as exc:
                with col:
                    show_error(exc)
                continue
            slot_views[f"{slot_row['slot']} ({slot_row['name']})"] = slot_view
            col.markdown(f"**{slot_row['slot']}** · `{slot_row['name']}`")
            # The slot's short name titles its histogram: the full name does not fit half a page.
            _render_stats(slot_view, slot_row["name"], col, label=slot_row["slot"])
        number = st.column_config.NumberColumn(format="%.4g")
        st.dataframe(views.stats_frame(slot_views), hide_index=True, width="stretch",
                     key="slot_stats", column_config={
                         c: number for c in ("min", "max", "mean", "std", "l2", "zeros")})
    elif views.slot_owner(table, row):
        st.info(f"This is the `{row['slot']}` slot of `{views.slot_owner(table, row)}`.")


st.title("Browse a checkpoint")
ckpt = pick_checkpoint()
if ckpt is None:
    st.stop()
try:
    table = cached.variable_table(ckpt, ckpt.prefix, ckpt.signature)
except Exception as exc:
    show_error(exc)
    st.stop()
_summary(ckpt, table)
try:
    tree = cached.object_tree(ckpt, ckpt.prefix, ckpt.signature)
except Exception as exc:  # a damaged object graph: the variables still show
    tree = None
    st.caption(f"The object graph could not be read: {exc}")
if tree is not None and len(tree):
    _object_graph(tree)
if not len(table):  # the object graph alone, or nothing: no variable to list or pick
    st.info(f"`{ckpt.prefix}` holds no variables"
            + (", only its object graph (above)" if tree is not None and len(tree) else "")
            + ": open a checkpoint that holds the model's weights.")
    st.stop()

shown, table_key, event = _variables(table)
name = _pick_tensor(table, shown, table_key, event)
row = table[table["name"] == name].iloc[0]
st.subheader(name)
st.caption(f"key `{row['key']}` · {row['kind']} · shape {row['shape']} · {row['dtype']}")
try:
    view = cached.tensor_view(ckpt, ckpt.prefix, ckpt.signature, row["key"])
except Exception as exc:
    show_error(exc)
    st.stop()
left, right = st.columns(2)
_render_stats(view, name, left)
if view.heat is not None:
    title, axes, diverging = views.heatmap_title(view)
    right.plotly_chart(charts.heatmap(view.heat, title, diverging=diverging, bad=view.heat_bad,
                                      axes=axes, value_range=(view.stats["min"],
                                                              view.stats["max"])),
                       width="stretch", key="heatmap")
_slots(ckpt, table, row, view)
