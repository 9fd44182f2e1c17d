"""Run test inputs through a model: a SavedModel, or a model builder plus a checkpoint.

One entry point, :func:`run_inference` (the CLI's ``infer`` and the Infer page call it), and
the public face of the modules it is built from, re-exported here:

- :mod:`.savedmodel`: ``describe_saved_model`` and ``pick`` (tag sets and signatures, like
  ``saved_model_cli show``);
- :mod:`.opscan`: ``scan_signature`` and ``check_safe`` (no file-system or Python ops, like
  ``saved_model_cli scan``), ``example_features``;
- :mod:`.inputs`: ``parse_input_value``, ``make_inputs``, ``make_examples``,
  ``read_array_bytes``;
- :mod:`.savedmodel_loader`: the TF2 loader with the TF1 session loader behind it;
- :mod:`.restore`: ``load_builder`` and the builder + checkpoint restore with its report.

Loaded models are cached here, per process: several dashboard sessions share them.
"""

from __future__ import annotations

import collections
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from tpuckpt_viz import config, sandbox
from tpuckpt_viz.errors import UserError
from tpuckpt_viz.inference.calls import tf_error_text, timed  # noqa: F401
from tpuckpt_viz.inference.devices import CPU_NAME, DeviceChoice, choose_device
from tpuckpt_viz.inference.inputs import (  # noqa: F401
    FILLS,
    fill_of,
    json_template,
    make_examples,
    make_inputs,
    parse_feature_text,
    parse_input_value,
    read_array_bytes,
)
from tpuckpt_viz.inference.loader import LoadedSavedModel
from tpuckpt_viz.inference.opscan import (  # noqa: F401
    UNSAFE_OPS,
    check_safe,
    example_features,
    mutates_state,
    scan_signature,
)
from tpuckpt_viz.inference.restore import (  # noqa: F401
    DEFAULT_BUILDER,
    RestoredModel,
    builder_spec,
    load_builder,
    model_args,
    resolve_prefix,
    restore_report,
)
from tpuckpt_viz.inference.savedmodel import (  # noqa: F401
    MetaGraphInfo,
    SignatureInfo,
    TensorInfo,
    declared,
    describe_saved_model,
    fmt_shape,
    fmt_tags,
    has_saved_model_pb,
    meta_graph,
    norm_dir,
    pick,
    read_saved_model,
    serving_version_dir,
)
from tpuckpt_viz.inference.savedmodel import clear_cache as clear_proto_cache
from tpuckpt_viz.tfcompat import tf

DEFAULT_REPEATS = 5
_CACHE_SIZE = 8


# --------------------------------------------------------------------------------------------
# Results

@dataclass
class InferenceResult:
    """What one inference run produced.

    ``latency_ms``: the median wall time of ``repeats`` runs after one warm-up run (the
    outputs are the warm-up's); a signature that changes state (assigns a variable) is run
    once, and that single run, tracing included, is the latency.
    """

    device: str
    device_reasons: list[str]
    outputs: dict[str, np.ndarray]
    latency_ms: float
    restore: dict | None
    source: str  # "saved_model" | "checkpoint"
    tags: tuple[str, ...] | None = None
    signature: str | None = None
    path: str = ""  # the SavedModel folder or checkpoint prefix that ran
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    runs: int = 1


def jsonable(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, complex):
        return [jsonable(value.real), jsonable(value.imag)]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return value


def result_to_json(result: InferenceResult) -> dict:
    """The ``infer --format json`` object: device, outputs (nested lists), latency_ms, restore.

    NaN and Infinity become null; strings are decoded as UTF-8.
    """
    outputs = {}
    for name, arr in result.outputs.items():
        arr = np.asarray(arr)
        if arr.dtype == getattr(tf().bfloat16, "as_numpy_dtype", None):
            arr = arr.astype(np.float32)
        outputs[name] = jsonable(arr.tolist())
    restore = None if result.restore is None else \
        {k: jsonable(v) for k, v in result.restore.items()}
    return {
        "device": result.device,
        "outputs": outputs,
        "latency_ms": jsonable(float(result.latency_ms)),
        "restore": restore,
        # Added (issue 10): everything the Infer page shows.
        "device_skipped": list(result.device_reasons),  # why the other devices were skipped
        "source": result.source,
        "path": result.path,
        "tag_set": list(result.tags) if result.tags is not None else None,
        "signature": result.signature,
        "inputs": {name: {"shape": list(np.shape(arr)), "dtype": _dtype_name(arr)}
                   for name, arr in result.inputs.items()},
        "output_specs": {name: {"shape": list(np.shape(arr)), "dtype": _dtype_name(arr)}
                         for name, arr in result.outputs.items()},
        "runs": result.runs,
    }


