"""The data behind each dashboard view, as DataFrames and dataclasses (no Streamlit here).

Pages call these, cache the results, and only render them; the same records feed the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tpuckpt_viz.checkpoint.objectgraph import OBJECT_GRAPH_KEY
from tpuckpt_viz.checkpoint.protos import TrackableObjectGraph  # no TensorFlow import
from tpuckpt_viz.checkpoint.reader import Checkpoint
from tpuckpt_viz.checkpoint.records import KINDS, list_records
from tpuckpt_viz.engine.chunks import pair_chunks
from tpuckpt_viz.engine.reductions import is_numeric, new_accumulator
from tpuckpt_viz.engine.stats import histogram
from tpuckpt_viz.patterns import compile_user, search_any

MAX_HEATMAP_SIDE = 200
MAX_STRING_VALUES = 200


def records_frame(records: list[dict]) -> pd.DataFrame:
    """The variable table as a DataFrame (shape shown as text so it sorts and filters)."""
    df = pd.DataFrame(records, columns=["key", "name", "shape", "dtype", "numel", "nbytes",
                                        "kind", "layer", "slot_of", "slot"])
    df["shape"] = df["shape"].map(lambda s: "[" + ", ".join(map(str, s)) + "]")
    return df


def variable_table(ckpt: Checkpoint) -> pd.DataFrame:
    """:func:`records_frame` of the checkpoint's variables, with the slot's variable by name.

    The object graph entry is not a variable: it stays out of the page's tables, counts,
    diffs and pickers (the CLI's records keep it; :func:`object_tree` shows it).
    """
    df = records_frame([r for r in list_records(ckpt) if r["key"] != OBJECT_GRAPH_KEY])
    names = dict(zip(df["key"], df["name"]))
    df["slot_of_name"] = df["slot_of"].map(lambda k: names.get(k, k) if k else None)
    return df


# Columns of the page's variable table: what a person reads first, the raw key last.
TABLE_COLUMNS = ["name", "kind", "layer", "shape", "dtype", "numel", "nbytes", "slot",
                 "slot_of_name", "key"]


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The variable table as the page shows it: :data:`TABLE_COLUMNS`, empty cells empty."""
    shown = table[TABLE_COLUMNS].copy()
    for column in ("layer", "slot", "slot_of_name"):
        shown[column] = shown[column].fillna("").astype(str)
    return shown


TRAINABLE_KINDS = ("weight", "bias", "norm")
OPTIMIZER_KINDS = ("slot", "optimizer")


@dataclass
class Summary:
    variables: int
    parameters: int  # model parameters, as Keras's model.summary() counts them
    trainable: int
    non_trainable: int  # running statistics (moving mean and variance, ...)
    optimizer: int  # optimizer slots and scalars: not model parameters
    nbytes: int
    by_kind: pd.DataFrame
    by_dtype: pd.DataFrame


def summarize(table: pd.DataFrame) -> Summary:
    """Counts, parameters and bytes in all, by kind and by dtype.

    Parameters count as ``model.summary()`` counts them: weights, biases and normalization
    parameters are trainable, running statistics non-trainable; optimizer slots and state,
    counters and metrics are not model parameters.
    """
    agg = dict(variables=("name", "size"), elements=("numel", "sum"), bytes=("nbytes", "sum"))
    by_kind = table.groupby("kind", as_index=False).agg(**agg).sort_values("elements",
                                                                            ascending=False)
    by_dtype = table.groupby("dtype", as_index=False).agg(**agg).sort_values("elements",
                                                                              ascending=False)

    def total(kinds) -> int:
        return int(table.loc[table["kind"].isin(kinds), "numel"].sum())

    trainable, non_trainable = total(TRAINABLE_KINDS), total(("stat",))
    return Summary(len(table), trainable + non_trainable, trainable, non_trainable,
                   total(OPTIMIZER_KINDS), int(table["nbytes"].sum()),
                   by_kind.reset_index(drop=True), by_dtype.reset_index(drop=True))


def object_tree(ckpt: Checkpoint, table: pd.DataFrame) -> pd.DataFrame | None:
    """The saved objects (model, layers, optimizer, their variables and slots) as a tree.

    One row per object, breadth first from the root: ``path`` (its object path), ``parent``,
    ``label`` (its local name), ``depth``, and for a variable ``name``, ``kind``, ``shape``
    and ``numel`` (from ``table``); TF2 optimizer slots hang under their variable as
    ``slot <name>``. None for a name-based checkpoint (no object graph).
    """
    if OBJECT_GRAPH_KEY not in ckpt.entries:
        return None
    raw = ckpt.read_raw(OBJECT_GRAPH_KEY)
    raw = raw if isinstance(raw, bytes) else np.asarray(raw).reshape(-1)[0]
    graph = TrackableObjectGraph()
    graph.ParseFromString(raw)
    by_key = table.set_index("key")
    # Depth first, the optimizer last: a variable shows under the model's layer that owns it
    # (Keras 3 also lists it under optimizer/_trainable_variables).
    paths: dict[int, str] = {0: ""}
    stack = [0]
    while stack:
        node_id = stack.pop()
        path = paths[node_id]
        children = sorted(graph.nodes[node_id].children,
                          key=lambda c: (path == "" and c.local_name == "optimizer",
                                         _natural(c.local_name)), reverse=True)
        for child in children:
            if child.node_id not in paths:
                paths[child.node_id] = f"{path}/{child.local_name}" if path else child.local_name
                stack.append(child.node_id)
    rows = []
    for node_id, path in paths.items():
        if not path:
            continue
        node = graph.nodes[node_id]
        key = next((a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"),
                   None)
        rows.append(_tree_row(path, key, by_key))
        for slot in node.slot_variables:
            slot_node = graph.nodes[slot.slot_variable_node_id]
            var_path = paths.get(slot.original_variable_node_id)
            slot_key = next((a.checkpoint_key for a in slot_node.attributes
                             if a.name == "VARIABLE_VALUE"), None)
            if var_path is not None and slot_key:
                rows.append(_tree_row(f"{var_path}/slot {slot.slot_name}", slot_key, by_key))
    # Keep objects that hold a variable somewhere below; name numbered ones by their layer.
    holders: dict[str, set] = {}
    for row in rows:
        if row["kind"]:
            parts = row["path"].split("/")
            for i in range(1, len(parts)):
                holders.setdefault("/".join(parts[:i]), set()).add(row["name"].split("/")[0])
    kept = []
    for row in rows:
        if row["kind"]:
            kept.append(row)
        elif row["path"] in holders:
            layers = holders[row["path"]]
            if row["label"].isdigit() and len(layers) == 1:
                row["label"] = f"{row['label']} ({next(iter(layers))})"
            kept.append(row)
    df = pd.DataFrame(kept, columns=["path", "parent", "label", "depth", "name", "kind",
                                     "shape", "numel"])
    order = sorted(range(len(df)), key=lambda i: [_natural(p) for p in df["path"][i].split("/")])
    return df.iloc[order].reset_index(drop=True)


def _natural(text: str) -> tuple:
    """Sort key: numbers by value (``2`` before ``10``)."""
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _tree_row(path: str, key: str | None, by_key: pd.DataFrame) -> dict:
    parent, _, label = path.rpartition("/")
    row = {"path": path, "parent": parent, "label": label, "depth": path.count("/"),
           "name": "", "kind": "", "shape": "", "numel": 0}
    if key is not None and key in by_key.index:
        var = by_key.loc[key]
        row.update(name=var["name"], kind=var["kind"], shape=var["shape"],
                   numel=int(var["numel"]))
    return row


def tree_text(tree: pd.DataFrame, max_lines: int = 400) -> str:
    """The object tree as indented text (``├──``), variables with kind and shape."""
    lines = []
    for row in tree.itertuples():
        if len(lines) >= max_lines:
            lines.append(f"... {len(tree) - max_lines:,} more objects")
            break
        what = f"  [{row.kind} {row.shape}]" if row.kind else ""
        shown = f"  = {row.name}" if row.name and row.name != row.path else ""
        lines.append("    " * row.depth + row.label + what + shown)
    return "\n".join(lines)


def filter_table(table: pd.DataFrame, kinds=None, layers=None, dtypes=None,
                 pattern: str = "") -> pd.DataFrame:
    """Rows matching every filter given (a regular expression searched in name and key)."""
    mask = pd.Series(True, index=table.index)
    if kinds:
        mask &= table["kind"].isin(kinds)
    if layers:
        mask &= table["layer"].isin(layers)
    if dtypes:
        mask &= table["dtype"].isin(dtypes)
    if pattern:
        regex = compile_user(pattern, "name filter")  # RE2: linear time, cannot stall the server
        mask &= pd.Series([search_any(regex, name, key) for name, key in
                           zip(table["name"], table["key"])], index=table.index, dtype=bool)
    return table[mask]


def filter_or_explain(table: pd.DataFrame, kinds=None, layers=None, dtypes=None,
                      pattern: str = "") -> tuple[pd.DataFrame, str | None]:
    """:func:`filter_table`, and a bad name pattern said rather than raised: (rows, None), or
    (rows matching the other filters, the message that says how to fix the pattern)."""
    try:
        return filter_table(table, kinds, layers, dtypes, pattern), None
    except Exception as exc:  # a bad regular expression: say so, and change nothing else
        return (filter_table(table, kinds, layers, dtypes, ""),
                f"bad name pattern: {exc}: fix the regular expression")


def model_first(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order of :data:`tpuckpt_viz.checkpoint.records.KINDS` (model variables
    first: weights, biases, ...; then slots and state), by name within a kind."""
    rank = {k: i for i, k in enumerate(KINDS)}
    return table.assign(_rank=table["kind"].map(rank)).sort_values(
        ["_rank", "name"], kind="stable").drop(columns="_rank")


def selection_key(kinds, layers, dtypes, pattern: str, rows: int) -> str:
    """A widget key for the variable table under these filters: a row selected under other
    filters must not pick a row of this table (``rows``: how many it shows; a pattern that
    matches nothing does not change the key)."""
    filters = (tuple(kinds), tuple(layers), tuple(dtypes), pattern if rows else "")
    return "var_table_" + str(abs(hash(filters)))


def default_tensor(table: pd.DataFrame, names: list[str], wanted: str | None = None) -> str:
    """The tensor to show among ``names``: ``wanted`` (a link's ``?tensor=``, or the one shown
    before) where it is one of them, else the first weight of ``table`` among them, else the
    first name."""
    if wanted in names:
        return wanted
    present = set(names)
    return next((n for n in table.loc[table["kind"] == "weight", "name"] if n in present),
                names[0])


def slot_owner(table: pd.DataFrame, row) -> str | None:
    """For a slot's row: the readable name of the variable it belongs to (its raw key when
    that is not in ``table``); None for a row that is not a slot."""
    owner_key = row["slot_of"]
    if not isinstance(owner_key, str) or not owner_key:
        return None
    owner = table[table["key"] == owner_key]
    return owner.iloc[0]["name"] if len(owner) else owner_key


def human_bytes(n: float) -> str:
    """``1.5 KB``: a size in bytes with a binary unit (B to TB)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@dataclass
class TensorView:
    """Statistics, histogram and heatmap of one tensor (or the values of a string tensor)."""

    key: str
    dtype: str
    shape: tuple
    stats: dict
    counts: np.ndarray
    edges: np.ndarray
    sampled: int  # values behind the histogram
    finite: int  # finite values in the tensor
    heat: np.ndarray | None
    heat_strides: tuple[int, int]
    strings: list[str] | None = None
    heat_bad: np.ndarray | None = None  # NaN/Inf count per heatmap cell


def _as_2d(shape: tuple) -> tuple[int, int] | None:
    """Rows and columns for a heatmap: 2-D as is, higher ranks folded into rows."""
    if len(shape) < 2 or 0 in shape:
        return None
    return int(np.prod(shape[:-1])), int(shape[-1])


def heat_axes(shape: tuple, strides: tuple[int, int] = (1, 1)) -> tuple[str, str, str]:
    """(rows title, columns title, note) saying how a tensor was laid out in 2-D.

    ``[3, 3, 64, 128]`` -> rows "dims 0-2 (3×3×64 = 576)", columns "dim 3 (128)", and a note
    that the leading dimensions were flattened into rows (row-major) and, where the heatmap
    shows block means, how large a block is.
    """
    shape = tuple(int(d) for d in shape)
    last = len(shape) - 1
    if len(shape) == 2:
        rows = f"dim 0 ({shape[0]:,})"
        note = ""
    else:
        rows = (f"dims 0-{last - 1} (" + "×".join(map(str, shape[:-1]))
                + f" = {int(np.prod(shape[:-1])):,}, row-major)")
        note = f"{len(shape)}-D {list(shape)}: dims 0-{last - 1} flattened into rows"
    cols = f"dim {last} ({shape[-1]:,})"
    sr, sc = strides
    if (sr, sc) != (1, 1):
        block = f"each cell the mean of a {sr}×{sc} block"
        note = f"{note}; {block}" if note else block
    return rows, cols, note


class _BlockMeans:
    """Heatmap of a tensor folded to 2-D: the mean of each block of at most
    ``MAX_HEATMAP_SIDE`` x ``MAX_HEATMAP_SIDE`` cells, accumulated chunk by chunk with
    ``np.bincount``, so the tensor is never held whole. NaN and Inf are left out."""

    def __init__(self, shape: tuple):
        grid = _as_2d(shape)
        self.active = grid is not None
        self.offset = 0
        if self.active:
            self.rows, self.cols = grid
            self.sr = max(1, -(-self.rows // MAX_HEATMAP_SIDE))
            self.sc = max(1, -(-self.cols // MAX_HEATMAP_SIDE))
            self.nbr, self.nbc = -(-self.rows // self.sr), -(-self.cols // self.sc)
            self.sums = np.zeros(self.nbr * self.nbc)
            self.weights = np.zeros(self.nbr * self.nbc)
            self.bad = np.zeros(self.nbr * self.nbc)

    def add(self, values: np.ndarray) -> None:
        """Fold in the next flat chunk of values (float64)."""
        if self.active:
            flat = np.arange(self.offset, self.offset + values.size, dtype=np.int64)
            ids = (flat // self.cols // self.sr) * self.nbc + (flat % self.cols) // self.sc
            finite = np.isfinite(values)
            self.sums += np.bincount(ids, weights=np.where(finite, values, 0.0),
                                     minlength=self.sums.size)
            self.weights += np.bincount(ids, weights=finite, minlength=self.sums.size)
            if not finite.all():
                self.bad += np.bincount(ids, weights=~finite, minlength=self.sums.size)
        self.offset += values.size

    def result(self) -> tuple[np.ndarray | None, tuple[int, int]]:
        if not self.active:
            return None, (1, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sums / self.weights).reshape(self.nbr, self.nbc), (self.sr, self.sc)

    def nonfinite(self) -> np.ndarray | None:
        """NaN/Inf count per cell (None where the tensor has none)."""
        if not self.active or not self.bad.any():
            return None
        return self.bad.reshape(self.nbr, self.nbc)


def _float64(chunk: np.ndarray) -> np.ndarray:
    return chunk.astype(np.float64) if chunk.dtype.kind != "c" else np.abs(chunk)


def tensor_view(ckpt: Checkpoint, key: str, bins: int = 60,
                chunk_bytes: int | None = None) -> TensorView:
    """One streamed pass over ``key``: statistics, a histogram sample and heatmap block means."""
    entry = ckpt.entries[key]
    if not is_numeric(entry.dtype):
        raw = np.asarray(ckpt.read_raw(key)).reshape(-1)
        values = [v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
                  for v in raw[:MAX_STRING_VALUES]]
        stats = {"min": None, "max": None, "mean": None, "std": None, "l2": None,
                 "zeros": None, "nan": 0, "inf": 0}
        return TensorView(key, entry.dtype, entry.shape, stats, np.zeros(0), np.zeros(0), 0, 0,
                          None, (1, 1), values)
    acc = new_accumulator(entry.numel)
    blocks = _BlockMeans(entry.shape)
    for chunk in ckpt.chunks(key, chunk_bytes):
        acc.add(chunk)
        if blocks.active:
            blocks.add(_float64(chunk))
    heat, strides = blocks.result()
    sample = acc.sampled()
    counts, edges = histogram(sample, bins)
    return TensorView(key, entry.dtype, entry.shape, acc.result(), counts, edges, sample.size,
                      acc.finite, heat, strides, heat_bad=blocks.nonfinite())


@dataclass
class PairView:
    """One variable in two checkpoints: histogram samples of both, and B - A block means."""

    sample_a: np.ndarray
    sample_b: np.ndarray
    delta_heat: np.ndarray | None
    delta_strides: tuple[int, int]
    delta_bad: np.ndarray | None = None  # NaN/Inf count of B - A per heatmap cell


def pair_view(ckpt_a: Checkpoint, key_a: str, ckpt_b: Checkpoint, key_b: str) -> PairView:
    """One paired streamed pass over a numeric variable of the same shape on both sides."""
    entry = ckpt_a.entries[key_a]
    acc_a, acc_b = new_accumulator(entry.numel), new_accumulator(entry.numel)
    blocks = _BlockMeans(entry.shape)
    for ca, cb in pair_chunks(ckpt_a, key_a, ckpt_b, key_b):
        acc_a.add(ca)
        acc_b.add(cb)
        if blocks.active:
            blocks.add(_float64(cb) - _float64(ca))
    heat, strides = blocks.result()
    return PairView(acc_a.sampled(), acc_b.sampled(), heat, strides, blocks.nonfinite())


STATISTICS = ("min", "max", "mean", "std", "l2", "zeros", "nan", "inf")
STATISTIC_LABELS = ("min", "max", "mean", "std", "L2 norm", "zeros", "NaN", "Inf")


def stats_table(stats: dict) -> pd.DataFrame:
    """One tensor's statistics as the page lists them: ``statistic`` and ``value`` as text
    (6 significant digits, zeros as a percentage, "—" where a statistic does not apply)."""
    def fmt(name: str, v) -> str:
        if name in ("nan", "inf"):
            return str(v)
        if v is None:
            return "—"
        return f"{v:.2%}" if name == "zeros" else f"{v:.6g}"

    return pd.DataFrame({"statistic": list(STATISTIC_LABELS),
                         "value": [fmt(k, stats[k]) for k in STATISTICS]})


def histogram_title(view: TensorView, label: str | None = None) -> str:
    """The title of a tensor's histogram: whether it holds every finite value or a sample,
    after ``label`` (a slot's name) where given. The tensor's name is the page's heading."""
    note = (f"all {view.finite:,} finite values" if view.sampled >= view.finite
            else f"sampled {view.sampled:,} of {view.finite:,} finite values")
    return f"{label + ': ' if label else ''}histogram ({note})"


def heatmap_title(view: TensorView) -> tuple[str, tuple[str, str], bool]:
    """(title, (rows title, columns title), diverging) of a tensor's heatmap: diverging colours
    where its values straddle zero."""
    rows_title, cols_title, note = heat_axes(view.shape, view.heat_strides)
    lo, hi = view.stats["min"], view.stats["max"]
    return ("heatmap" + (f" ({note})" if note else ""), (rows_title, cols_title),
            lo is not None and hi is not None and lo < 0 < hi)


def stats_frame(views: dict[str, TensorView]) -> pd.DataFrame:
    """Statistics of several tensors side by side (a variable and its slots)."""
    rows = []
    for label, view in views.items():
        rows.append({"tensor": label, **{k: view.stats.get(k) for k in STATISTICS}})
    return pd.DataFrame(rows)


__all__ = ["records_frame", "variable_table", "summarize", "filter_table", "filter_or_explain",
           "model_first", "selection_key", "default_tensor", "slot_owner", "human_bytes",
           "tensor_view", "TensorView", "Summary", "stats_table", "histogram_title",
           "heatmap_title", "stats_frame", "list_records", "pair_view", "PairView"]
