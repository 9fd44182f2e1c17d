"""The Infer page's data (no Streamlit here): what to run, the choices its widgets offer,
the inputs parsed from what was typed or uploaded, and tables and chart data from the
inference layer's plain results."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pandas as pd

from tpuckpt_viz.dashboard.access import check_path, is_allowed, resolve_allowed
from tpuckpt_viz.errors import UserError
from tpuckpt_viz.inference import api as inf
from tpuckpt_viz.inference.api import jsonable
from tpuckpt_viz.inference.savedmodel import MetaGraphInfo, TensorInfo, fmt_shape, fmt_tags

SMALL_OUTPUT = 200  # outputs with at most this many values also show as a table
# Input modes: generated values (label -> the core's fill), or given by the person.
FILL_LABELS = {"random normal": "random", "zeros": "zeros", "ones": "ones"}
EMPTY_STRINGS = "empty strings"
JSON, UPLOAD, FORM, GENERATED_EXAMPLES = ("JSON", "upload .npy/.npz/.csv", "tf.Example form",
                                          "generated tf.Examples")


def infer_target(path: str) -> tuple[str, str]:
    """(kind, what to run) for a path typed on the Infer page, resolved exactly as Browse
    resolves it and checked against the allowed roots: (``saved_model``, its folder) or
    (``checkpoint``, its prefix). Raises UserError."""
    checked = check_path(path)
    source = inf.resolve_source(checked)
    if source.kind == "saved_model":
        return source.kind, check_path(source.path)
    return source.kind, resolve_allowed(source.path).prefix


def allowed_exports(folder: str) -> list[str]:
    """:func:`saved_model_exports` of a run folder that lie inside the allowed roots."""
    return [e for e in saved_model_exports(folder) if is_allowed(e)]


def signature_defaults(meta_graphs: list[MetaGraphInfo]) -> tuple[list[str], int, str | None]:
    """(tag set names, the index of the one to offer first, the signature to offer first):
    tag set ``serve`` and signature ``serving_default`` where they exist, else the only one
    (see ``inference.api.pick``); with several and none of those, the first tag set."""
    try:
        default_mg, default_sig = inf.pick(meta_graphs)
    except UserError:
        default_mg, default_sig = meta_graphs[0], None
    names = [fmt_tags(m.tags) for m in meta_graphs]
    return (names, names.index(fmt_tags(default_mg.tags)),
            default_sig.name if default_sig is not None else None)


def signature_names(mg: MetaGraphInfo, default: str | None) -> tuple[list[str], int]:
    """The signatures of tag set ``mg`` and the index of ``default`` among them (else 0);
    a tag set without one is a UserError."""
    names = [s.name for s in mg.signatures]
    if not names:
        raise UserError(f"tag set {fmt_tags(mg.tags)} has no signature to run: pick another "
                        "tag set")
    return names, names.index(default) if default in names else 0


def input_modes(t: TensorInfo, features: dict) -> list[str]:
    """How an input can be given: generated tf.Examples, a form, JSON or a file for a string
    input that parses tf.Examples (``features``: feature -> dtype); empty strings, JSON or a
    file for another string input; generated values (:data:`FILL_LABELS`), JSON or a file
    for a numeric one. The first is the default."""
    if t.dtype == "string" and features:
        return [GENERATED_EXAMPLES, FORM, JSON, UPLOAD]
    if t.dtype == "string":
        return [EMPTY_STRINGS, JSON, UPLOAD]
    return [*FILL_LABELS, JSON, UPLOAD]


def json_example(t: TensorInfo, features: dict) -> str:
    """The JSON an input's text box starts with: an object feature -> values for tf.Example
    inputs, else a literal of the input's shape and dtype (``inference.api.json_template``)."""
    if t.dtype == "string" and features:
        return '{"' + '": [1], "'.join(features) + '": [1]}'
    return inf.json_template(t)


def fills(modes: dict[str, str]) -> dict[str, str]:
    """Input name -> the core's fill for generated values (``random`` unless ``zeros`` or
    ``ones`` was chosen), from input name -> mode."""
    return {name: FILL_LABELS.get(mode, "random") for name, mode in modes.items()}


def input_value(t: TensorInfo, given: tuple, features: dict, upload_mb: int):
    """The value to pass to the core for one input, from what its widgets hold.

    ``given``: (``json``, text), (``file``, (file name, bytes) or None) or (``form``,
    feature -> (dtype, comma-separated text)). Text is parsed here, never read as a path;
    a missing or too large upload is a UserError that says what to do.
    """
    what, value = given
    if what == "json":
        return inf.parse_input_value(value, t.dtype, t.shape, name=t.name, files=False,
                                     example_spec=features)
    if what == "file":
        if value is None:
            raise UserError(f"input {t.name!r}: upload a .npy, .npz or .csv file, or pick "
                            "another mode")
        filename, data = value
        if len(data) > upload_mb << 20:
            raise UserError(f"input {t.name!r}: {filename} is larger than {upload_mb} MB "
                            "(TPUCKPT_UPLOAD_MB)")
        return inf.read_array_bytes(data, filename, t.name, t.dtype)
    if what == "form":
        columns = {name: inf.parse_feature_text(text, dtype, name)
                   for name, (dtype, text) in value.items()}
        return {k: v for k, v in columns.items() if v is not None}
    raise ValueError(f"unknown input kind {what!r}")


def restore_caption(restore: dict) -> str:
    """One line on how a checkpoint's values went into the model."""
    return (f"Restore: {restore['matched']} variables matched, "
            f"{len(restore['unmatched_model'])} model variables got no value, "
            f"{len(restore['unused_checkpoint'])} checkpoint values unused "
            "(optimizer slots are expected there).")


def latency_help(runs: int) -> str:
    """What the latency shown was taken over."""
    return (f"Median of {runs - 1} runs after a warm-up" if runs > 1
            else "One run (the signature changes state), tracing included")


def chart_data(name: str, value, example: int = 0) -> tuple[str, np.ndarray, bool]:
    """(title, values, one value per example) of an output's chart.

    An output with one number per example (shape ``[n]`` or ``[n, 1]``) charts the batch;
    a higher-rank one charts example ``example`` of the batch; a scalar charts itself.
    """
    value = np.asarray(value)
    if value.ndim >= 2 and value.size == examples_of(value):
        return name, value.reshape(-1), True
    if value.ndim >= 2:
        return f"{name}, example {example}", value[example], False
    return name, value, value.ndim == 1


def picks_example(value) -> bool:
    """Whether an output's chart needs a choice of example (several examples, each more than
    one number)."""
    value = np.asarray(value)
    n = examples_of(value)
    return value.ndim >= 2 and value.size != n and n > 1


def other_steps(members: list[dict], target: str) -> tuple[list[str], int]:
    """The run's other checkpoints to compare ``target`` with (``members``: the run in
    training order) and the index of the one to offer first: the step before ``target``."""
    prefixes = [d["checkpoint"] for d in members]
    others = [p for p in prefixes if p != target]
    at = prefixes.index(target) if target in prefixes else len(prefixes) - 1
    return others, max(0, at - 1)


def pair_diff_table(diffs: dict) -> pd.DataFrame:
    """One row per output: its name and how far the two runs' values are apart."""
    return pd.DataFrame([{"output": k, **v} for k, v in diffs.items()])


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
