"""Test inputs for a model: typed values, generated arrays, and serialized tf.Examples.

Nothing here evaluates user text: JSON goes through ``json.loads``, files through
``np.load(allow_pickle=False)`` or the csv module. Declared shapes are only quoted in
messages, never enforced: TensorFlow decides at run time (declared shapes are often wrong).
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from typing import Any, Callable, Mapping

import numpy as np

from tpuckpt_viz.checkpoint import storage
from tpuckpt_viz.errors import UserError, first_line
from tpuckpt_viz.inference.savedmodel import fmt_shape
from tpuckpt_viz.tfcompat import tf

FILLS = ("random", "zeros", "ones")
FILE_SUFFIXES = (".npy", ".npz", ".csv")


_NOT_FEEDABLE = ("resource", "variant", "invalid")
# Generated values take this many bytes per string element (an object pointer and a short
# bytes object) when sizing them before they are made.
_STRING_BYTES = 64
_MAX_DIMS = 32


def _np_dtype(dtype: str, name: str = "input"):
    dtype = str(dtype).replace("_ref", "")
    if dtype == "string":
        return object
    if dtype in _NOT_FEEDABLE or dtype.startswith("dtype_"):
        raise UserError(f"input {name!r} has dtype {dtype}, which cannot be given as test values "
                        "(it is a handle or an unknown type): pick another signature")
    try:
        return tf().dtypes.as_dtype(dtype).as_numpy_dtype
    except (TypeError, ValueError):
        raise UserError(f"input {name!r} has dtype {dtype}, which infer cannot make values of: "
                        "pick another signature") from None


def limit_bytes() -> int:
    """The most bytes one input may take: the upload_mb setting (TPUCKPT_UPLOAD_MB)."""
    from tpuckpt_viz import config

    return config.get_int("upload_mb") << 20


def human_size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def check_size(name: str, shape, itemsize: int, what: str, hint: str) -> None:
    """Refuse an array of ``shape`` x ``itemsize`` bytes over the limit, before it is made."""
    count = 1
    for d in shape:
        count *= max(int(d), 0)
    size = count * itemsize
    if size > limit_bytes():
        shown = "[" + ", ".join(str(int(d)) for d in shape) + "]"
        raise UserError(f"input {name!r}: {what} would be {shown} = {count:,} values "
                        f"({human_size(size)}), over the {limit_bytes() >> 20} MB limit "
                        f"(TPUCKPT_UPLOAD_MB): {hint}")


def expect(dtype: str, shape) -> str:
    return f"expected {dtype} values of shape {fmt_shape(shape)}"


def _to_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.generic):
        return _to_bytes(value.item())
    return str(value).encode("utf-8")


def _convert(value, dtype: str, shape, name: str) -> np.ndarray:
    """``value`` (nested lists, numbers, strings, an array) as an array of ``dtype``."""
    dtype = str(dtype).replace("_ref", "")
    where = f"input {name!r}"
    if _depth(value) > _MAX_DIMS:
        raise UserError(f"{where}: nested more than {_MAX_DIMS} deep (an input has at most "
                        f"{_MAX_DIMS} dimensions); {expect(dtype, shape)}")
    try:
        if dtype == "string":
            arr = np.array(value, dtype=object)
            return np.frompyfunc(_to_bytes, 1, 1)(arr).astype(object) if arr.ndim else \
                np.array(_to_bytes(arr.item()), dtype=object)
        arr = np.asarray(value)
    except (ValueError, RecursionError) as exc:  # ragged nesting
        raise UserError(f"{where}: {first_line(exc)}; {expect(dtype, shape)}")
    target = np.dtype(_np_dtype(dtype, name))
    if arr.dtype.kind in "USO":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise UserError(f"{where}: not numbers; {expect(dtype, shape)}") from None
    if target.kind == "b":
        if arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
            raise UserError(f"{where}: booleans must be true/false or 0/1; "
                            f"{expect(dtype, shape)}")
    elif target.kind in "iu":
        if arr.dtype.kind == "f" or arr.dtype.kind == "c":
            if not np.isfinite(arr).all() or (arr != np.round(arr.real)).any():
                raise UserError(f"{where}: {dtype} takes whole numbers; {expect(dtype, shape)}")
            arr = arr.real
        if arr.size:
            info = np.iinfo(target)
            if arr.min() < info.min or arr.max() > info.max:
                raise UserError(f"{where}: values outside {dtype}'s range "
                                f"[{info.min}, {info.max}]; {expect(dtype, shape)}")
    elif target.kind == "f" and arr.dtype.kind == "c":
        raise UserError(f"{where}: complex numbers; {expect(dtype, shape)}")
    return arr.astype(target)


def _depth(value) -> int:
    """How deep lists nest in ``value`` (along the first elements), counted up to one past
    the most dimensions an input may have."""
    depth = 0
    while isinstance(value, (list, tuple)) and depth <= _MAX_DIMS:
        depth += 1
        value = value[0] if value else None
    return depth


def read_array_bytes(data: bytes, filename: str, name: str = "input",
                     dtype: str = "float32"):
    """The value held by the bytes of a ``.npy``, ``.npz`` or ``.csv`` file (an upload).

    ``.npz``: the array named like the input, else the only one. ``.csv``: rows of values; a
    first row that is not numeric is a header (numeric inputs only). Returns an array or a
    list of rows, still to be converted to the input's dtype.
    """
    lower = filename.lower()
    try:
        if lower.endswith(".npy"):
            return _read_npy(io.BytesIO(data), filename, name)
        if lower.endswith(".npz"):
            return _read_npz(data, filename, name)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # pickles, truncation
        raise UserError(f"input {name!r}: cannot read {filename}: {first_line(exc)}")
    if not lower.endswith(".csv"):
        raise UserError(f"input {name!r}: {filename} is not a .npy, .npz or .csv file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"input {name!r}: {filename} is not UTF-8 text: "
                        "save the CSV as UTF-8") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if rows and str(dtype) != "string":
        try:
            [float(v) for v in rows[0]]
        except ValueError:
            rows = rows[1:]
    if not rows:
        raise UserError(f"input {name!r}: {filename} holds no rows")
    return rows


def _read_npy(f, filename: str, name: str) -> np.ndarray:
    """One ``.npy`` array, sized from its header before its data is read."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if dtype.hasobject:
        raise ValueError("it holds Python objects (pickles), which are never loaded: save "
                         "numbers or strings")
    check_size(name, shape, max(dtype.itemsize, 1), f"{filename} (its header says)",
               "send a smaller array, or raise TPUCKPT_UPLOAD_MB")
    count = 1
    for d in shape:
        count *= int(d)
    raw = f.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"the data is shorter than its header's shape {list(shape)} says: "
                         "the file is truncated")
    arr = np.frombuffer(raw, dtype=dtype, count=count)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _read_npz(data: bytes, filename: str, name: str) -> np.ndarray:
    """The array of an ``.npz`` named like the input, else the only one; every member sized
    from the zip's central directory (and then its .npy header) before it is inflated."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [i for i in archive.infolist() if i.filename.endswith(".npy")]
        total = sum(i.file_size for i in members)
        if total > limit_bytes():
            raise UserError(f"input {name!r}: {filename} inflates to {human_size(total)} "
                            f"({len(members)} arrays), over the {limit_bytes() >> 20} MB limit "
                            "(TPUCKPT_UPLOAD_MB): send smaller arrays, or raise the limit")
        keys = [i.filename[: -len(".npy")] for i in members]
        key = name if name in keys else keys[0] if len(keys) == 1 else None
        if key is None:
            raise UserError(f"input {name!r}: {filename} holds arrays "
                            f"{', '.join(keys) or '(none)'} and none is named {name!r}: save "
                            f"one array, or name it {name!r}")
        with archive.open(key + ".npy") as member:
            return _read_npy(member, filename, name)


def _read_file_value(path: str, dtype: str, name: str):
    gfile = tf().io.gfile
    if not gfile.exists(path):
        raise UserError(f"input {name!r}: file {path} not found")
    with storage.open_input(path) as f:  # a regular file only: a named pipe never ends
        if f.size > limit_bytes():
            raise UserError(f"input {name!r}: {path} is {human_size(f.size)}, over the "
                            f"{limit_bytes() >> 20} MB limit (TPUCKPT_UPLOAD_MB): raise it "
                            "for larger inputs")
        data = storage.read_range(f, 0, f.size)
    return read_array_bytes(data, path, name, dtype)


def parse_input_value(value, dtype: str, shape=None, *, name: str = "input",
                      example_spec: Mapping[str, str] | Callable[[], Mapping[str, str]]
                      | None = None, files: bool = True) -> np.ndarray:
    """One input value as an array of the signature's ``dtype``.

    ``value``: an array or nested lists, or text: a JSON literal (``[[1],[2],[5]]``; parsed
    with ``json.loads``, never evaluated) or, where ``files``, the path of a ``.npy``, ``.npz``
    (the array named like the input, else the only one; ``allow_pickle=False``) or ``.csv``
    file. For a string input, text that is not JSON is taken as one string, and a JSON object
    (feature -> values) or a list of objects (one per example) becomes serialized tf.Example
    strings, typed by ``example_spec`` (see ``example_features``).

    The declared ``shape`` is only used in messages: declared shapes are often wrong
    (half_plus_three declares a scalar and takes [n, 1]), so TensorFlow decides at run time.
    """
    dtype = str(dtype).replace("_ref", "")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        text = value.strip()
        if files and text.lower().endswith(FILE_SUFFIXES):
            value = _read_file_value(text, dtype, name)
        else:
            try:
                value = json.loads(text)
            except RecursionError:
                raise UserError(f"input {name!r}: the JSON is nested too deeply: an input has "
                                f"at most {_MAX_DIMS} dimensions; {expect(dtype, shape)}") from None
            except ValueError:
                if dtype == "string":
                    return np.array(text.encode("utf-8"), dtype=object)
                if files and _exists(text):
                    raise UserError(f"input {name!r}: {text} is not a .npy, .npz or .csv file; "
                                    f"{expect(dtype, shape)}") from None
                what = ("neither a JSON literal nor a .npy/.npz/.csv file" if files
                        else "not a JSON literal")
                raise UserError(f"input {name!r}: {text[:60]!r} is {what}; "
                                f"{expect(dtype, shape)}") from None
    if dtype == "string" and _is_examples(value):
        spec = example_spec() if callable(example_spec) else example_spec
        rows = value if isinstance(value, list) else None
        if rows is not None:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            value = {k: [row.get(k) for row in rows] for k in keys}
        return np.array(make_examples(value, spec or None), dtype=object)
    return column_if_declared(_convert(value, dtype, shape, name), shape)


def column_if_declared(arr: np.ndarray, shape) -> np.ndarray:
    """A flat list for an input declared ``[-1, 1]`` (a batch of one value each) as that
    column: the only shape it can mean. Anything else is left as given."""
    dims = list(shape) if shape is not None else None
    if (arr.ndim == 1 and dims is not None and len(dims) == 2 and dims[1] == 1
            and (dims[0] is None or dims[0] < 0)):
        return arr.reshape(-1, 1)
    return arr


def _exists(text: str) -> bool:
    try:
        return bool(text) and tf().io.gfile.exists(text)
    except Exception:  # noqa: BLE001 - odd text is not a path
        return False


def _is_examples(value) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def fill_of(fill: str | Mapping[str, str], name: str) -> str:
    """The fill for input ``name``: ``fill`` is one mode for all, or input name -> mode."""
    mode = fill.get(name, "random") if isinstance(fill, Mapping) else fill
    if mode not in FILLS:
        raise UserError(f"unknown fill {mode!r}: use random, zeros or ones")
    return mode


def make_inputs(signature_inputs, mode: str | Mapping[str, str] = "random", batch: int = 4,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Generated inputs for ``signature_inputs`` (TensorInfo list, or name -> (dtype, shape)).

    Unknown dimensions become ``batch``; an unknown rank becomes a scalar (it broadcasts,
    and old TF1 placeholders of unknown rank are mostly scalars). ``mode``: "random" (normal
    floats, integers 0..9, random booleans), "zeros" or "ones", for all inputs or per input
    name (a mapping; "random" for names it leaves out). String inputs get empty strings (an
    empty string is also a valid, empty tf.Example).
    """
    if isinstance(signature_inputs, Mapping):
        items = [(k, v[0], v[1]) for k, v in signature_inputs.items()]
    else:
        items = [(t.name, t.dtype, t.shape) for t in signature_inputs]
    if not isinstance(mode, Mapping):
        fill_of(mode, "")
    rng = np.random.default_rng(seed)
    planned = []
    for name, dtype, shape in items:  # sized (and dtypes checked) before anything is made
        dims = () if shape is None else tuple(batch if d is None or d < 0 else d for d in shape)
        dtype = str(dtype).replace("_ref", "")
        itemsize = _STRING_BYTES if dtype == "string" else np.dtype(_np_dtype(dtype, name)).itemsize
        check_size(name, dims, itemsize, "the generated input",
                   f"pass --input {name}=VALUE (or a smaller --batch)")
        planned.append((name, dtype, dims))
    result = {}
    for name, dtype, dims in planned:
        fill = fill_of(mode, name)
        if dtype == "string":
            result[name] = np.full(dims, b"", dtype=object)
            continue
        target = np.dtype(_np_dtype(dtype, name))
        if fill == "zeros":
            arr = np.zeros(dims)
        elif fill == "ones":
            arr = np.ones(dims)
        elif target.kind == "b":
            arr = rng.integers(0, 2, size=dims)
        elif target.kind in "iu":
            arr = rng.integers(0, 10, size=dims)
        else:
            arr = rng.standard_normal(size=dims)
        result[name] = np.asarray(arr).astype(target)
    return result


