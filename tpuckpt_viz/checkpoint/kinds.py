"""Kind, layer and slot rules for TF1, TF2 and Keras 3 names, in one table-driven place.

Kinds (docs/reference.md): weight, bias, norm, stat, slot, optimizer, counter, metric, other.
The order of the rules matters and is the order of :func:`classify`: object-graph slot links,
``.OPTIMIZER_SLOT`` keys, optimizer scopes (``training/<Optimizer>/...``), TF1 slot suffixes,
then name patterns. Each pattern has a row in ``tests/checkpoint/test_kinds.py``.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from tpuckpt_viz.checkpoint.objectgraph import OBJECT_GRAPH_KEY, VALUE_SUFFIX, object_path

# TF1 optimizer slot suffixes: "<var>/<suffix>" is a slot of "<var>" when "<var>" exists.
SLOT_SUFFIXES = (
    "Adam", "Adam_1", "Momentum", "RMSProp", "RMSProp_1", "Adagrad", "AdagradDA",
    "AdagradDA_1", "Adadelta", "Adadelta_1", "Ftrl", "Ftrl_1", "accumulator", "linear",
    "adam_m", "adam_v", "lamb_m", "lamb_v", "m", "v", "momentum", "velocity", "Nadam",
    "Nadam_1", "Adamax", "Adamax_1", "LARS", "ProximalAdagrad", "accum", "accum_update",
    "ms", "mom", "rms", "mg",
)
# Mesh TensorFlow / T5 Adafactor: "<var>_slot_v", "_slot_vr", "_slot_vc", "_slot_m".
_MTF_SLOT = re.compile(r"^(?P<var>.+)_slot_(?P<slot>v|vr|vc|m)$")
_OPT_SLOT_KEY = re.compile(r"^(?P<var>.+)/\.OPTIMIZER_SLOT/[^/]+/(?P<slot>[^/]+)/\.ATTRIBUTES/"
                           r"VARIABLE_VALUE$")
# Keras optimizers inside Estimators: "training/<Optimizer>/<var>/<slot>" and
# "training/<Optimizer>/<scalar>".
_OPT_SCOPE = re.compile(r"^(?:.*/)?training/(?P<opt>[A-Za-z][A-Za-z0-9_]*)/(?P<rest>.+)$")

OPTIMIZER_NAMES = {"iter", "iteration", "iterations", "learning_rate", "lr", "decay",
                   "beta_1", "beta_2", "beta1_power", "beta2_power", "epsilon", "rho",
                   "momentum", "initial_accumulator_value", "l1_regularization_strength",
                   "l2_regularization_strength", "learning_rate_power", "beta",
                   "loss_scale", "current_loss_scale", "good_steps", "weight_decay",
                   "global_norm", "clipnorm"}
COUNTER_NAMES = {"global_step", "save_counter", "step", "total_samples", "total_nan_gradients",
                 "epoch", "num_steps"}
STAT_NAMES = {"moving_mean", "moving_variance", "moving_avg", "moving_average", "renorm_mean",
              "renorm_stddev", "running_mean", "running_var", "running_variance", "mean",
              "variance", "ExponentialMovingAverage", "ema",
              # hand-written TF1 batch norms (no .meta to say so)
              "pop_mean", "pop_var", "pop_variance", "population_mean", "population_var",
              "population_variance", "running_avg", "avg_mean", "avg_var"}
NORM_ALWAYS = {"gamma", "beta"}
NORM_IN_NORM_LAYER = {"scale", "offset", "weight", "bias", "g", "b"}
BIAS_NAMES = {"bias", "biases", "b", "bias_weights", "bias_hh", "bias_ih", "bias_0"}
WEIGHT_NAMES = {"kernel", "_kernel", "weights", "weight", "w", "embeddings", "embedding",
                "embedding_table", "recurrent_kernel", "depthwise_kernel", "pointwise_kernel",
                "weight_0", "relative_attention_bias"}
METRIC_NAMES = {"total", "count", "true_positives", "false_positives", "true_negatives",
                "false_negatives", "accumulator"}
_NORM_LAYER = re.compile(r"(^|[/_])(batch_?norm\w*|layer_?norm\w*|group_?norm\w*|rms_?norm\w*|"
                         r"instance_?norm\w*|norm\w*|bn\d*|ln\w*|LayerNorm|BatchNorm)($|/)",
                         re.IGNORECASE)
# Lingvo wraps every variable as "<name>/var".
_LINGVO_VAR = "/var"


class Grouping(NamedTuple):
    """What one entry is: its kind, layer, and for a slot its variable and slot name."""

    kind: str
    layer: str | None
    slot_of: str | None
    slot: str | None


def _strip_training_scope(name: str) -> str | None:
    """``training/<var>`` (or ``<scope>/training/<var>``) -> ``<var>``; None otherwise."""
    if name.startswith("training/"):
        return name[len("training/"):]
    head, sep, tail = name.partition("/training/")
    return tail if sep else None


def _base(name: str) -> str:
    """A name without framework wrappers (lingvo's ``/var``)."""
    return name[: -len(_LINGVO_VAR)] if name.endswith(_LINGVO_VAR) else name


def _parent(name: str) -> str | None:
    name = _base(name)
    return name.rsplit("/", 1)[0] if "/" in name else None


def _is_metric_path(key: str, name: str) -> bool:
    return ("keras_api/metrics/" in key or name.startswith("metrics/") or "/metrics/" in name
            or key.startswith("metrics/"))


# Cached: a slot asks again for the kind and layer of the variable it belongs to.
@functools.lru_cache(maxsize=1 << 16)
def _name_kind(key: str, name: str, dtype: str, ndim: int) -> tuple[str, str | None]:
    """Kind and layer of a non-slot entry, from its readable name."""
    base = _base(name)
    parts = base.split("/")
    last = parts[-1]
    parent = _parent(name)
    if key == OBJECT_GRAPH_KEY:
        return "other", None
    if last in COUNTER_NAMES and ndim == 0:
        return "counter", None
    if _is_metric_path(key, name):
        return "metric", None
    if key.startswith("optimizer/") and not key.startswith("optimizer/_trainable_variables/"):
        return "optimizer", None
    if last in ("beta1_power", "beta2_power") or (last in OPTIMIZER_NAMES and ndim == 0
                                                  and last not in ("beta", "momentum")):
        return "optimizer", None
    if "ExponentialMovingAverage" in parts or last in STAT_NAMES:
        layer = "/".join(p for p in parts[:-1] if p != "ExponentialMovingAverage") or None
        return "stat", layer
    if last in NORM_ALWAYS:
        return "norm", parent
    # Inside a normalization layer: "scale", "offset", ... and tensor2tensor's
    # "layer_norm/layer_norm_scale", "layer_norm/layer_norm_bias".
    if ((last in NORM_IN_NORM_LAYER or last.rsplit("_", 1)[-1] in NORM_IN_NORM_LAYER)
            and parent and _NORM_LAYER.search(parent)):
        return "norm", parent
    if last in BIAS_NAMES:
        return "bias", parent
    if last in WEIGHT_NAMES:
        return "weight", parent
    if last in METRIC_NAMES and ndim == 0:
        return "metric", None
    if dtype.startswith(("float", "bfloat", "complex")) and ndim >= 1:
        return "weight", parent
    return "other", parent


# Kinds a checkpoint's own metadata can state for an entry (``hints``): the plain kinds, plus
# "trainable" and "model" (TF1 collections): such a variable is a model parameter, never a
# slot, counter or optimizer scalar, whatever its name says ("trainable": never a statistic).
HINT_KINDS = {"weight", "bias", "norm", "stat", "slot", "optimizer", "counter", "metric",
              "other", "trainable", "model"}


def _hinted(key: str, name: str, dtype: str, ndim: int, hint: tuple[str, str | None]):
    kind, slot = hint
    if kind in ("trainable", "model"):
        base, layer = _name_kind(key, name, dtype, ndim)
        allowed = ("weight", "bias", "norm") if kind == "trainable" else (
            "weight", "bias", "norm", "stat")
        return Grouping(base if base in allowed else "weight", layer, None, None)
    if kind in ("weight", "bias", "norm", "stat"):
        return Grouping(kind, _name_kind(key, name, dtype, ndim)[1], None, None)
    return Grouping(kind, None, None, slot)


def classify(key: str, name: str, dtype: str, ndim: int, keys: set[str],
             graph_slots: dict[str, tuple[str, str]], names: dict[str, str],
             hints: dict[str, tuple[str, str | None]] | None = None) -> Grouping:
    """Group one checkpoint entry.

    ``keys`` holds every raw key of the checkpoint (a TF1 slot is linked only when its
    variable exists), ``graph_slots`` the object graph's slot links (slot key -> (variable
    key, slot name)) and ``names`` the readable name of every key (for the slot's layer).
    ``hints`` (key -> (kind, slot name)) is what the checkpoint's own metadata says an entry
    is (a Keras file's layout, a TF1 graph's collections): it comes before the name rules.
    """

    def slot_of(var_key: str, slot: str) -> Grouping:
        var_name = names.get(var_key, var_key)
        _, layer = _name_kind(var_key, var_name, "float32", 1)
        return Grouping("slot", layer, var_key, slot)

    if key in graph_slots:
        return slot_of(*graph_slots[key])
    hint = hints.get(key) if hints else None
    if hint is not None and hint[0] in HINT_KINDS:
        return _hinted(key, name, dtype, ndim, hint)
    match = _OPT_SLOT_KEY.match(key)
    if match:
        var_key = match.group("var") + VALUE_SUFFIX
        return slot_of(var_key if var_key in keys else match.group("var"), match.group("slot"))
    scope = _OPT_SCOPE.match(key)
    if scope and key not in graph_slots:
        rest = scope.group("rest")
        if "/" not in rest:
            return Grouping("optimizer", None, None, None)
        var, _, suffix = rest.rpartition("/")
        if var in keys:
            return slot_of(var, suffix)
    if "/" in key:
        var, _, suffix = key.rpartition("/")
        if suffix in SLOT_SUFFIXES:
            # TF1 optimizers created under a "training" name scope (tensor2tensor, Estimators)
            # save "training/<var>/Adam" for the variable "<var>".
            for candidate in (var, _strip_training_scope(var)):
                if candidate and candidate in keys:
                    return slot_of(candidate, suffix)
    mtf = _MTF_SLOT.match(key)
    if mtf and mtf.group("var") in keys:
        return slot_of(mtf.group("var"), mtf.group("slot"))
    kind, layer = _name_kind(key, name, dtype, ndim)
    return Grouping(kind, layer, None, None)


def readable_names(keys: list[str], full_names: dict[str, str]) -> dict[str, str]:
    """Readable name per key: the object graph's ``full_name`` where it holds a ``/`` and is
    unique, else the object path (the key without ``/.ATTRIBUTES/VARIABLE_VALUE``).

    A bare ``full_name`` says less than the object path: ``tf.train.Checkpoint(encoder=m,
    step=tf.Variable(0))`` shows ``encoder/w`` and ``step``, never ``w`` or ``Variable``
    (docs/reference.md, list records). Repeated names (metric accumulators ``total``) fall
    back to their object path so that names stay unique within a checkpoint.
    """
    proposed = {key: full_names[key] if "/" in full_names.get(key, "") else object_path(key)
                for key in keys}
    result = _fallback_duplicates(proposed)
    # A full_name may still equal another key's object path: those fall back too.
    return _fallback_duplicates(result)


def _fallback_duplicates(proposed: dict[str, str]) -> dict[str, str]:
    counts: dict[str, int] = {}
    for name in proposed.values():
        counts[name] = counts.get(name, 0) + 1
    return {key: (object_path(key) if counts[name] > 1 else name)
            for key, name in proposed.items()}
