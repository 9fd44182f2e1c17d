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


def summary_table(arrays: dict) -> pd.DataFrame:
    """One row per output (or input): dtype, shape, and min, max, mean, std over the finite
    values, NaN and Inf counts; for strings the first value."""
    rows = []
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype == ml_dtypes.bfloat16:
            arr = arr.astype(np.float32)
        row = {"name": name, "dtype": str(value.dtype) if hasattr(value, "dtype") else "",
               "shape": "[" + ", ".join(map(str, arr.shape)) + "]", "min": None, "max": None,
               "mean": None, "std": None, "nan": None, "inf": None, "first value": ""}
        if arr.dtype.kind in "fiub" and arr.size:
            x = arr.astype(np.float64).reshape(-1)
            finite = x[np.isfinite(x)]
            row.update(nan=int(np.isnan(x).sum()), inf=int(np.isinf(x).sum()))
            if finite.size:
                row.update(min=float(finite.min()), max=float(finite.max()),
                           mean=float(finite.mean()), std=float(finite.std()))
        elif arr.size:
            first = arr.reshape(-1)[0]
            text = jsonable(first) if isinstance(first, bytes) else str(first)
            row["first value"] = text if len(text) <= 80 else text[:77] + "..."
        rows.append(row)
    return pd.DataFrame(rows, columns=["name", "dtype", "shape", "min", "max", "mean", "std",
                                       "nan", "inf", "first value"])


def examples_of(value) -> int:
    """How many examples an output holds along its first axis (1 for a scalar)."""
    arr = np.asarray(value)
    return int(arr.shape[0]) if arr.ndim >= 1 else 1


def npz_bytes(arrays: dict) -> bytes:
    """Every array in one ``.npz`` file (bfloat16 as float32; strings as UTF-8 text)."""
    import io

    buffer = io.BytesIO()
    out = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype == ml_dtypes.bfloat16:
            arr = arr.astype(np.float32)
        if arr.dtype.kind in "OS":
            arr = np.asarray(np.frompyfunc(lambda v: jsonable(v) if isinstance(v, bytes)
                                           else str(v), 1, 1)(arr), dtype=object).astype(str)
        out[name.replace("/", "_")] = arr
    np.savez(buffer, **out)
    return buffer.getvalue()


def saved_model_exports(folder: str, depth: int = 4, limit: int = 5) -> list[str]:
    """SavedModel folders (with ``saved_model.pb``) at most ``depth`` levels under a run
    folder, such as an Estimator's ``export/<name>/<version>``; newest version first."""
    import os

    found = []
    if "://" in folder or not os.path.isdir(folder):
        return found
    base = folder.rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(folder):
        if root.count(os.sep) - base >= depth:
            dirs[:] = []
        if "saved_model.pb" in files:
            found.append(root)
            dirs[:] = []
        if len(found) >= 50:
            break
    return sorted(found, key=lambda p: (os.path.dirname(p), os.path.basename(p)),
                  reverse=True)[:limit]


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
