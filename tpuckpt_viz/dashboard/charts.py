"""Plotly figures from DataFrames and arrays. Pages only place them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

KIND_COLORS = {"weight": "#1f77b4", "bias": "#ff7f0e", "norm": "#2ca02c", "stat": "#9467bd",
               "slot": "#8c564b", "optimizer": "#e377c2", "counter": "#7f7f7f",
               "metric": "#bcbd22", "other": "#17becf"}


def parameter_treemap(records: pd.DataFrame) -> go.Figure:
    """Where the parameters are: kind -> layer -> variable, sized by element count."""
    df = records[records["numel"] > 0].copy()
    df["layer"] = df["layer"].fillna("(no layer)")
    df["leaf"] = df["name"].str.rsplit("/", n=1).str[-1]
    # Thousands of boxes make the browser crawl: large checkpoints stop at the layer, and
    # thousands of layers are grouped by their top scope.
    if df["layer"].nunique() > 300:
        df["layer"] = df["layer"].str.split("/").str[0]
    if df["layer"].nunique() > 300:
        top = df.groupby("layer")["numel"].sum().nlargest(300).index
        df.loc[~df["layer"].isin(top), "layer"] = "(other layers)"
    path = [px.Constant("checkpoint"), "kind", "layer"] + (["leaf"] if len(df) <= 2000 else [])
    fig = px.treemap(df, path=path,
                     values="numel", color="kind", color_discrete_map=KIND_COLORS,
                     hover_data={"name": True, "dtype": True})
    fig.update_layout(margin=dict(t=30, l=5, r=5, b=5), height=420)
    return fig


def histogram(counts: np.ndarray, edges: np.ndarray, title: str) -> go.Figure:
    """A histogram from precomputed counts and bin edges."""
    centers = (edges[:-1] + edges[1:]) / 2 if len(edges) else edges
    widths = np.diff(edges) if len(edges) else edges
    fig = go.Figure(go.Bar(x=centers, y=counts, width=widths, marker_line_width=0))
    fig.update_layout(title=title, bargap=0, height=320, margin=dict(t=40, l=5, r=5, b=5),
                      xaxis_title="value", yaxis_title="count")
    return fig


def overlaid_histograms(values_a: np.ndarray, values_b: np.ndarray, title: str,
                        bins: int = 60) -> go.Figure:
    """Two histograms on shared bins (checkpoint A and B of one variable)."""
    both = np.concatenate([values_a, values_b])
    both = both[np.isfinite(both)]
    edges = np.histogram_bin_edges(both, bins=bins) if both.size else np.linspace(0, 1, 2)
    fig = go.Figure()
    for label, values in (("A", values_a), ("B", values_b)):
        counts, _ = np.histogram(values[np.isfinite(values)], bins=edges)
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, name=label, opacity=0.6,
                    width=np.diff(edges))
    fig.update_layout(barmode="overlay", title=title, height=320, bargap=0,
                      margin=dict(t=40, l=5, r=5, b=5))
    return fig


def heatmap(array: np.ndarray, title: str, diverging: bool = False) -> go.Figure:
    """A heatmap of a 2-D array (already downsampled by the caller)."""
    z = np.asarray(array, dtype=np.float32)
    kwargs = {}
    if diverging:
        finite = z[np.isfinite(z)]
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        kwargs = dict(colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound)
    fig = go.Figure(go.Heatmap(z=z, **kwargs))
    rows, cols = z.shape
    # Whole-number ticks only: cells are rows and columns, not a continuous axis.
    fig.update_layout(title=title, height=380, margin=dict(t=40, l=5, r=5, b=5),
                      yaxis=dict(autorange="reversed", dtick=max(1, -(-rows // 8))),
                      xaxis=dict(dtick=max(1, -(-cols // 10))))
    return fig


def change_by_layer(diff: pd.DataFrame) -> go.Figure:
    """Relative change per layer and kind (bars)."""
    df = diff.dropna(subset=["rel_change"]).copy()
    df["layer"] = df["layer"].fillna("(no layer)")
    grouped = df.groupby(["layer", "kind"], as_index=False)["rel_change"].max()
    fig = px.bar(grouped, x="layer", y="rel_change", color="kind", barmode="group",
                 color_discrete_map=KIND_COLORS, title="Largest relative change per layer")
    fig.update_layout(height=360, margin=dict(t=40, l=5, r=5, b=5))
    return fig


def change_vs_size(diff: pd.DataFrame) -> go.Figure:
    """Relative change against size (scatter, log size)."""
    df = diff.dropna(subset=["rel_change"])
    fig = px.scatter(df, x="numel", y="rel_change", color="kind", hover_name="name",
                     log_x=True, color_discrete_map=KIND_COLORS,
                     title="Relative change against size")
    fig.update_layout(height=360, margin=dict(t=40, l=5, r=5, b=5))
    return fig


def steps_lines(steps: pd.DataFrame, value: str, title: str) -> go.Figure:
    """One line per layer over the run's steps (``value``: l2 or update_ratio)."""
    df = steps.dropna(subset=[value]).copy()
    df["layer"] = df["layer"].fillna(df["name"])
    per_layer = df.groupby(["step", "layer"], as_index=False)[value].mean()
    fig = px.line(per_layer, x="step", y=value, color="layer", markers=True, title=title)
    fig.update_layout(height=380, margin=dict(t=40, l=5, r=5, b=5))
    return fig


def update_heatmap(steps: pd.DataFrame) -> go.Figure:
    """Layer x step heatmap of mean update ratios."""
    df = steps.dropna(subset=["update_ratio"]).copy()
    df["layer"] = df["layer"].fillna(df["name"])
    table = df.pivot_table(index="layer", columns="step", values="update_ratio", aggfunc="mean")
    fig = go.Figure(go.Heatmap(z=table.values, x=[str(c) for c in table.columns],
                               y=list(table.index), colorscale="Viridis",
                               colorbar_title="update ratio"))
    fig.update_layout(title="Update ratio (||Δ|| / ||previous||) per layer and step",
                      height=max(300, 22 * len(table.index) + 120),
                      margin=dict(t=40, l=5, r=5, b=5), xaxis_title="step")
    return fig


def output_chart(name: str, value: np.ndarray) -> go.Figure | None:
    """A chart suited to an output's shape: class-score bars, a line, or a heatmap."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub" or arr.size == 0:
        return None
    arr = arr.astype(np.float64)
    if arr.ndim == 2 and 1 < arr.shape[1] <= 20:  # a batch of class scores
        df = pd.DataFrame(arr, columns=[str(i) for i in range(arr.shape[1])])
        df["example"] = [str(i) for i in range(arr.shape[0])]
        long = df.melt(id_vars="example", var_name="class", value_name="score")
        fig = px.bar(long, x="class", y="score", color="example", barmode="group", title=name)
    elif arr.ndim <= 1 or (arr.ndim == 2 and 1 in arr.shape):
        fig = px.line(y=arr.reshape(-1), markers=True, title=name,
                      labels={"x": "index", "y": name})
    else:
        fig = heatmap(arr.reshape(arr.shape[0], -1), name)
    fig.update_layout(height=320, margin=dict(t=40, l=5, r=5, b=5))
    return fig
