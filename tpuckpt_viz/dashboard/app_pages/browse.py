"""Browse: every variable of a checkpoint, grouped, filtered, with any tensor's statistics."""

from __future__ import annotations

import streamlit as st

from tpuckpt_viz import config
from tpuckpt_viz.checkpoint.records import KINDS
from tpuckpt_viz.dashboard import charts
from tpuckpt_viz.dashboard import pagedata as views
from tpuckpt_viz.dashboard.app_pages.common import (
    human_bytes,
    pick_checkpoint,
    show_error,
    sync_url,
)

st.title("Browse a checkpoint")
ckpt = pick_checkpoint()
if ckpt is None:
    st.stop()


@st.cache_data(max_entries=64, show_spinner="Reading the index...")
def _table(prefix: str, signature: tuple):
    return views.variable_table(ckpt)


@st.cache_data(max_entries=config.get_int("cache_entries"), show_spinner="Reading the tensor...")
def _view(prefix: str, signature: tuple, key: str):
    return views.tensor_view(ckpt, key)


try:
    table = _table(ckpt.prefix, ckpt.signature)
except Exception as exc:
    show_error(exc)
    st.stop()

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
c4.metric("Size", human_bytes(summary.nbytes))

with st.expander("Summary by kind and dtype, and where the parameters are", expanded=True):
    left, right = st.columns([1, 2])
    left.dataframe(summary.by_kind, hide_index=True, width="stretch")
    left.dataframe(summary.by_dtype, hide_index=True, width="stretch")
    if int(table["numel"].sum()):
        right.plotly_chart(charts.parameter_treemap(table), width="stretch")


@st.cache_data(max_entries=16, show_spinner="Reading the object graph...")
def _tree(prefix: str, signature: tuple):
    return views.object_tree(ckpt, table)


try:
    tree = _tree(ckpt.prefix, ckpt.signature)
except Exception as exc:  # a damaged object graph: the variables still show
    tree = None
    st.caption(f"The object graph could not be read: {exc}")
if tree is not None and len(tree):
    with st.expander(f"Saved objects: the object graph ({len(tree):,} objects and variables)"):
        st.caption("What `tf.train.Checkpoint` saved, object by object: the model, its layers, "
                   "the optimizer, their variables and slots. Click a box to open it.")
        st.plotly_chart(charts.object_tree_chart(tree), width="stretch", key="object_tree")
        st.code(views.tree_text(tree), language=None)

if not len(table):  # the object graph alone, or nothing: no variable to list or pick
    st.info(f"`{ckpt.prefix}` holds no variables"
            + (", only its object graph (above)" if tree is not None and len(tree) else "")
            + ": open a checkpoint that holds the model's weights.")
    st.stop()

st.subheader("Variables")
f1, f2, f3, f4 = st.columns([1, 1, 1, 2])
kinds = f1.multiselect("Kind", [k for k in KINDS if k in set(table["kind"])], key="f_kind")
layers = f2.multiselect("Layer", sorted(table["layer"].dropna().unique()), key="f_layer")
dtypes = f3.multiselect("Dtype", sorted(table["dtype"].unique()), key="f_dtype")
pattern = f4.text_input("Name pattern (regular expression)", key="f_pattern")
try:
    shown = views.filter_table(table, kinds, layers, dtypes, pattern)
except Exception as exc:  # a bad regular expression: say so, and change nothing else
    f4.error(f"bad name pattern: {exc}: fix the regular expression")
    shown = views.filter_table(table, kinds, layers, dtypes, "")

# Model variables first (weights, biases, ...), then slots and state; by name within a kind.
shown = shown.assign(_rank=shown["kind"].map({k: i for i, k in enumerate(KINDS)})).sort_values(
    ["_rank", "name"], kind="stable").drop(columns="_rank")
# Keyed by the filters: a row selected under other filters must not pick a row of this table.
table_key = "var_table_" + str(abs(hash((tuple(kinds), tuple(layers), tuple(dtypes),
                                         pattern if len(shown) else ""))))
event = st.dataframe(views.display_table(shown), hide_index=True, width="stretch",
                     key=table_key, on_select="rerun", selection_mode="single-row",
                     height=min(913, 35 * (len(shown) + 1) + 3),
                     column_config={"slot_of_name": "slot of", "nbytes": "bytes",
                                    "numel": "elements", "key": "raw key"})
