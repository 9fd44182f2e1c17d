"""Print records as a table, JSON or CSV (the CLI's ``--format``).

Kept free of pandas: the CLI's commands that only read tensors should not pay its import.
JSON never holds NaN or Infinity (null instead), per DESIGN.md.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from typing import Any, Iterable, TextIO

import numpy as np


def clean(value: Any) -> Any:
    """A JSON-safe copy of ``value``: numpy scalars and arrays to Python, NaN/Inf to None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        return clean(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def write(records: list[dict], fmt: str, columns: Iterable[str] | None = None,
          out: TextIO | None = None) -> None:
    """Write ``records`` to ``out`` (stdout) as ``table``, ``json`` or ``csv``."""
    out = out or sys.stdout
    columns = list(columns) if columns else (list(records[0]) if records else [])
    rows = [{c: r.get(c) for c in columns} for r in records]
    if fmt == "json":
        json.dump(clean(rows), out, indent=1, allow_nan=False)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(clean(row[c])) for c in columns])
    else:
        cells = [[_cell(clean(row[c])) for c in columns] for row in rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        widths = [min(w, 80) for w in widths]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
        for r in cells:
            out.write("  ".join(v[:w].ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")


def write_object(obj: dict, fmt: str, out: TextIO | None = None) -> None:
    """Write one object (``infer``'s result): JSON as is, table and CSV as key/value rows."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump(clean(obj), out, indent=1, allow_nan=False)
        out.write("\n")
        return
    rows = [{"field": k, "value": json.dumps(clean(v), allow_nan=False)
             if isinstance(v, (dict, list)) else v} for k, v in obj.items()]
    write(rows, fmt, ["field", "value"], out)
