"""The data behind each dashboard view, as DataFrames and dataclasses (no Streamlit here).

Pages call these, cache the results, and only render them; the same records feed the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tpuckpt_viz.checkpoint.reader import Checkpoint
from tpuckpt_viz.checkpoint.records import list_records
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
    """:func:`records_frame` of the checkpoint's records, with the slot's variable by name."""
    df = records_frame(list_records(ckpt))
    names = dict(zip(df["key"], df["name"]))
    df["slot_of_name"] = df["slot_of"].map(lambda k: names.get(k, k) if k else None)
    return df


@dataclass
class Summary:
    variables: int
    parameters: int
    nbytes: int
    by_kind: pd.DataFrame
    by_dtype: pd.DataFrame


def summarize(table: pd.DataFrame) -> Summary:
    """Counts, parameters and bytes in all, by kind and by dtype."""
    agg = dict(variables=("name", "size"), parameters=("numel", "sum"), bytes=("nbytes", "sum"))
    by_kind = table.groupby("kind", as_index=False).agg(**agg).sort_values("parameters",
                                                                            ascending=False)
    by_dtype = table.groupby("dtype", as_index=False).agg(**agg).sort_values("parameters",
                                                                              ascending=False)
    return Summary(len(table), int(table["numel"].sum()), int(table["nbytes"].sum()),
                   by_kind.reset_index(drop=True), by_dtype.reset_index(drop=True))


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
        mask &= [search_any(regex, name, key) for name, key in zip(table["name"], table["key"])]
    return table[mask]


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


def _as_2d(shape: tuple) -> tuple[int, int] | None:
    """Rows and columns for a heatmap: 2-D as is, higher ranks folded into rows."""
    if len(shape) < 2 or 0 in shape:
        return None
    return int(np.prod(shape[:-1])), int(shape[-1])


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

    def add(self, values: np.ndarray) -> None:
        """Fold in the next flat chunk of values (float64)."""
        if self.active:
            flat = np.arange(self.offset, self.offset + values.size, dtype=np.int64)
            ids = (flat // self.cols // self.sr) * self.nbc + (flat % self.cols) // self.sc
            finite = np.isfinite(values)
            self.sums += np.bincount(ids, weights=np.where(finite, values, 0.0),
                                     minlength=self.sums.size)
            self.weights += np.bincount(ids, weights=finite, minlength=self.sums.size)
        self.offset += values.size

    def result(self) -> tuple[np.ndarray | None, tuple[int, int]]:
        if not self.active:
            return None, (1, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sums / self.weights).reshape(self.nbr, self.nbc), (self.sr, self.sc)


def _float64(chunk: np.ndarray) -> np.ndarray:
    return chunk.astype(np.float64) if chunk.dtype.kind != "c" else np.abs(chunk)


def tensor_view(ckpt: Checkpoint, key: str, bins: int = 60) -> TensorView:
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
    for chunk in ckpt.chunks(key):
        acc.add(chunk)
        if blocks.active:
            blocks.add(_float64(chunk))
    heat, strides = blocks.result()
    sample = acc.sampled()
    counts, edges = histogram(sample, bins)
    return TensorView(key, entry.dtype, entry.shape, acc.result(), counts, edges, sample.size,
                      acc.finite, heat, strides)


@dataclass
class PairView:
    """One variable in two checkpoints: histogram samples of both, and B - A block means."""

    sample_a: np.ndarray
    sample_b: np.ndarray
    delta_heat: np.ndarray | None
    delta_strides: tuple[int, int]


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
    return PairView(acc_a.sampled(), acc_b.sampled(), heat, strides)


def stats_frame(views: dict[str, TensorView]) -> pd.DataFrame:
    """Statistics of several tensors side by side (a variable and its slots)."""
    rows = []
    for label, view in views.items():
        rows.append({"tensor": label, **{k: view.stats.get(k) for k in
                                         ("min", "max", "mean", "std", "l2", "zeros", "nan",
                                          "inf")}})
    return pd.DataFrame(rows)


__all__ = ["records_frame", "variable_table", "summarize", "filter_table", "tensor_view",
           "TensorView", "Summary", "stats_frame", "list_records", "pair_view", "PairView"]