def _dtype_name(arr) -> str:
    dtype = np.asarray(arr).dtype
    return "string" if dtype.kind in "OSU" else str(dtype)


def compare_outputs(a, b) -> dict[str, dict]:
    """Per output present on both sides: ``max_abs_diff`` and ``mean_abs_diff`` of b - a.

    ``a`` and ``b`` are output dicts or :class:`InferenceResult`s (the same inputs through two
    checkpoints). Differences are null where the shapes differ or the values are not numbers.
    """
    a = a.outputs if isinstance(a, InferenceResult) else a
    b = b.outputs if isinstance(b, InferenceResult) else b
    result = {}
    for name in sorted(set(a) & set(b)):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        entry: dict[str, float | None] = {"max_abs_diff": None, "mean_abs_diff": None}
        if x.shape == y.shape and x.dtype.kind in "biuf" and y.dtype.kind in "biuf":
            diff = np.abs(y.astype(np.float64) - x.astype(np.float64))
            if diff.size:
                entry = {"max_abs_diff": jsonable(float(np.max(diff))),
                         "mean_abs_diff": jsonable(float(np.mean(diff)))}
            else:
                entry = {"max_abs_diff": 0.0, "mean_abs_diff": 0.0}
        result[name] = entry
    return result


# --------------------------------------------------------------------------------------------
# Caches of loaded models

