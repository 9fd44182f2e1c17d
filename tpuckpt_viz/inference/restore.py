"""A model builder plus a checkpoint, as people restore TPU-trained models.

:func:`load_builder` imports ``package.module:function`` (or loads a ``.keras`` file with
``safe_mode=True``); :class:`RestoredModel` builds the model under the chosen device's
strategy, restores the checkpoint into it with ``tf.train.Checkpoint`` and keeps a report of
what matched (:func:`restore_report`); its :meth:`RestoredModel.call` runs it on that device.
The builder is named only by whoever started the process (``--model``, ``TPUCKPT_MODEL``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Any, Callable, Mapping

import numpy as np

from tpuckpt_viz import config
from tpuckpt_viz.errors import UserError, first_line
from tpuckpt_viz.inference.calls import to_numpy
from tpuckpt_viz.inference.devices import DeviceChoice, checkpoint_options
from tpuckpt_viz.inference.savedmodel import TensorInfo
from tpuckpt_viz.tfcompat import tf

DEFAULT_BUILDER = "tpuckpt_viz.demo:build_model"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def builder_spec(spec: str | None = None) -> str:
    """The builder to use: ``spec``, else ``TPUCKPT_MODEL``, else the demo's builder."""
    return (spec or config.get("model") or DEFAULT_BUILDER).strip()


def load_builder(spec: str | None = None) -> Callable[[], Any]:
    """The model builder named by ``spec``: a function that returns a fresh Keras model.

    ``spec`` is ``package.module:function`` (imported with importlib; ``function`` may be a
    dotted attribute path) or the path of a ``.keras`` file (loaded with ``safe_mode=True``
    each time the builder is called). Empty: ``TPUCKPT_MODEL``, else the demo's builder.
    """
    spec = builder_spec(spec)
    if spec.lower().endswith(".keras"):
        if not tf().io.gfile.exists(spec):
            raise UserError(f"model file {spec} not found: pass --model package.module:function "
                            "or an existing .keras file")

        def build_from_file():
            tf()  # keras needs TensorFlow imported (quietly) first
            import keras  # Keras 3: tf.keras may be a shim without keras.saving

            try:
                return keras.saving.load_model(spec, safe_mode=True)
            except Exception as exc:  # noqa: BLE001 - unreadable or unsafe .keras file
                raise UserError(f"cannot load {spec}: {first_line(exc)}")

        return build_from_file
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--model {spec!r}: expected package.module:function or a .keras file")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--model {spec}: cannot import {module_name!r} ({first_line(exc)}): "
                        "is it installed or on PYTHONPATH?")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--model {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"--model {spec}: {attr} is not a function")
    return obj


def resolve_prefix(path: str) -> str:
    """The checkpoint prefix that ``path`` names (a folder means its latest checkpoint)."""
    from tpuckpt_viz.checkpoint.paths import resolve_checkpoint

    return resolve_checkpoint(os.fspath(path)).prefix


def _var_name(v) -> str:
    return str(getattr(v, "path", None) or getattr(v, "name", None) or v)


def _walk_checkpoint(graph, start: int, live) -> tuple[dict[int, str], set[str]]:
    """Match the saved object graph from node ``start`` against live object ``live``.

    Returns ({id(live object): checkpoint key of its VARIABLE_VALUE}, every checkpoint key of
    a matched node). This is the matching ``tf.train.Checkpoint.read`` itself does: from the
    root, children are paired by their local names. We repeat it here over the saved
    ``TrackableObjectGraph`` proto and ``tf.train.TrackableView.children`` (public API since
    TF 2.11) because the restore status keeps its matches in private attributes that change
    between releases, and ``assert_consumed()`` only says *that* something is off. Raw keys
    cannot be compared directly: Keras 3 saves a kernel under whichever path the object graph
    reaches first (``optimizer/_trainable_variables/0/...``), not under the model.
    """
    view = tf().train.TrackableView
    variables: dict[int, str] = {}
    used: set[str] = set()
    seen = {start}
    queue = [(start, live)]
    while queue:
        node_id, obj = queue.pop()
        node = graph.nodes[node_id]
        for attr in node.attributes:
            used.add(attr.checkpoint_key)
            if attr.name == "VARIABLE_VALUE":
                variables[id(obj)] = attr.checkpoint_key
        if not node.children:
            continue
        try:
            children = view.children(obj)
        except Exception:  # noqa: BLE001 - an object that cannot list its children matches none
            continue
        for child in node.children:
            target = children.get(child.local_name)
            if target is None or child.node_id in seen:
                continue
            seen.add(child.node_id)
            queue.append((child.node_id, target))
    return variables, used


