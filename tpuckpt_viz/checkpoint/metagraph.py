"""What a TF1 graph says about its variables: the collections of its MetaGraphDef.

A TF1 checkpoint usually has its ``.meta`` beside it (``Saver.save`` writes ``PREFIX.meta``), and
a TF1 SavedModel carries the same collections in its meta graphs. They are TensorFlow's own
statement of what each variable is, so they come before the name rules:

- ``global_step``: a counter;
- ``trainable_variables``: a model parameter (weight, bias or norm), never a statistic, slot or
  counter whatever its name (Exponential moving averages put the *averaged* trainable
  variables in ``moving_average_variables`` too: trainable wins);
- ``moving_average_variables`` (not trainable): a running statistic, such as a hand-written
  batch norm's ``pop_mean`` / ``pop_var``;
- ``model_variables`` (not trainable): a model parameter or statistic, never optimizer state;
- ``local_variables``: metric accumulators.

The MetaGraphDef is decoded with the project's own definitions of the few messages involved
(:mod:`tpuckpt_viz.checkpoint.protos`): a TF1 checkpoint with its ``.meta`` lists without
importing TensorFlow.
"""

from __future__ import annotations

import threading

from tpuckpt_viz.checkpoint import formats, protos

# Collection -> hinted kind, strongest first.
COLLECTIONS = (
    ("global_step", "counter"),
    ("trainable_variables", "trainable"),
    ("moving_average_variables", "stat"),
    ("model_variables", "model"),
    ("local_variables", "metric"),
)
_MAX_META_BYTES = 1 << 30
_cache: dict[tuple, dict] = {}
_lock = threading.Lock()


def _exists(path: str) -> bool:
    if formats.is_local(path):
        import os

        return os.path.isfile(path)
    return formats.is_file(path)


def _read(path: str, limit: int = _MAX_META_BYTES) -> bytes | None:
    try:
        with formats.open_binary(path) as f:
            data = f.read(limit + 1)
    except Exception:
        return None
    return data if len(data) <= limit else None


def _variable_names(collection) -> list[str]:
    """Op names of the variables in a CollectionDef (VariableDef bytes, or node names)."""
    names = []
    if collection.HasField("bytes_list"):
        for raw in collection.bytes_list.value:
            var = protos.VariableDef()
            try:
                var.ParseFromString(raw)
            except Exception:
                continue
            if var.variable_name:
                names.append(var.variable_name)
    if collection.HasField("node_list"):
        names.extend(collection.node_list.value)
    return [n.split(":", 1)[0] for n in names]


def hints_from_meta_graph(meta_graph, keys) -> dict[str, tuple[str, None]]:
    """key -> (kind, None) for the checkpoint ``keys`` that the meta graph's collections name."""
    keys = set(keys)
    hints: dict[str, tuple[str, None]] = {}
    for collection, kind in COLLECTIONS:
        if collection not in meta_graph.collection_def:
            continue
        for name in _variable_names(meta_graph.collection_def[collection]):
            if name in keys and name not in hints:
                hints[name] = (kind, None)
    return hints


def meta_file(prefix: str) -> str | None:
    """The ``.meta`` beside a TF1 checkpoint prefix, if there is one."""
    candidate = prefix + ".meta"
    return candidate if _exists(candidate) else None


def _saved_model_meta_graphs(saved_model_dir: str):
    raw = _read(saved_model_dir.rstrip("/") + "/saved_model.pb")
    if raw is None:
        return []
    model = protos.SavedModel()
    try:
        model.ParseFromString(raw)
    except Exception:
        return []
    return list(model.meta_graphs)


def collection_hints(ckpt) -> dict[str, tuple[str, None]]:
    """Kind hints for a bundle checkpoint from its ``.meta`` (or its SavedModel's meta
    graphs); empty when there is neither, or they name none of its keys."""
    prefix = getattr(ckpt, "prefix", None)
    if not prefix or getattr(ckpt, "format", None) not in ("v2", "v1"):
        return {}
    resolved = getattr(ckpt, "resolved", None)
    saved_model_dir = getattr(resolved, "saved_model_dir", None)
    meta = meta_file(prefix)
    if meta is None and saved_model_dir is None:
        return {}
    cache_key = (prefix, meta, saved_model_dir, getattr(ckpt, "signature", None))
    with _lock:
        if cache_key in _cache:
            return _cache[cache_key]
    hints: dict[str, tuple[str, None]] = {}
    try:
        if meta is not None:
            raw = _read(meta)
            if raw is not None:
                graph = protos.MetaGraphDef()
                graph.ParseFromString(raw)
                hints = hints_from_meta_graph(graph, ckpt.entries)
        elif saved_model_dir is not None:
            for graph in _saved_model_meta_graphs(saved_model_dir):
                for key, hint in hints_from_meta_graph(graph, ckpt.entries).items():
                    hints.setdefault(key, hint)
    except Exception:  # a damaged .meta: the name rules still apply
        hints = {}
    with _lock:
        _cache[cache_key] = hints
    return hints