class _LRU:
    """A small thread-safe cache whose entries each carry their own lock (loads run outside
    the cache lock, so one slow load does not block every other session)."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.items: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()

    def entry(self, key: tuple, factory: Callable[[], Any]):
        with self.lock:
            item = self.items.get(key)
            if item is None:
                item = factory()
                self.items[key] = item
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            self.items.move_to_end(key)
            return item

    def drop(self, key: tuple, item) -> None:
        with self.lock:
            if self.items.get(key) is item:
                del self.items[key]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_SAVED_MODELS = _LRU(_CACHE_SIZE)
_RESTORED = _LRU(_CACHE_SIZE)


def clear_caches() -> None:
    """Forget every loaded model (tests; the dashboard's "reload" button), here and in a
    running worker."""
    _SAVED_MODELS.clear()
    _RESTORED.clear()
    clear_proto_cache()
    if not sandbox.in_worker() and sandbox.worker("infer").alive():
        sandbox.call("tpuckpt_viz.inference.api:clear_caches", what="clearing its caches")


# --------------------------------------------------------------------------------------------
# SavedModels

def _saved_model_inputs(path: str, tags, sig: SignatureInfo, inputs, batch: int, fill,
                        files: bool) -> dict[str, np.ndarray]:
    given = dict(inputs or {})
    known = {t.name: t for t in sig.inputs}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"signature {sig.name!r} has no input {', '.join(map(repr, unknown))}: "
                        f"its inputs are {', '.join(known) or '(none)'}")
    unsupported = [t.name for t in sig.inputs if t.encoding != "dense"]
    if unsupported:
        raise UserError(f"signature {sig.name!r} takes sparse or composite inputs "
                        f"({', '.join(unsupported)}), which infer cannot feed yet: pick another "
                        "signature")
    spec_cache: dict[str, Mapping[str, str]] = {}

    def spec():
        if "spec" not in spec_cache:
            spec_cache["spec"] = example_features(path, tags, sig.name)
        return spec_cache["spec"]

    result = {}
    missing = [t for t in sig.inputs if t.name not in given]
    strings = [t for t in missing if t.dtype == "string"]
    if len(strings) == 1 and len([t for t in sig.inputs if t.dtype == "string"]) == 1 and spec():
        # One string input and the graph parses tf.Examples: generate real examples (an empty
        # one fails wherever a feature has no default).
        mode = fill_of(fill, strings[0].name)
        features = make_inputs({k: (d, [-1]) for k, d in spec().items()}, mode, batch)
        columns = {k: arr.tolist() for k, arr in features.items()}
        result[strings[0].name] = np.array(make_examples(columns, spec()), dtype=object)
        missing = [t for t in missing if t is not strings[0]]
    result.update(make_inputs(missing, fill, batch))
    for name, value in given.items():
        t = known[name]
        result[name] = parse_input_value(value, t.dtype, t.shape, name=name, example_spec=spec,
                                         files=files)
    return {t.name: result[t.name] for t in sig.inputs}


def _choice(device: str | DeviceChoice) -> DeviceChoice:
    return device if isinstance(device, DeviceChoice) else choose_device(device)


def run_saved_model(path: str, tags=None, signature: str | None = None, inputs=None,
                    device: str | DeviceChoice = "auto", batch: int = 4,
                    fill: str | Mapping[str, str] = "random", allow_unsafe: bool | None = None,
                    repeats: int = DEFAULT_REPEATS, *, files: bool = True) -> InferenceResult:
    """Run one signature of the SavedModel in folder ``path`` (see :func:`run_inference`)."""
    path = os.fspath(path)
    mg, mg_info, sig = meta_graph(path, tags, signature)
    check_safe(path, mg_info.tags, sig.name, allow_unsafe)
    arrays = _saved_model_inputs(path, mg_info.tags, sig, inputs, batch, fill, files)
    choice = _choice(device)
    reasons = list(choice.reasons)
    name = choice.name
    if choice.kind == "tpu":
        name = CPU_NAME
        reasons.append("SavedModel serving graphs run on GPU/CPU, not TPU")
    if mutates_state(mg, sig.name):
        repeats = 1
    key = (norm_dir(path), mg_info.tags, name)
    tf1_graph = not mg.object_graph_def.nodes
    entry = _SAVED_MODELS.entry(key, lambda: LoadedSavedModel(path, mg_info.tags, name,
                                                              tf1_graph))
    try:
        outputs, latency, runs = entry.run(sig, arrays, repeats)
    except UserError:
        if not entry.loaded:
            _SAVED_MODELS.drop(key, entry)  # nothing loaded: try afresh next time
        raise
    return InferenceResult(name, reasons, outputs, latency, None, "saved_model",
                           mg_info.tags, sig.name, path, arrays, runs)


# --------------------------------------------------------------------------------------------
# Builder + checkpoint

def restored_model(ckpt_prefix: str, builder: str | None = None,
                   device: str | DeviceChoice = "auto", sample=None, *, files: bool = True
                   ) -> RestoredModel:
    """The builder's model restored from ``ckpt_prefix`` on ``device``, built once and cached
    per (prefix, builder, device). Its ``specs`` are the model's inputs, ``report`` the
    restore report. ``sample`` (name -> value) builds a model that declares no inputs."""
    spec = builder_spec(builder)
    choice = _choice(device)
    prefix = os.fspath(ckpt_prefix)
    key = (prefix, spec, choice.kind, choice.name)
    entry = _RESTORED.entry(key, lambda: RestoredModel(prefix, spec, choice))
    try:
        # Inputs typed by the model's declared inputs where it has them; plain float32 arrays
        # otherwise (subclassed models).
        sample = {k: (v if isinstance(v, np.ndarray) else
                      parse_input_value(v, "float32", None, name=k, files=files))
                  for k, v in (sample or {}).items()}
        entry.load(sample)
    except UserError:
        _RESTORED.drop(key, entry)
        raise
    return entry


def restore_and_run(ckpt_prefix: str, builder_spec: str | None = None, inputs=None,
                    device: str | DeviceChoice = "auto", batch: int = 4,
                    fill: str | Mapping[str, str] = "random", repeats: int = DEFAULT_REPEATS,
                    *, files: bool = True) -> InferenceResult:
    """Build the model, restore checkpoint ``ckpt_prefix`` into it and run ``inputs`` through it.

    The model is built under the chosen device's strategy (TPUStrategy on a TPU) and restored
    with ``tf.train.Checkpoint(model=model).read(...)``; ``result.restore`` reports what
    matched (see :func:`restore_report`); nothing matched raises :class:`UserError`. On a TPU
    the call goes through ``strategy.run`` (outputs of the first replica); elsewhere
    ``model(x, training=False)`` under ``tf.device``. Built and restored models are cached per
    (prefix, builder, device).
    """
    choice = _choice(device)
    given = dict(inputs or {})
    entry = restored_model(ckpt_prefix, builder_spec, choice, given, files=files)
    spec = entry.spec
    specs = {t.name: t for t in entry.specs}
    arrays: dict[str, np.ndarray] = {}
    if len(given) == 1 and len(specs) == 1:  # one input: any name will do
        (gname, value), t = next(iter(given.items())), next(iter(specs.values()))
        arrays[gname] = parse_input_value(value, t.dtype, t.shape, name=gname, files=files)
    else:
        for name, value in given.items():
            t = specs.get(name)
            arrays[name] = parse_input_value(value, t.dtype if t else "float32",
                                             t.shape if t else None, name=name, files=files)
        arrays.update(make_inputs([t for n, t in specs.items() if n not in given], fill, batch))
    if not arrays:
        raise UserError(f"the model from {spec} declares no inputs: pass --input NAME=VALUE")
    args = model_args(entry.model, arrays, spec)
    try:
        outputs, latency, runs = timed(entry.call(args), repeats)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - TensorFlow rejected the inputs
        expected = declared(entry.specs) if entry.specs else "inputs it does not declare"
        raise UserError(f"the model rejected the inputs: {tf_error_text(exc)} "
                        f"(it expects {expected})")
    return InferenceResult(choice.name, list(choice.reasons), outputs, latency,
                           dict(entry.report), "checkpoint", None, None, entry.prefix, arrays,
                           runs)


# --------------------------------------------------------------------------------------------
# The one entry point

@dataclass
class Source:
    """What a path runs as: ``kind`` "saved_model" (``path`` the folder with saved_model.pb)
    or "checkpoint" (``path`` the path to resolve to a checkpoint prefix)."""

    kind: str
    path: str


def resolve_source(path: str, model: str | None = None) -> Source:
    """A SavedModel folder (or a TensorFlow Serving folder of numbered versions: the highest),
    else a checkpoint. A folder with ``variables/`` but no saved_model.pb is an error unless a
    builder is named (``model`` or ``TPUCKPT_MODEL``), which then gets those variables."""
    from tpuckpt_viz.checkpoint.paths import is_saved_model

    path = os.fspath(path)
    if has_saved_model_pb(path):
        return Source("saved_model", path)
    version = serving_version_dir(path)
    if version is not None:
        return Source("saved_model", version)
    broken = path if is_saved_model(path) else serving_version_dir(path, broken_too=True)
    if broken is not None and not (model or config.get("model")):
        read_saved_model(broken)  # raises: "... has no saved_model.pb: it is not a SavedModel"
    return Source("checkpoint", broken or path)


def run_inference(path: str, model: str | None = None, tags=None, signature: str | None = None,
                  inputs: Mapping[str, Any] | None = None, device: str = "auto", batch: int = 4,
                  fill: str | Mapping[str, str] = "random", *, allow_unsafe: bool | None = None,
                  repeats: int = DEFAULT_REPEATS, files: bool = True) -> InferenceResult:
    """Run test inputs through the model at ``path``; what ``infer`` and the Infer page call.

    It runs in the TensorFlow worker process (:mod:`tpuckpt_viz.sandbox`): a model that makes
    TensorFlow abort, crash or run out of memory or time ends the worker, not this process, and
    raises :class:`UserError`. See :func:`run_inference_here` for the arguments.
    """
    check_batch(batch)
    return sandbox.call("tpuckpt_viz.inference.api:run_inference_here", os.fspath(path), model,
                        tags, signature, inputs, device, batch, fill, allow_unsafe=allow_unsafe,
                        repeats=repeats, files=files,
                        what=f"loading or running the model at {os.fspath(path)}")


def check_batch(batch) -> int:
    """``batch`` as a positive whole number, else UserError."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise UserError(f"batch size {batch!r} is not a positive whole number: pass --batch N "
                        "with N >= 1")
    return int(batch)