def _check_graph(prefix: str, graph) -> None:
    """Refuse an object graph whose children or slots point at nodes it does not have."""
    count = len(graph.nodes)
    for i, node in enumerate(graph.nodes):
        refs = [(c.local_name, c.node_id) for c in node.children]
        refs += [(f"slot {s.slot_name}", s.slot_variable_node_id) for s in node.slot_variables]
        refs += [(f"slot of {s.slot_name}", s.original_variable_node_id)
                 for s in node.slot_variables]
        for name, ref in refs:
            if not 0 <= ref < count:
                raise UserError(f"checkpoint {prefix} has a corrupt object graph: node {i}'s "
                                f"{name!r} points at node {ref}, and there are {count} nodes: "
                                "the checkpoint is damaged or was not written by TensorFlow")


def restore_report(prefix: str, model) -> tuple[dict, str | None]:
    """(report, attach name) for restoring checkpoint ``prefix`` into ``model``.

    The report: ``status`` ("ok", "partial", "nothing matched"), ``matched`` (count),
    ``unmatched_model`` (model variables that get no value), ``unused_checkpoint`` (keys left
    unused; optimizer slots are expected there). The model is looked for under the root's
    child ``model`` (``tf.train.Checkpoint(model=...)``), else under another root child, else
    at the root (Keras 2 ``save_weights``); the candidate that matches most variables wins.
    Attach name "" means the root itself; None: nothing matched.
    """
    tf()  # quiet import first: the protos alone print TF's banner
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    try:
        reader = tf().train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
    except UnicodeDecodeError:
        raise UserError(f"checkpoint {prefix} has variable names that are not UTF-8: "
                        "TensorFlow cannot restore it into a model; open it in Browse") from None
    except Exception as exc:  # noqa: BLE001 - unreadable index, missing shards
        raise UserError(f"cannot read checkpoint {prefix}: {first_line(exc)}") from None
    keys = sorted(k for k in shapes if k != OBJECT_GRAPH_KEY)
    model_vars = list(model.variables)
    empty = {"status": "nothing matched", "matched": 0,
             "unmatched_model": [_var_name(v) for v in model_vars], "unused_checkpoint": keys}
    if not reader.has_tensor(OBJECT_GRAPH_KEY):
        return empty, None
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    except Exception as exc:  # noqa: BLE001 - truncated data shard, corrupt proto
        raise UserError(f"cannot read the object graph of checkpoint {prefix}: "
                        f"{first_line(exc)}: is its data file complete?") from None
    if not graph.nodes:
        return empty, None
    _check_graph(prefix, graph)
    root = graph.nodes[0]
    candidates = [("model", c.node_id) for c in root.children if c.local_name == "model"]
    candidates += [(c.local_name, c.node_id) for c in root.children if c.local_name != "model"]
    candidates.append(("", 0))
    best = None
    ids = {id(v) for v in model_vars}
    for attach, node_id in candidates:
        variables, used = _walk_checkpoint(graph, node_id, model)
        hits = sum(1 for i in variables if i in ids)
        if best is None or hits > best[0]:
            best = (hits, attach, variables, used)
        if attach == "model" and hits == len(model_vars):
            break
    hits, attach, variables, used = best
    if hits == 0:
        return empty, None
    mismatched = []
    for v in model_vars:
        key = variables.get(id(v))
        if key is not None and key in shapes and list(shapes[key]) != list(v.shape):
            mismatched.append(f"{_var_name(v)} is {list(shapes[key])} in the checkpoint and "
                              f"{list(v.shape)} in the model")
    if mismatched:
        more = f" (and {len(mismatched) - 2} more)" if len(mismatched) > 2 else ""
        raise UserError(f"checkpoint {prefix} does not fit the model: {'; '.join(mismatched[:2])}"
                        f"{more}: is --model the builder that wrote it?")
    unmatched = [_var_name(v) for v in model_vars if id(v) not in variables]
    report = {
        "status": "ok" if not unmatched else "partial",
        "matched": hits,
        "unmatched_model": unmatched,
        "unused_checkpoint": sorted(k for k in keys if k not in used),
    }
    return report, attach


def model_input_specs(model) -> list[TensorInfo]:
    """The inputs a Keras model declares (empty for subclassed models that declare none)."""
    specs = []
    for i, t in enumerate(getattr(model, "inputs", None) or []):
        shape = getattr(t, "shape", None)
        dims = None if shape is None else [-1 if d is None else int(d) for d in shape]
        dtype = getattr(t, "dtype", "float32")
        dtype = str(getattr(dtype, "name", dtype))
        specs.append(TensorInfo(getattr(t, "name", None) or f"input_{i}", "", dtype, dims))
    return specs


def model_args(model, arrays: Mapping[str, np.ndarray], spec: str):
    """What to pass to ``model(...)``: the one array, or a dict keyed by input name."""
    names = [t.name for t in model_input_specs(model)]
    if len(arrays) == 1 and len(names) <= 1:
        return next(iter(arrays.values()))
    unknown = sorted(set(arrays) - set(names)) if names else []
    if unknown:
        raise UserError(f"the model from {spec} has no input {', '.join(map(repr, unknown))}: "
                        f"its inputs are {', '.join(names)}")
    return dict(arrays)


