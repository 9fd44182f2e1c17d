"""The variable table: one record per checkpoint entry, with readable name, kind and slot link.

Records follow the ``list`` contract of docs/reference.md (``key``, ``name``, ``shape``,
``dtype``, ``numel``, ``nbytes``, ``kind``, ``layer``, ``slot_of``, ``slot``). The CLI prints
them; pages turn them into DataFrames.
"""

from __future__ import annotations

from tpuckpt_viz.checkpoint.kinds import classify, readable_names
from tpuckpt_viz.checkpoint.reader import Checkpoint

KINDS = ("weight", "bias", "norm", "stat", "slot", "optimizer", "counter", "metric", "other")
MODEL_KINDS = ("weight", "bias", "norm", "stat")


def list_records(ckpt: Checkpoint) -> list[dict]:
    """One record per entry of ``ckpt``, sorted by raw key (as ``tf.train.list_variables``).

    Computed once per opened checkpoint (diff and steps ask for it several times); callers
    must not modify the records.
    """
    cached = getattr(ckpt, "_records", None)
    if cached is None:
        cached = ckpt._records = _build_records(ckpt)
    return cached


def _build_records(ckpt: Checkpoint) -> list[dict]:
    graph = ckpt.object_graph
    keys = sorted(ckpt.entries)
    key_set = set(keys)
    names = readable_names(keys, graph.full_names)
    hints = kind_hints(ckpt)
    entries, slots = ckpt.entries, graph.slots
    records = []
    append = records.append
    for key in keys:
        entry = entries[key]
        name = names[key]
        kind, layer, slot_of, slot = classify(key, name, entry.dtype, len(entry.shape),
                                              key_set, slots, names, hints)
        append({"key": key, "name": name, "shape": list(entry.shape), "dtype": entry.dtype,
                "numel": entry.numel, "nbytes": entry.nbytes, "kind": kind, "layer": layer,
                "slot_of": slot_of, "slot": slot})
    return records


def kind_hints(ckpt) -> dict:
    """What the checkpoint's own metadata says each entry is: a Keras file's layout, else the
    collections of a TF1 graph (a ``.meta`` beside the checkpoint, or a SavedModel's meta
    graph). Empty when there is none."""
    hints = getattr(ckpt, "kind_hints", None)
    if hints is not None:
        return hints
    from tpuckpt_viz.checkpoint.metagraph import collection_hints

    return collection_hints(ckpt)


def slots_of(records: list[dict], key: str) -> list[dict]:
    """The optimizer slots that belong to variable ``key``."""
    return [r for r in records if r["slot_of"] == key]
