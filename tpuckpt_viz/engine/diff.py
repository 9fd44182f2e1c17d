"""Two checkpoints side by side, and a whole run across its saved steps.

Tensors are streamed pairwise, a chunk of each side at a time, so two checkpoints are never in
memory whole: one pass gives ||a||, ||b||, ||b - a||, a.b, max |b - a| and whether the bytes
are identical. Variables pair up by readable name (so Keras 3 checkpoints whose raw keys
differ still match) or, on request, by raw key.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Callable, Iterable

import numpy as np

from tpuckpt_viz.checkpoint.objectgraph import object_path
from tpuckpt_viz.checkpoint.paths import run_checkpoints
from tpuckpt_viz.checkpoint.reader import Checkpoint, open_checkpoint
from tpuckpt_viz.checkpoint.records import list_records
from tpuckpt_viz.engine.chunks import ordered_map, pair_chunks, reused_chunks, threads_for
from tpuckpt_viz.engine.reductions import Accumulator, PairAccumulator, delta_sumsq, widen
from tpuckpt_viz.errors import UserError
from tpuckpt_viz.patterns import compile_user

Progress = Callable[[int, int, str], None]  # (done, total, label)

_STEP_NAMES = ("global_step",)
_ITER_NAMES = ("iter", "iteration", "iterations", "_iterations")


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def compare_tensors(ckpt_a: Checkpoint, key_a: str, ckpt_b: Checkpoint, key_b: str) -> dict:
    """One streamed pass over a tensor present on both sides (same shape and dtype).

    Both sides are read once, a chunk of each at a time into reused memory
    (:func:`tpuckpt_viz.engine.chunks.pair_chunks`), and reduced by
    :class:`tpuckpt_viz.engine.reductions.PairAccumulator`.
    """
    entry = ckpt_a.entries[key_a]
    numeric = entry.dtype not in ("string", "resource", "variant")
    if not numeric:
        same = np.array_equal(np.asarray(ckpt_a.read_raw(key_a)),
                              np.asarray(ckpt_b.read_raw(key_b)))
        return {"identical": bool(same), "l2_a": None, "l2_b": None, "delta_l2": None,
                "rel_change": None, "cosine": None, "max_abs_delta": None}
    acc = PairAccumulator()
    for ca, cb in pair_chunks(ckpt_a, key_a, ckpt_b, key_b):
        acc.add(ca, cb)
    return acc.result()


def _apart(ra: dict | None, rb: dict | None) -> str | None:
    """The status of a variable whose two sides cannot be compared value by value ("added",
    "removed", "dtype_changed", "shape_changed"), or None when they can."""
    if ra is None:
        return "added"
    if rb is None:
        return "removed"
    if ra["dtype"] != rb["dtype"]:
        return "dtype_changed"
    if ra["shape"] != rb["shape"]:
        return "shape_changed"
    return None


def diff_checkpoints(ckpt_a: Checkpoint, ckpt_b: Checkpoint, *, by: str = "name",
                     match: str | None = None, kinds: Iterable[str] | None = None,
                     progress: Progress | None = None, cluster=None) -> list[dict]:
    """One record per variable of either side, per the ``diff`` contract of docs/reference.md.

    ``by`` is ``"name"`` (readable names) or ``"key"`` (raw keys); ``match`` is a regular
    expression searched in the name or key and ``kinds`` a set of kinds to keep. With
    ``cluster`` (:class:`tpuckpt_viz.engine.cluster.Cluster`), the pairs its workers can read
    are compared there first, with the same results.
    """
    if by not in ("name", "key"):
        raise UserError(f"unknown pairing {by!r}: use 'name' or 'key'")
    pattern = _compile(match)
    kinds = set(kinds) if kinds else None
    recs_a = {r[by]: r for r in list_records(ckpt_a)}
    recs_b = {r[by]: r for r in list_records(ckpt_b)}
    labels = list(recs_a) + [k for k in recs_b if k not in recs_a]

    def wanted(rec: dict) -> bool:
        if kinds and rec["kind"] not in kinds:
            return False
        return not pattern or bool(pattern.search(rec["name"]) or pattern.search(rec["key"]))

    labels = [lbl for lbl in labels if wanted(recs_a.get(lbl) or recs_b[lbl])]
    # Per label: why its two sides cannot be compared value by value, or None when they can.
    apart = [_apart(recs_a.get(lbl), recs_b.get(lbl)) for lbl in labels]
    on_cluster = {}
    if cluster is not None:
        from tpuckpt_viz.engine import cluster as dask_engine

        pairs = [(i, recs_a[lbl]["key"], recs_b[lbl]["key"]) for i, lbl in enumerate(labels)
                 if apart[i] is None]
        on_cluster = dask_engine.compare_pairs(
            cluster, ckpt_a, ckpt_b, pairs,
            progress=progress and (lambda done, total: progress(done, len(labels), "cluster")))

    def compared(i: int) -> dict | None:
        """The pair's comparison, read here (on one of several threads) unless the cluster
        has done it; None where the two sides cannot be compared value by value."""
        if apart[i] is not None:
            return None
        key_a, key_b = recs_a[labels[i]]["key"], recs_b[labels[i]]["key"]
        return on_cluster.get(i) or compare_tensors(ckpt_a, key_a, ckpt_b, key_b)

    results = ordered_map(compared, range(len(labels)), threads_for(ckpt_a, ckpt_b))
    out = []
    for i, (label, result) in enumerate(zip(labels, results)):
        ra, rb = recs_a.get(label), recs_b.get(label)
        rec = ra or rb
        row = {"name": rec["name"], "key_a": ra and ra["key"], "key_b": rb and rb["key"],
               "status": None, "shape_a": ra and ra["shape"], "shape_b": rb and rb["shape"],
               "l2_a": None, "l2_b": None, "delta_l2": None, "rel_change": None,
               "cosine": None, "max_abs_delta": None, "kind": rec["kind"],
               "layer": rec["layer"], "dtype_a": ra and ra["dtype"], "dtype_b": rb and rb["dtype"],
               "numel": rec["numel"]}
        if progress:
            progress(i, len(labels), rec["name"])
        if result is not None:
            row["status"] = "same" if result.pop("identical") else "changed"
            row.update(result)
        else:
            row["status"] = apart[i]
            # One side's norm still helps to read the table.
            for side, ckpt, r in (("a", ckpt_a, ra), ("b", ckpt_b, rb)):
                if r is not None and r["dtype"] not in ("string", "resource", "variant"):
                    acc = Accumulator()
                    for chunk in ckpt.chunks(r["key"]):
                        acc.add(chunk)
                    row[f"l2_{side}"] = acc.result()["l2"]
        out.append(row)
    if progress:
        progress(len(labels), len(labels), "done")
    return out


def _compile(match: str | None):
    # User patterns run on RE2 (linear time): a pattern cannot stall the server.
    return compile_user(match, "--match") if match else None


def _scalar(ckpt: Checkpoint, key: str) -> int | None:
    try:
        value = np.asarray(ckpt.read_raw(key))
        return int(value.reshape(-1)[0]) if value.size else None
    except (UserError, TypeError, ValueError):
        return None


_FILE_NUMBER = re.compile(r"(?:^|[-_.])(\d+)$")
_KERAS_SUFFIXES = (".weights.h5", ".keras", ".h5")


def file_number(prefix: str) -> int | None:
    """The number that ends a checkpoint's file name (``ckpt-300`` -> 300), or None.

    Only a trailing number counts: ``bert_lite_tf2.ckpt`` has none.
    """
    base = prefix.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _KERAS_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    match = _FILE_NUMBER.search(base)
    return int(match.group(1)) if match else None


def checkpoint_step_info(ckpt: Checkpoint, records: list[dict] | None = None
                         ) -> tuple[int | None, str | None]:
    """The training step a checkpoint was saved at, and where it came from.

    In order (docs/reference.md, steps records): a step variable (``global_step``, or the object
    path ``step``), else the optimizer's iterations, else the number in the file name, else
    ``save_counter``. The file number comes before ``save_counter`` because
    ``CheckpointManager.save(checkpoint_number=step)`` names files by step while
    ``save_counter`` only counts saves. For Keras files (``ModelCheckpoint``) the number in
    the file name comes first. Returns ``(None, None)`` when nothing gives a number.
    """
    if getattr(ckpt, "format", None) == "keras":
        # Keras ModelCheckpoint files: the epoch (or batch) in the file name, then the
        # optimizer's iterations that the file holds (docs/reference.md, steps records).
        from tpuckpt_viz.checkpoint.paths import keras_run_number

        number = keras_run_number(ckpt.prefix)  # None for a lone file ("resnet50.h5")
        if number is not None:
            return number, "file name"
        if ckpt.iterations_key:
            value = _scalar(ckpt, ckpt.iterations_key)
            if value is not None:
                return value, "optimizer iterations"
    records = records if records is not None else list_records(ckpt)
    scalars = [r for r in records if r["shape"] == [] and r["dtype"].startswith(("int", "uint"))]

    def last(r):
        return r["name"].rsplit("/", 1)[-1]

    def from_records(pick):
        for r in scalars:
            if pick(r):
                value = _scalar(ckpt, r["key"])
                if value is not None:
                    return value
        return None

    number = file_number(ckpt.prefix)
    sources = [
        ("step variable", lambda: from_records(
            lambda r: last(r) in _STEP_NAMES or object_path(r["key"]) == "step")),
        ("optimizer iterations", lambda: from_records(
            lambda r: r["kind"] == "optimizer" and last(r) in _ITER_NAMES)),
        ("file name", lambda: number),
        ("save counter", lambda: from_records(lambda r: last(r) == "save_counter")),
    ]
    if ckpt.prefix.endswith(_KERAS_SUFFIXES):
        sources.insert(0, sources.pop(2))
    for source, value in sources:
        found = value()
        if found is not None:
            return found, source
    return None, None


def checkpoint_step(ckpt: Checkpoint, records: list[dict] | None = None) -> int | None:
    """The training step a checkpoint was saved at (see :func:`checkpoint_step_info`)."""
    return checkpoint_step_info(ckpt, records)[0]


# Results per pair of checkpoints (and filter), so that a page refresh on a run that is still
# training reads only the checkpoints that are new. Keyed by each checkpoint's signature.
_transition_cache: dict[tuple, list[dict]] = {}
_cache_lock = threading.Lock()
_CACHE_LIMIT = 512


def forget_transitions() -> None:
    """Empty the memo of checkpoint-to-checkpoint results: the next ``run_steps`` reads
    every checkpoint again."""
    with _cache_lock:
        _transition_cache.clear()


def _transition(prev: Checkpoint | None, curr: Checkpoint, match, kinds,
                cluster=None) -> list[dict]:
    key = (prev and (prev.prefix, prev.signature), curr.prefix, curr.signature, match,
           tuple(sorted(kinds)) if kinds else None)
    with _cache_lock:
        if key in _transition_cache:
            return _transition_cache[key]
    pattern = _compile(match)
    recs = list_records(curr)
    prev_by_name = {r["name"]: r for r in list_records(prev)} if prev else {}
    todo = []
    for r in recs:
        if r["dtype"] in ("string", "resource", "variant"):
            continue
        if kinds and r["kind"] not in kinds:
            continue
        if pattern and not (pattern.search(r["name"]) or pattern.search(r["key"])):
            continue
        p = prev_by_name.get(r["name"])
        comparable = p is not None and p["shape"] == r["shape"] and p["dtype"] == r["dtype"]
        todo.append((r, p if comparable else None))

    on_cluster = {}
    if cluster is not None:
        from tpuckpt_viz.engine import cluster as dask_engine

        on_cluster = dask_engine.transitions(cluster, prev, curr, [
            (j, p and p["key"], r["key"]) for j, (r, p) in enumerate(todo)])
    def reduced(j: int) -> tuple:
        """(accumulator, squared norm of the update) of ``todo[j]``, read here (on one of
        several threads) unless the cluster has done it."""
        if j in on_cluster:
            return on_cluster[j]
        r, p = todo[j]
        acc, delta_sq = Accumulator(), 0.0
        if p is not None:
            for cp, cc in pair_chunks(prev, p["key"], curr, r["key"]):
                acc.add(cc)
                delta_sq += delta_sumsq(widen(cp), widen(cc))
        else:
            for cc in reused_chunks(curr, r["key"], "curr"):
                acc.add(cc)
        return acc, delta_sq

    rows = []
    threads = threads_for(*([prev] if prev else []), curr)
    for (r, p), (acc, delta_sq) in zip(todo, ordered_map(reduced, range(len(todo)), threads)):
        stats = acc.result()
        rows.append({"name": r["name"], "kind": r["kind"], "layer": r["layer"],
                     "key": r["key"], "l2": stats["l2"], "nan": stats["nan"],
                     "inf": stats["inf"],
                     "delta_l2": _finite_or_none(math.sqrt(delta_sq)) if p is not None
                     else None})
    with _cache_lock:
        if len(_transition_cache) >= _CACHE_LIMIT:
            _transition_cache.pop(next(iter(_transition_cache)))
        _transition_cache[key] = rows
    return rows


def run_order(prefixes: Iterable[str], opener: Callable[[str], Checkpoint] = open_checkpoint
              ) -> list[dict]:
    """The checkpoints of a run in training order, each with its step and a label.

    One dict per checkpoint: ``checkpoint`` (prefix), ``step`` (see
    :func:`checkpoint_step_info`, or None), ``step_source``, ``save`` (1, 2, ... in this
    order) and ``label``: ``step N`` where every checkpoint has its own step, else ``save N``
    (a run whose files carry no number is labelled honestly, never "step None"). Ordered by
    step, then by the number in the file name, then by name.
    """
    items = []
    for prefix in prefixes:
        ckpt = opener(prefix)
        step, source = checkpoint_step_info(ckpt)
        items.append({"checkpoint": prefix, "step": step, "step_source": source,
                      "_ckpt": ckpt})
    items.sort(key=lambda d: (d["step"] is None, d["step"] if d["step"] is not None else 0,
                              file_number(d["checkpoint"]) or 0, d["checkpoint"]))
    steps = [d["step"] for d in items]
    numbered = None not in steps and len(set(steps)) == len(steps)
    for i, d in enumerate(items, 1):
        d["save"] = i
        d["label"] = f"step {d['step']}" if numbered else f"save {i}"
    return items


def run_steps(run_dir: str, *, match: str | None = None, kinds: Iterable[str] | None = None,
              progress: Progress | None = None, cluster=None) -> list[dict]:
    """One record per (step, variable) across every checkpoint of the run in ``run_dir``.

    Fields per the ``steps`` contract: ``step``, ``checkpoint``, ``name``, ``kind``, ``l2``,
    ``delta_l2`` (from the previous step), ``update_ratio`` (delta_l2 / previous l2), ``nan``,
    ``inf``; plus ``layer``, ``save`` (1, 2, ... in run order) and ``label`` (``step N``, or
    ``save N`` for a run without distinct step numbers; see :func:`run_order`). Reads tensor
    by tensor, two checkpoints' chunks at a time, or on ``cluster``
    (:class:`tpuckpt_viz.engine.cluster.Cluster`) with the same results.
    """
    kinds = set(kinds) if kinds else None
    _compile(match)
    opened = run_order(run_checkpoints(run_dir))
    out: list[dict] = []
    prev = None
    prev_l2: dict[str, float | None] = {}
    for i, item in enumerate(opened):
        prefix, ckpt = item["checkpoint"], item["_ckpt"]
        if progress:
            progress(i, len(opened), prefix)
        rows = _transition(prev, ckpt, match, kinds, cluster)
        for row in rows:
            p_l2 = prev_l2.get(row["name"])
            delta = row["delta_l2"] if prev is not None else None
            out.append({"step": item["step"], "checkpoint": prefix, "name": row["name"],
                        "kind": row["kind"], "l2": row["l2"], "delta_l2": delta,
                        "update_ratio": _finite_or_none(delta / p_l2)
                        if delta is not None and p_l2 else None,
                        "nan": row["nan"], "inf": row["inf"], "layer": row["layer"],
                        "save": item["save"], "label": item["label"]})
        prev_l2 = {row["name"]: row["l2"] for row in rows}
        prev = ckpt
    if progress:
        progress(len(opened), len(opened), "done")
    return out


def first_nonfinite(records: list[dict]) -> dict | None:
    """The first (step, variable) record with a NaN or Inf, or None."""
    bad = [r for r in records if (r["nan"] or r["inf"])]
    if not bad:
        return None
    if all("save" in r for r in bad):  # run order, whatever the steps say
        return min(bad, key=lambda r: r["save"])
    return min(bad, key=lambda r: (r["step"] is None, r["step"] or 0))