def json_template(spec, batch: int = 2, limit: int = 64) -> str:
    """A JSON value of the right dtype and declared shape (ones, empty strings) to start from;
    "" where it would hold more than ``limit`` values."""
    try:
        arr = make_inputs([spec], "ones", batch)[spec.name]
    except UserError:  # too large to show, or a dtype no value can have
        return ""
    if arr.size > limit:
        return ""
    if arr.dtype == object:
        return json.dumps(np.frompyfunc(lambda v: v.decode("utf-8"), 1, 1)(arr).tolist())
    return json.dumps(arr.tolist())


def parse_feature_text(text: str, dtype: str, name: str = "feature") -> list | None:
    """One tf.Example feature typed in a form: comma-separated values, one per example.

    Numbers for numeric features, plain text for string ones; empty text leaves the feature
    out (None).
    """
    text = (text or "").strip()
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    kind = _feature_kind(parts, dtype)
    if kind == "bytes":
        return parts
    try:
        return [float(p) if kind == "float" else int(p) for p in parts]
    except ValueError:
        raise UserError(f"tf.Example feature {name!r}: {text[:60]!r} is not a list of "
                        f"{'numbers' if kind == 'float' else 'whole numbers'}; expected {dtype} "
                        "values separated by commas, one per example") from None


def make_examples(features: Mapping[str, Any], dtypes: Mapping[str, str] | None = None
                  ) -> list[bytes]:
    """Serialized ``tf.train.Example`` strings: ``features`` maps a name to one value per example.

    ``{"x": [1, 2]}`` gives two examples, x=1 and x=2; a value may itself be a list (a
    multi-valued feature) or None (feature left out). ``dtypes`` (feature -> "float32",
    "int64", "string"; see ``example_features``) picks the feature's list type; without
    it the Python values decide (floats -> float_list, ints -> int64_list, text -> bytes_list).
    """
    tf()  # quiet import first: the protos alone print TF's banner
    from tensorflow.core.example import example_pb2

    columns = {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v])
               for k, v in features.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise UserError("tf.Example features have different numbers of values "
                        f"({', '.join(f'{k}: {len(v)}' for k, v in columns.items())}): "
                        "give one value per example for each feature")
    count = lengths.pop() if lengths else 0
    dtypes = dict(dtypes or {})
    out = []
    for i in range(count):
        example = example_pb2.Example()
        for key, column in columns.items():
            value = column[i]
            if value is None:
                continue
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
            kind = _feature_kind(values, dtypes.get(key))
            feature = example.features.feature[key]
            try:
                if kind == "float":
                    feature.float_list.value.extend(float(v) for v in values)
                elif kind == "int":
                    feature.int64_list.value.extend(int(v) for v in values)
                else:
                    feature.bytes_list.value.extend(_to_bytes(v) for v in values)
            except (TypeError, ValueError) as exc:
                raise UserError(f"tf.Example feature {key!r}: {first_line(exc)}; expected "
                                f"{dtypes.get(key) or kind} values")
        out.append(example.SerializeToString())
    return out


def _feature_kind(values: list, dtype: str | None) -> str:
    if dtype:
        dtype = dtype.replace("_ref", "")
        if dtype == "string":
            return "bytes"
        if dtype.startswith(("float", "bfloat", "half", "double")):
            return "float"
        return "int"
    if any(isinstance(v, (str, bytes)) for v in values):
        return "bytes"
    if all(isinstance(v, (bool, int, np.integer)) for v in values):
        return "int"
    return "float"
