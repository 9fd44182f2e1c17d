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
                      margin=dict(t=40, l=5, r=5, b=5), xaxis_title="value",
                      yaxis_title="count", legend=BELOW)
    return fig


# A legend under the plot, never over it.
BELOW = dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0)
# Distinct colours for many lines (24, then they repeat).
MANY_COLORS = px.colors.qualitative.Dark24


def short_names(names, width: int = 40) -> dict[str, str]:
    """Readable short labels for long variable and layer names: the leading and trailing path
    components that every name shares become ``…`` (``transformer/body/encoder/layer_3/
    self_attention/output`` -> ``…/layer_3/…``), and what is still longer than ``width``
    keeps its start and end around ``…``. Labels stay unique (a name keeps its full form
    otherwise). Labels in parentheses (``(12 other layers)``) are kept as they are."""
    names = [str(n) for n in dict.fromkeys(names)]
    real = [n for n in names if not n.startswith("(")]
    parts = {n: n.split("/") for n in real}
    lead = trail = 0
    if len(real) > 1:
        shortest = min(len(p) for p in parts.values())
        while lead < shortest - 1 and len({p[lead] for p in parts.values()}) == 1:
            lead += 1
        while (trail < shortest - lead - 1
               and len({p[len(p) - 1 - trail] for p in parts.values()}) == 1):
            trail += 1
    out = {}
    for name in names:
        if name.startswith("("):
            out[name] = name
            continue
        p = parts[name]
        label = "/".join(p[lead:len(p) - trail])
        label = ("…/" if lead else "") + label + ("/…" if trail else "")
        if len(label) > width:
            keep = width - 1
            label = label[: keep // 3] + "…" + label[-(keep - keep // 3):]
        out[name] = label
    seen: dict[str, int] = {}
    for label in out.values():
        seen[label] = seen.get(label, 0) + 1
    return {n: (label if seen[label] == 1 else n) for n, label in out.items()}


def tail_name(name: str, width: int = 40) -> str:
    """One long name cut to its last components (``…/multihead_attention/q/kernel``)."""
    if len(name) <= width:
        return name
    parts = name.split("/")
    label = parts[-1]
    for part in reversed(parts[:-1]):
        if len(label) + len(part) + 3 > width:
            break
        label = f"{part}/{label}"
    return "…/" + label if len(label) + 2 <= width else "…" + label[-(width - 1):]


def heatmap(array: np.ndarray, title: str, diverging: bool = False,
            bad: np.ndarray | None = None, axes: tuple[str, str] | None = None,
            value_range: tuple[float | None, float | None] | None = None) -> go.Figure:
    """A heatmap of a 2-D array (already downsampled by the caller).

    ``bad``: NaN/Inf count per cell, drawn as black crosses; ``axes``: (rows, columns)
    titles saying which dimensions they are; ``value_range``: the tensor's true min and max,
    shown when block means make the colour range narrower.
    """
    z = np.asarray(array, dtype=np.float32)
    finite = z[np.isfinite(z)]
    kwargs: dict = {}
    if diverging:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        kwargs = dict(colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound)
    fig = go.Figure(go.Heatmap(z=z, hovertemplate="row %{y}, column %{x}: %{z:.4g}"
                                                  "<extra></extra>", **kwargs))
    if bad is not None and np.any(bad):
        rows_, cols_ = np.nonzero(bad)
        fig.add_scatter(x=cols_, y=rows_, mode="markers", name="NaN/Inf",
                        marker=dict(symbol="x", color="black", size=8),
                        customdata=bad[rows_, cols_],
                        hovertemplate="row %{y}, column %{x}: %{customdata:.0f} NaN/Inf"
                                      "<extra></extra>")
    subtitle = []
    if value_range is not None and finite.size and None not in value_range:
        lo, hi = value_range
        if lo < float(finite.min()) or hi > float(finite.max()):
            subtitle.append(f"values {lo:.4g} to {hi:.4g}; cells (block means) "
                            f"{float(finite.min()):.4g} to {float(finite.max()):.4g}")
    if bad is not None and np.any(bad):
        subtitle.append(f"× = {int(np.sum(bad)):,} NaN/Inf")
    rows, cols = z.shape
    # Whole-number ticks only: cells are rows and columns, not a continuous axis.
    fig.update_layout(
        title=dict(text=title, subtitle=dict(text=" · ".join(subtitle)) if subtitle else None),
        height=400, margin=dict(t=60 if subtitle else 40, l=5, r=5, b=5), showlegend=False,
        yaxis=dict(autorange="reversed", dtick=max(1, -(-rows // 8)),
                   title=axes[0] if axes else None),
        xaxis=dict(dtick=max(1, -(-cols // 10)), title=axes[1] if axes else None))
    return fig


def _top_layers(df: pd.DataFrame, value: str, top: int) -> tuple[pd.DataFrame, int]:
    """``df`` (with ``layer`` filled) cut to the ``top`` layers with the largest ``value``;
    the rest become one ``(N other layers)`` row per group. Returns (frame, N)."""
    ranking = df.groupby("layer")[value].max().sort_values(ascending=False)
    keep = set(ranking.index[:top])
    rest = len(ranking) - len(keep)
    if rest > 0:
        df = df.copy()
        df.loc[~df["layer"].isin(keep), "layer"] = f"({rest} other layers)"
    return df, rest


def change_by_layer(diff: pd.DataFrame, top: int = 20) -> go.Figure:
    """Largest relative change per layer and kind: the ``top`` layers, then the rest as one
    bar; horizontal, so long names stay readable (shortened, the full name on hover)."""
    df = diff.dropna(subset=["rel_change"]).copy()
    df["layer"] = df["layer"].fillna(df["name"])
    df, rest = _top_layers(df, "rel_change", top)
    grouped = df.groupby(["layer", "kind"], as_index=False)["rel_change"].max()
    order = grouped.groupby("layer")["rel_change"].max().sort_values(ascending=False).index
    labels = short_names(order)
    grouped["label"] = grouped["layer"].map(labels)
    fig = px.bar(grouped, y="label", x="rel_change", color="kind", barmode="group",
                 orientation="h", color_discrete_map=KIND_COLORS, hover_name="layer",
                 category_orders={"label": [labels[n] for n in order]},
                 labels={"label": "layer", "rel_change": "relative change ||b-a|| / ||a||"},
                 title=f"Largest relative change per layer (top {min(top, len(order))}"
                       + (f" of {len(order) - 1 + rest}" if rest else "") + ")")
    fig.update_layout(height=max(320, 24 * len(order) + 140), margin=dict(t=40, l=5, r=5, b=5),
                      legend=BELOW)
    return fig


def change_vs_size(diff: pd.DataFrame) -> go.Figure:
    """Relative change against size (scatter, log size); the full name on hover."""
    df = diff.dropna(subset=["rel_change"])
    fig = px.scatter(df, x="numel", y="rel_change", color="kind", hover_name="name",
                     log_x=True, color_discrete_map=KIND_COLORS,
                     labels={"numel": "elements", "rel_change": "relative change"},
                     title="Relative change against size")
    fig.update_layout(height=360, margin=dict(t=40, l=5, r=5, b=5), legend=BELOW)
    return fig


def _run_axis(steps: pd.DataFrame) -> list[str]:
    """The run's step labels in run order (a categorical axis: ticks are the steps)."""
    order = steps.drop_duplicates("save").sort_values("save") if "save" in steps else \
        steps.drop_duplicates("step").sort_values("step")
    return [str(v) for v in (order["label"] if "label" in order else order["step"])]


def steps_lines(steps: pd.DataFrame, value: str, title: str, top: int = 12,
                mark: str | None = None) -> go.Figure:
    """One line per layer over the run's steps (``value``: l2 or update_ratio): the ``top``
    layers with the largest values, distinct colours, the legend under the plot. ``mark``:
    the step label of the first NaN/Inf, drawn as a red dashed line (NaN values have no
    point of their own)."""
    axis = _run_axis(steps)
    df = steps.dropna(subset=[value]).copy()
    df["layer"] = df["layer"].fillna(df["name"])
    df["x"] = (df["label"] if "label" in df else df["step"]).astype(str)
    per_layer = df.groupby(["x", "layer"], as_index=False)[value].mean()
    ranking = per_layer.groupby("layer")[value].max().sort_values(ascending=False)
    kept = list(ranking.index[:top])
    per_layer = per_layer[per_layer["layer"].isin(kept)]
    labels = short_names(kept, 32)
    per_layer["short"] = per_layer["layer"].map(labels)
    shown = f" (top {len(kept)} of {len(ranking)} layers)" if len(ranking) > len(kept) else ""
    fig = px.line(per_layer, x="x", y=value, color="short", markers=True, title=title + shown,
                  hover_name="layer", color_discrete_sequence=MANY_COLORS,
                  category_orders={"x": axis, "short": [labels[n] for n in kept]},
                  labels={"x": "step", "short": "layer"})
    fig.update_xaxes(type="category")
    if mark is not None and mark in axis:
        fig.add_shape(type="line", x0=mark, x1=mark, xref="x", y0=0, y1=1, yref="paper",
                      line=dict(color="red", dash="dash"))
        fig.add_annotation(x=mark, y=1, xref="x", yref="paper", text="first NaN/Inf",
                           showarrow=False, font=dict(color="red"), yanchor="bottom")
    fig.update_layout(height=420 + 20 * ((len(kept) + 2) // 3), margin=dict(t=40, l=5, r=5, b=5),
                      legend=BELOW)
    return fig


def update_heatmap(steps: pd.DataFrame, top: int = 40) -> go.Figure:
    """Layer x step heatmap of mean update ratios (the ``top`` layers by largest ratio)."""
    axis = _run_axis(steps)
    df = steps.dropna(subset=["update_ratio"]).copy()
    df["layer"] = df["layer"].fillna(df["name"])
    df["x"] = (df["label"] if "label" in df else df["step"]).astype(str)
    table = df.pivot_table(index="layer", columns="x", values="update_ratio", aggfunc="mean")
    table = table[[c for c in axis if c in table.columns]]
    ranking = table.max(axis=1).sort_values(ascending=False)
    table = table.loc[ranking.index[:top]]
    labels = short_names(list(table.index), 40)
    fig = go.Figure(go.Heatmap(z=table.values, x=list(table.columns),
                               y=[labels[n] for n in table.index], colorscale="Viridis",
                               customdata=np.array([[n] * table.shape[1] for n in table.index]),
                               hovertemplate="%{customdata}<br>%{x}: %{z:.4g}<extra></extra>",
                               colorbar_title="update ratio"))
    shown = f" (top {len(table)} of {len(ranking)} layers)" if len(ranking) > top else ""
    fig.update_layout(title="Update ratio (||Δ|| / ||previous||) per layer and step" + shown,
                      height=max(300, 22 * len(table.index) + 120),
                      margin=dict(t=40, l=5, r=5, b=5), xaxis_title="step",
                      xaxis=dict(type="category"), yaxis=dict(autorange="reversed"))
    return fig


def object_tree_chart(tree: pd.DataFrame, max_nodes: int = 3000) -> go.Figure:
    """The saved objects as an icicle (click an object to open it), sized by elements."""
    df = tree.head(max_nodes)
    known = set(df["path"])
    values = df["numel"].clip(lower=1).where(df["kind"] != "", 0)
    fig = go.Figure(go.Icicle(
        ids=df["path"], labels=df["label"], parents=[p if p in known else "" for p in df["parent"]],
        values=values, branchvalues="remainder", maxdepth=4,
        customdata=np.stack([df["name"], df["kind"], df["shape"]], axis=1),
        hovertemplate="%{id}<br>%{customdata[0]} %{customdata[1]} %{customdata[2]}"
                      "<extra></extra>"))
    fig.update_layout(height=460, margin=dict(t=10, l=5, r=5, b=5))
    return fig


def _block_means(arr: np.ndarray, side: int = 400) -> tuple[np.ndarray, tuple[int, int]]:
    """A 2-D array cut down to at most ``side`` x ``side`` cells by block means."""
    rows, cols = arr.shape
    sr, sc = max(1, -(-rows // side)), max(1, -(-cols // side))
    if (sr, sc) == (1, 1):
        return arr, (1, 1)
    pr, pc = -(-rows // sr) * sr, -(-cols // sc) * sc
    padded = np.full((pr, pc), np.nan)
    padded[:rows, :cols] = arr
    with np.errstate(invalid="ignore"):
        return np.nanmean(padded.reshape(pr // sr, sr, pc // sc, sc), axis=(1, 3)), (sr, sc)


def example_chart(name: str, value: np.ndarray) -> go.Figure | None:
    """A chart that fits one example of an output: bars for a few scores, a line for a longer
    1-D vector, a heatmap for 2-D (a piano roll, an attention map), an image for an
    [H, W, 1|3|4] output; higher ranks are folded into rows. None for scalars and strings."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub" or arr.size <= 1:
        return None
    arr = arr.astype(np.float64)
    if arr.ndim == 1:
        if arr.size <= 30:
            fig = px.bar(x=[str(i) for i in range(arr.size)], y=arr, title=name,
                         labels={"x": "index", "y": "value"})
        else:
            fig = px.line(x=np.arange(arr.size), y=arr, title=name,
                          labels={"x": "index", "y": "value"})
        fig.update_layout(height=320, margin=dict(t=40, l=5, r=5, b=5))
        return fig
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and min(arr.shape[:2]) >= 8:
        img = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]
        finite = img[np.isfinite(img)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if arr.shape[-1] == 1:
            fig = px.imshow(img, color_continuous_scale="gray", title=f"{name} (image)")
        else:
            scaled = np.clip((img - lo) / ((hi - lo) or 1.0), 0, 1) * 255
            fig = px.imshow(scaled.astype(np.uint8), title=f"{name} (image, scaled "
                                                           f"from {lo:.3g}..{hi:.3g})")
        fig.update_layout(height=400, margin=dict(t=40, l=5, r=5, b=5))
        return fig
    grid = arr.reshape(-1, arr.shape[-1])
    z, (sr, sc) = _block_means(grid)
    last = arr.ndim - 1
    rows = f"dim 0 ({arr.shape[0]:,})" if arr.ndim == 2 else \
        f"dims 0-{last - 1} ({'×'.join(map(str, arr.shape[:-1]))}, row-major)"
    note = "" if (sr, sc) == (1, 1) else f" (block means of {sr}×{sc})"
    finite = arr[np.isfinite(arr)]
    return heatmap(z, f"{name}{note}", axes=(rows, f"dim {last} ({arr.shape[-1]:,})"),
                   value_range=(float(finite.min()), float(finite.max())) if finite.size
                   else None)
