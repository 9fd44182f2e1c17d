"""The Infer page's tables (DataFrames) from the inference layer's plain results."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pandas as pd

from tpuckpt_viz.inference.api import jsonable
from tpuckpt_viz.inference.savedmodel import MetaGraphInfo, TensorInfo, fmt_shape, fmt_tags


def output_table(value) -> pd.DataFrame:
    """One output as a pandas DataFrame: a row per example, a column per value.

    Scalars give one cell, 1-D one column, higher ranks are flattened after the first axis;
    strings are decoded as UTF-8.
    """
    arr = np.asarray(value)
    if arr.dtype == ml_dtypes.bfloat16:
        arr = arr.astype(np.float32)
    if arr.dtype.kind in "OS":
        # (a 0-d array gives back a plain object from frompyfunc: keep it an array)
        arr = np.asarray(np.frompyfunc(lambda v: jsonable(v) if isinstance(v, bytes) else v,
                                       1, 1)(arr), dtype=object)
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    else:
        arr = arr.reshape(arr.shape[0], -1)
    return pd.DataFrame(arr, columns=[str(i) for i in range(arr.shape[1])])


def signatures_table(meta_graphs: list[MetaGraphInfo]) -> pd.DataFrame:
    """One row per (tag set, signature), like ``saved_model_cli show --all`` in brief."""
    rows = [{"tag set": fmt_tags(mg.tags), "signature": sig.name, "method": sig.method_name,
             "inputs": "; ".join(t.describe() for t in sig.inputs),
             "outputs": "; ".join(t.describe() for t in sig.outputs)}
            for mg in meta_graphs for sig in mg.signatures]
    if not rows:
        rows = [{"tag set": fmt_tags(mg.tags), "signature": "(none)", "method": "",
                 "inputs": "", "outputs": ""} for mg in meta_graphs]
    return pd.DataFrame(rows, columns=["tag set", "signature", "method", "inputs", "outputs"])


def tensors_table(specs: list[TensorInfo], role: str = "input") -> pd.DataFrame:
    """One row per input or output: name, dtype, shape, graph tensor, encoding."""
    return pd.DataFrame([{"": role, "name": t.name, "dtype": t.dtype,
                          "shape": fmt_shape(t.shape), "tensor": t.tensor,
                          "encoding": t.encoding} for t in specs],
                        columns=["", "name", "dtype", "shape", "tensor", "encoding"])