def run_inference_here(path: str, model: str | None = None, tags=None,
                       signature: str | None = None, inputs: Mapping[str, Any] | None = None,
                       device: str = "auto", batch: int = 4,
                       fill: str | Mapping[str, str] = "random", *,
                       allow_unsafe: bool | None = None, repeats: int = DEFAULT_REPEATS,
                       files: bool = True) -> InferenceResult:
    """Run test inputs through the model at ``path``, in this process (the worker's side).

    ``path``: a SavedModel folder (or a TensorFlow Serving folder of numbered versions: the
    highest) runs the signature that :func:`pick` chooses, on GPU or CPU; anything else is a
    checkpoint (a folder means its latest one) restored into the builder ``model`` (default:
    ``TPUCKPT_MODEL``, else the demo's); see :func:`resolve_source`. ``inputs`` maps an input
    name to an array or to text for :func:`parse_input_value` (``files``: whether text may
    name a file to read; the dashboard passes False); inputs left out are generated (``fill``:
    random, zeros or ones, for all or per input name; unknown dimensions = ``batch``).
    ``latency_ms`` is the median of ``repeats`` timed runs after one warm-up (see
    :class:`InferenceResult`).
    """
    source = resolve_source(path, model)
    if source.kind == "saved_model":
        return run_saved_model(source.path, tags, signature, inputs, device, batch, fill,
                               allow_unsafe, repeats, files=files)
    prefix = resolve_prefix(source.path)
    if model is None and prefix.lower().endswith(".keras"):
        model = prefix  # a .keras archive holds its model: it runs itself (safe_mode=True)
    return restore_and_run(prefix, model, inputs, device, batch, fill, repeats, files=files)