def is_keras_file(path: str) -> bool:
    """Whether ``path`` is a Keras weights file (``.weights.h5``, ``.keras``, ``.h5``)."""
    from tpuckpt_viz.checkpoint.paths import KERAS_SUFFIXES

    return str(path).lower().endswith(KERAS_SUFFIXES)


def restore_keras_file(path: str, spec: str, model) -> dict:
    """Restore a Keras weights file into ``model`` with Keras's own ``load_weights`` (a
    ``.keras`` run by itself was loaded whole by its builder: nothing to restore). Returns the
    restore report; a file that does not fit the model raises UserError."""
    weights = list(model.weights)
    same = os.path.realpath(os.fspath(path)) == os.path.realpath(os.fspath(spec))
    if not same:
        try:
            model.load_weights(os.fspath(path))
        except Exception as exc:  # noqa: BLE001 - layout or shapes that do not fit
            raise UserError(f"cannot restore {path} into the model from {spec}: "
                            f"{first_line(exc)}: is --model the builder that wrote it?")
    return {"status": "ok", "matched": len(weights), "unmatched_model": [],
            "unused_checkpoint": []}


class RestoredModel:
    """The builder's model restored from one checkpoint on one device (loaded lazily, once)."""

    def __init__(self, prefix: str, spec: str, choice: DeviceChoice):
        self.prefix, self.spec, self.choice = prefix, spec, choice
        self.lock = threading.Lock()
        self.model = None
        self.report: dict | None = None
        self.fn = None
        self.specs: list[TensorInfo] = []
        self.output_names: list[str] = []

    def load(self, sample: Mapping[str, np.ndarray] | None = None) -> None:
        """Build and restore; ``sample`` inputs build a model that has no variables until called."""
        with self.lock:
            if self.model is not None:
                return
            t = tf()
            builder = load_builder(self.spec)
            choice = self.choice
            strategy = choice.strategy or t.distribute.get_strategy()
            device_scope = (t.device(choice.name) if choice.kind != "tpu"
                            else contextlib.nullcontext())
            with strategy.scope(), device_scope:
                try:
                    model = builder()
                except UserError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the user's builder failed
                    raise UserError(f"model builder {self.spec} failed: {first_line(exc)}")
                if not list(getattr(model, "variables", [])) and sample:
                    model(model_args(model, sample, self.spec), training=False)  # build it
            if not hasattr(model, "variables"):
                raise UserError(f"model builder {self.spec} returned {type(model).__name__}, "
                                "not a Keras model")
            if not model.variables:
                raise UserError(f"the model from {self.spec} has no variables until it is "
                                "called: pass --input values so it can be built")
            if is_keras_file(self.prefix):
                report = restore_keras_file(self.prefix, self.spec, model)
            else:
                report, attach = restore_report(self.prefix, model)
                if attach is None:
                    raise UserError(
                        f"checkpoint {self.prefix} matched none of the model's "
                        f"{len(model.variables)} variables: is --model the builder that wrote "
                        f"it? (builder: {self.spec})")
                ckpt = t.train.Checkpoint(root=model) if attach == "" else \
                    t.train.Checkpoint(**{attach: model})
                try:
                    ckpt.read(self.prefix, options=checkpoint_options(choice)).expect_partial()
                except Exception as exc:  # noqa: BLE001 - dtype mismatches, unreadable shards
                    raise UserError(f"cannot restore {self.prefix} into the model: "
                                    f"{first_line(exc)}")
            self.specs = model_input_specs(model)
            self.output_names = list(getattr(model, "output_names", None) or [])

            @t.function(reduce_retracing=True)
            def forward(x):
                return model(x, training=False)

            self.fn = forward
            self.model = model
            self.report = report

    def call(self, args) -> Callable[[], dict]:
        """A function running the model on ``args``: ``strategy.run`` on a TPU (first
        replica's outputs), else under ``tf.device``."""
        t = tf()
        choice = self.choice

        if choice.kind == "tpu":
            strategy = choice.strategy or t.distribute.get_strategy()

            def call():
                out = strategy.run(self.fn, args=(args,))
                out = t.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], out)
                return self._named(out)
        else:
            def call():
                with t.device(choice.name):
                    out = self.fn(args)
                return self._named(out)
        return call

    def _named(self, out) -> dict[str, np.ndarray]:
        if isinstance(out, Mapping):
            return {str(k): to_numpy(v) for k, v in out.items()}
        if isinstance(out, (list, tuple)):
            names = self.output_names if len(self.output_names) == len(out) else \
                [f"output_{i}" for i in range(len(out))]
            return {n: to_numpy(v) for n, v in zip(names, out)}
        name = self.output_names[0] if len(self.output_names) == 1 else "output_0"
        return {name: to_numpy(out)}
