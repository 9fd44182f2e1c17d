"""Print records as a table, JSON or CSV (the CLI's ``--format``).

Kept free of pandas: the CLI's commands that only read tensors should not pay its import.
JSON never holds NaN or Infinity (null instead), per docs/reference.md.

Tables are drawn by ``rich``. On a terminal they fit its width and long values wrap inside
their cell (``overflow="fold"``), never cut; written to a pipe or a file, every row stays on
one line, as wide as its longest value, so ``grep`` and ``awk`` see whole values.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from typing import Any, Iterable, TextIO


_PLAIN = frozenset((str, int, bool, type(None)))  # JSON-safe as they are


def clean(value: Any) -> Any:
    """A JSON-safe copy of ``value``: numpy scalars and arrays to Python, NaN/Inf to None."""
    # Exact type checks before isinstance: a listing of 20,000 variables cleans a quarter of
    # a million values, nearly all of them str, int or None.
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict or isinstance(value, dict):
        return {k if type(k) is str else str(k): v if type(v) in _PLAIN else clean(v)
                for k, v in value.items()}
    if kind is list or isinstance(value, (list, tuple)):
        return [v if type(v) in _PLAIN else clean(v) for v in value]
    # A numpy value exists only once numpy is loaded: a listing does not load it.
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return clean(value.tolist())
    if np is not None and isinstance(value, np.generic):
        return clean(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


# allow_nan=False: ``clean`` has already turned NaN and Inf into None; one left is a bug.
_ENCODER = json.JSONEncoder(allow_nan=False)


def _encode(row: Any) -> str:
    try:  # most rows are JSON as they are: cleaning them first would double the cost
        return _ENCODER.encode(row)
    except (TypeError, ValueError):  # numpy values, bytes, NaN or Inf: a clean copy
        return _ENCODER.encode(clean(row))


def write_json_list(rows: list[dict], out: TextIO) -> None:
    """A JSON list with one object per line: as readable as an indented dump, and written by
    the json module's C encoder (indentation would force its pure-Python one, 5x slower)."""
    out.write("[\n")
    out.write(",\n".join(map(_encode, rows)))
    out.write("\n]\n" if rows else "]\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


SHORT = 14  # a column whose values are all this short is never folded


def _numeric(values: list[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 for v in present)


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def write_table(rows: list[list[Any]], columns: list[str], out: TextIO,
                width: int | None = None) -> None:
    """Draw ``rows`` (lists of values, in ``columns`` order) with rich.

    ``width``: fold long values to fit this many characters; by default the terminal's width
    when ``out`` is a terminal, else no limit (one line per row).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    fit = width is not None or _is_terminal(out)
    console = Console(file=out, width=width if width is not None else (None if fit else 10**6),
                      markup=False, highlight=False, emoji=False, soft_wrap=False,
                      color_system="auto" if width is None and fit else None)
    table = Table(box=box.SIMPLE_HEAD if fit else None, show_edge=False, pad_edge=False,
                  header_style="bold" if fit else None)
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [_numeric([row[i] for row in rows]) for i in range(len(columns))]
    longest = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    # Numbers and short words (kind, dtype, status) keep their width; long names, keys and
    # paths take what is left and fold inside their cell. When even that does not fit the
    # terminal, every column folds: whole values matter more than tidy ones.
    keep = [n if num or n <= SHORT else None for n, num in zip(longest, numeric)]
    if sum(k or SHORT for k in keep) + 3 * len(columns) > console.size.width:
        keep = [None] * len(columns)
    for column, num, width in zip(columns, numeric, keep):
        table.add_column(column, overflow="fold", justify="right" if num else "left",
                         min_width=width)
    for row in cells:
        table.add_row(*row)
    if fit:
        console.print(table)
        return
    with console.capture() as capture:
        console.print(table)
    out.write("".join(line.rstrip() + "\n" for line in capture.get().splitlines()))


def write(records: list[dict], fmt: str, columns: Iterable[str] | None = None,
          out: TextIO | None = None, *, table_columns: Iterable[str] | None = None,
          width: int | None = None) -> None:
    """Write ``records`` to ``out`` (stdout) as ``table``, ``json`` or ``csv``.

    JSON and CSV hold ``columns`` in that order (the contract); a table shows
    ``table_columns`` (by default the same), which puts the readable name first and the raw
    key last. ``width`` is for tables only (see :func:`write_table`).
    """
    out = out or sys.stdout
    columns = list(columns) if columns else (list(records[0]) if records else [])
    cols = tuple(columns)
    # Records already in the contract's order are written as they are (a listing's are).
    rows = [r if tuple(r) == cols else {c: r.get(c) for c in cols} for r in records]
    if fmt == "json":
        write_json_list(rows, out)
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(clean(row[c])) for c in columns])
    else:
        shown = list(table_columns) if table_columns else columns
        write_table([[clean(r.get(c)) for c in shown] for r in records], shown, out, width)


def _flatten(obj: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _json_cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(clean(value), allow_nan=False)
    return value


def write_object(obj: dict, fmt: str, out: TextIO | None = None, *,
                 width: int | None = None) -> None:
    """Write one object (``infer``'s result): JSON as is, CSV as ``field,value`` rows (lists
    and objects as JSON), a table as one row per field with nested objects spelled out as
    ``outputs.NAME``; every value whole (wrapped on a terminal, never cut)."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump(clean(obj), out, indent=1, allow_nan=False)
        out.write("\n")
    elif fmt == "csv":
        rows = [{"field": k, "value": _json_cell(v)} for k, v in obj.items()]
        write(rows, fmt, ["field", "value"], out)
    else:
        write_table([[k, clean(_json_cell(v))] for k, v in _flatten(obj)], ["field", "value"],
                    out, width)