def run_pair(path_a: str, path_b: str, model: str | None = None, inputs=None,
             device: str = "auto", batch: int = 4, fill: str | Mapping[str, str] = "random",
             *, files: bool = True, **kwargs) -> tuple[InferenceResult, InferenceResult, dict]:
    """The same inputs through two checkpoints (or models): (result a, result b,
    :func:`compare_outputs`). Inputs left out are generated once, for both. In the worker."""
    check_batch(batch)
    return sandbox.call("tpuckpt_viz.inference.api:run_pair_here", os.fspath(path_a),
                        os.fspath(path_b), model, inputs, device, batch, fill, files=files,
                        what=f"running {os.fspath(path_a)} and {os.fspath(path_b)}", **kwargs)


def run_pair_here(path_a: str, path_b: str, model: str | None = None, inputs=None,
                  device: str = "auto", batch: int = 4,
                  fill: str | Mapping[str, str] = "random", *, files: bool = True, **kwargs
                  ) -> tuple[InferenceResult, InferenceResult, dict]:
    """:func:`run_pair` in this process (the worker's side)."""
    a = run_inference_here(path_a, model, inputs=inputs, device=device, batch=batch, fill=fill,
                           files=files, **kwargs)
    b = run_inference_here(path_b, model, inputs=dict(a.inputs), device=device, batch=batch,
                           fill=fill, files=False, **kwargs)
    return a, b, compare_outputs(a, b)


def model_specs(ckpt_prefix: str, builder: str | None = None, device: str = "auto"
                ) -> list[TensorInfo]:
    """The inputs of the builder's model restored from ``ckpt_prefix`` (built in the worker,
    which keeps it for the Run that follows)."""
    return sandbox.call("tpuckpt_viz.inference.api:model_specs_here", os.fspath(ckpt_prefix),
                        builder, device, what=f"restoring {os.fspath(ckpt_prefix)}")


def model_specs_here(ckpt_prefix: str, builder: str | None = None, device: str = "auto"
                     ) -> list[TensorInfo]:
    return list(restored_model(ckpt_prefix, builder, device).specs)


def warm_up() -> None:
    """Start the TensorFlow worker now, so that the first Run does not pay TensorFlow's import."""
    sandbox.start("infer")