st.caption(f"{len(shown):,} of {len(table):,} variables")
st.download_button("Download CSV", shown.drop(columns=["slot_of_name"]).to_csv(index=False),
                   file_name="variables.csv", mime="text/csv")

# The tensor to show: a row clicked in the table, else the selectbox (also ?tensor=NAME).
names = list(shown["name"]) or list(table["name"])
selected_rows = getattr(getattr(event, "selection", None), "rows", None) or []
if selected_rows and selected_rows[0] < len(shown):
    picked = shown.iloc[selected_rows[0]]["name"]
    if st.session_state.get("_picked_row") != (table_key, picked):
        st.session_state["_picked_row"] = (table_key, picked)
        st.session_state["tensor"] = picked
if st.session_state.get("tensor") not in names:
    wanted = st.session_state.get("_tensor") or st.query_params.get("tensor")
    preferred = table[table["kind"] == "weight"]["name"]
    st.session_state["tensor"] = (wanted if wanted in names else
                                  next((n for n in preferred if n in names), names[0]))
name = st.selectbox("Tensor", names, key="tensor")
st.session_state["_tensor"] = name  # kept across pages (the widget's own state is not)
sync_url(tensor=name, a=None, b=None, run=None)  # only what this page shows
row = table[table["name"] == name].iloc[0]

st.subheader(name)
st.caption(f"key `{row['key']}` · {row['kind']} · shape {row['shape']} · {row['dtype']}")


def _render_stats(view, title: str, column, label: str | None = None) -> None:
    if view.strings is not None:
        column.write(f"{len(view.strings)} string value(s) shown:")
        column.dataframe({"value": view.strings}, width="stretch")
        return
    s = view.stats
    fmt = (lambda v: "—" if v is None else f"{v:.6g}")
    column.dataframe(
        {"statistic": ["min", "max", "mean", "std", "L2 norm", "zeros", "NaN", "Inf"],
         "value": [fmt(s["min"]), fmt(s["max"]), fmt(s["mean"]), fmt(s["std"]), fmt(s["l2"]),
                   "—" if s["zeros"] is None else f"{s['zeros']:.2%}", str(s["nan"]),
                   str(s["inf"])]},
        hide_index=True, width="stretch", key=f"stats_{title}")
    if len(view.counts):
        note = (f"all {view.finite:,} finite values" if view.sampled >= view.finite
                else f"sampled {view.sampled:,} of {view.finite:,} finite values")
        # The name is the heading above: a title holds only what fits half a page.
        column.plotly_chart(charts.histogram(view.counts, view.edges,
                                             f"{label + ': ' if label else ''}histogram ({note})"),
                            width="stretch", key=f"hist_{title}")


try:
    view = _view(ckpt.prefix, ckpt.signature, row["key"])
except Exception as exc:
    show_error(exc)
    st.stop()

left, right = st.columns(2)
_render_stats(view, name, left)
if view.heat is not None:
    rows_title, cols_title, note = views.heat_axes(view.shape, view.heat_strides)
    lo, hi = view.stats["min"], view.stats["max"]
    diverging = lo is not None and hi is not None and lo < 0 < hi
    right.plotly_chart(charts.heatmap(view.heat, "heatmap" + (f" ({note})" if note else ""),
                                      diverging=diverging, bad=view.heat_bad,
                                      axes=(rows_title, cols_title), value_range=(lo, hi)),
                       width="stretch", key="heatmap")

slots = table[table["slot_of"] == row["key"]]
if len(slots):
    st.subheader("Optimizer slots")
    slot_views = {name: view}
    cols = st.columns(len(slots))
    for col, (_, slot_row) in zip(cols, slots.iterrows()):
        try:
            slot_view = _view(ckpt.prefix, ckpt.signature, slot_row["key"])
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
                 key="slot_stats", column_config={c: number for c in
                                                  ("min", "max", "mean", "std", "l2", "zeros")})
elif isinstance(row["slot_of"], str) and row["slot_of"]:
    owner = table[table["key"] == row["slot_of"]]
    st.info(f"This is the `{row['slot']}` slot of `{owner.iloc[0]['name'] if len(owner) else row['slot_of']}`.")
