"""Keras weight files read with h5py: ``.weights.h5`` and ``.keras`` (Keras 3), ``.h5`` (Keras 2).

A Keras file opens as :class:`KerasCheckpoint`, which has the interface the records, statistics,
diff and run engine use for a bundle :class:`~tpuckpt_viz.checkpoint.reader.Checkpoint`:
``entries`` (key, shape, dtype, numel, nbytes), ``object_graph`` (readable names and slot links),
``kind_hints``, ``read`` / ``read_raw``, ``chunks`` (h5py dataset slices, so memory stays bounded),
``signature``, ``prefix``, ``path`` and ``format``. A record's key is the dataset's HDF5 path; its
name is the variable's Keras path (``hidden/kernel``, ``bn/moving_mean``).

Layouts (Keras 3.15; Keras 2.0-2.15):

- Keras 3: weights at ``layers/<class in snake_case>[_N]/vars/<i>``, ``i`` the position in the
  layer's own variables (trainable first). The group name comes from the class and the order of
  the layers, not the layer's name; the name is the ``vars`` group's ``name`` attribute in recent
  files, and only in ``config.json`` in older ones. Nested layers and subclassed models use
  attribute paths (``layers/lstm/cell/vars/0``, ``block1/layers/conv2d_1/vars/0``). A compiled
  model also saves ``optimizer/vars/<i>``: the i-th of ``optimizer.variables`` (iterations,
  learning rate, then the slots built for each trainable variable in order), with no names. In a
  ``.keras``, ``config.json`` gives that order, so every slot is linked to its variable; in a
  bare ``.weights.h5`` a slot is linked only where the file proves it (its shape and dtype are
  those of exactly one model variable).
- Keras 2: ``[model_weights/]<layer>/<weight name>`` ordered by the ``layer_names`` and
  ``weight_names`` attributes, and ``optimizer_weights`` named ``Adam/m/<var>:0`` (TF 2.11+),
  ``Adam/<var>/m:0`` (earlier tf.keras) or unnamed ``Variable_N:0`` (Keras 2.0-2.2: the first
  moments of every trainable variable, then the second moments, ...).

Nothing here imports Keras or TensorFlow, and nothing is written anywhere: a ``.keras`` archive's
``model.weights.h5`` is read in place inside the zip (h5py reads the member as a file object).
:meth:`KerasCheckpoint.plan` gives a contiguous, uncompressed dataset its byte range in the
file (in the archive itself when the member is stored uncompressed, as Keras writes it), so
the statistics engine and Dask workers read it like a bundle's shard.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import numpy as np

from tpuckpt_viz.checkpoint import formats
from tpuckpt_viz.checkpoint.objectgraph import ObjectGraphInfo
from tpuckpt_viz.checkpoint.shards import Entry, ReadPlan, ReadSettings
from tpuckpt_viz.errors import UserError, first_line

KERAS_SUFFIXES = (".keras", ".weights.h5", ".h5", ".hdf5")
_SUFFIX_NUM = re.compile(r"_\d+$")
_TENSOR_SUFFIX = re.compile(r":\d+$")


def to_snake_case(name: str) -> str:
    """Keras's own ``to_snake_case``: the group name of a layer class (``Conv2D`` -> ``conv2d``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


# ---------------------------------------------------------------------------- Keras 3 layers
# The weights each layer class creates, in order (its own variables, trainable first), as
# (name, trainable) for a layer config (None: the class defaults). Checked against Keras 3
# itself in tests/checkpoint/test_keras_files.py.
def _kernel_bias(cfg):
    return [("kernel", True)] + ([("bias", True)] if cfg.get("use_bias", True) else [])


def _norm(cfg):
    return (([("gamma", True)] if cfg.get("scale", True) else [])
            + ([("beta", True)] if cfg.get("center", True) else []))


def _rnn_cell(cfg):
    return ([("kernel", True), ("recurrent_kernel", True)]
            + ([("bias", True)] if cfg.get("use_bias", True) else []))


LAYER_WEIGHTS = {
    **{c: _kernel_bias for c in ("dense", "conv1d", "conv2d", "conv3d", "conv1d_transpose",
                                 "conv2d_transpose", "conv3d_transpose", "depthwise_conv1d",
                                 "depthwise_conv2d")},
    "einsum_dense": lambda cfg: [("kernel", True)] + ([("bias", True)]
                                                      if cfg.get("bias_axes") else []),
    "separable_conv1d": lambda cfg: [("depthwise_kernel", True), ("pointwise_kernel", True)]
    + ([("bias", True)] if cfg.get("use_bias", True) else []),
    "separable_conv2d": lambda cfg: [("depthwise_kernel", True), ("pointwise_kernel", True)]
    + ([("bias", True)] if cfg.get("use_bias", True) else []),
    "embedding": lambda cfg: [("embeddings", True)],
    "batch_normalization": lambda cfg: _norm(cfg) + [("moving_mean", False),
                                                     ("moving_variance", False)],
    "layer_normalization": _norm,
    "group_normalization": _norm,
    "rms_normalization": lambda cfg: [("scale", True)],
    "lstm_cell": _rnn_cell,
    "gru_cell": _rnn_cell,
    "simple_rnn_cell": _rnn_cell,
    "p_re_lu": lambda cfg: [("alpha", True)],  # Keras's own snake case of PReLU
    "normalization": lambda cfg: [("mean", False), ("variance", False), ("count", False)],
}
_CELL_OF = {"lstm": "lstm_cell", "gru": "gru_cell", "simple_rnn": "simple_rnn_cell"}

# Keras 3 optimizers: the slots each builds, as groups; each group is one pass over the
# trainable variables creating the named slots for each variable in turn
# (``add_optimizer_variables(var_list, ["momentum", "velocity"])`` interleaves them).
# Values: (groups, scalar variables built after the slots).
def _opt_slots(class_name: str, cfg: dict):
    c = class_name
    if c in ("Adam", "AdamW"):
        return [("momentum", "velocity")] + ([("velocity_hat",)] if cfg.get("amsgrad") else []), []
    if c == "SGD":
        return ([("momentum",)] if cfg.get("momentum") else []), []
    if c == "RMSprop":
        return ([("velocity",)] + ([("momentum",)] if cfg.get("momentum", 0) > 0 else [])
                + ([("average_gradient",)] if cfg.get("centered") else [])), []
    if c == "Adagrad":
        return [("accumulator",)], []
    if c == "Adadelta":
        return [("accumulated_grad", "accumulated_delta_var")], []
    if c == "Adamax":
        return [("m", "u")], []
    if c == "Ftrl":
        return [("accumulator", "linear")], []
    if c in ("Lamb",):
        return [("momentum", "velocity")], []
    if c == "Lion":
        return [("momentum",)], []
    if c == "Nadam":
        return [("momentum", "velocity")], ["u_product"]
    return None


# Keras 2.0-2.2 optimizers: ``self.weights = [iterations] + ms + vs + ...`` (blocks).
_KERAS22_BLOCKS = {"Adam": ("m", "v", "vhat"), "SGD": ("momentum",), "RMSprop": ("accumulator",),
                   "Adagrad": ("accumulator",), "Adadelta": ("accumulator", "delta_accumulator"),
                   "Adamax": ("m", "u"), "Nadam": ("m", "v")}
_K2_NON_TRAINABLE = {"moving_mean", "moving_variance"}


@dataclass
class _Layout:
    """What the file says: readable names, slot links, kind hints, and which layout it was."""

    kind: str  # "keras3", "keras2", "keras2-weights"
    names: dict[str, str] = field(default_factory=dict)
    slots: dict[str, tuple[str, str]] = field(default_factory=dict)
    hints: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    iterations_key: str | None = None
    notes: list[str] = field(default_factory=list)


def _attr_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _attr_list(value) -> list[str]:
    if value is None:
        return []
    return [_attr_str(v) for v in np.asarray(value).reshape(-1)]


def _dtype_name(ds) -> str:
    if _attr_str(ds.attrs.get("dtype", "")) == "bfloat16":
        return "bfloat16"
    dt = ds.dtype
    if dt.kind in ("S", "U", "O"):
        return "string"
    if dt.kind == "V":
        return "bfloat16" if dt.itemsize == 2 else "string"
    return dt.name


# ---------------------------------------------------------------------------- the checkpoint
class KerasCheckpoint:
    """A Keras weights file opened for reading (thread-safe: reads hold a lock)."""

    format = "keras"
    index = None  # no bundle index: nothing is streamed from a data shard

    def __init__(self, path: str, display_path: str | None = None):
        self.prefix = str(path)
        self.path = display_path or self.prefix
        self.resolved = None
        self.settings = ReadSettings.from_config()  # read once, as Checkpoint does
        self._lock = threading.RLock()
        self._zip = None
        # A .keras's weights member stored uncompressed: (its first byte's offset in the
        # archive, its size); None for a deflated one (read through h5py only).
        self._member: tuple[int, int] | None = None
        self._plans: dict[str, ReadPlan] = {}
        self._config: dict | None = None
        self._file = self._open()
        try:
            self._datasets = self._collect()
            self.entries = {k: self._entry(k, ds) for k, ds in self._datasets.items()}
            self.layout = self._layout()
        except UserError:
            raise
        except Exception as exc:  # a damaged or unexpected file: one line, never a traceback
            raise UserError(f"cannot read Keras file {self.path}: {first_line(exc)}") from None

    # -- opening -------------------------------------------------------------------------
    def _open(self):
        import h5py

        kind = formats.sniff(self.prefix)
        try:
            if kind == "zip":
                self._zip = zipfile.ZipFile(formats.open_binary(self.prefix))
                members = set(self._zip.namelist())
                if "model.weights.h5" not in members:
                    hint = (" (a sharded save: model.weights.json)"
                            if "model.weights.json" in members else "")
                    raise UserError(f"{self.path} is a zip without model.weights.h5{hint}: "
                                    "it is not a Keras 3 .keras file this tool can read")
                for name in ("config.json", "metadata.json"):
                    if name in members:
                        with self._zip.open(name) as f:
                            data = f.read(64 << 20)
                        try:
                            parsed = json.loads(data)
                        except ValueError:
                            parsed = None
                        if name == "config.json":
                            self._config = parsed if isinstance(parsed, dict) else None
                        else:
                            self.metadata = parsed
                self._member = self._stored_member("model.weights.h5")
                # Read in place: a seekable member, never unpacked to disk.
                return h5py.File(self._zip.open("model.weights.h5"), "r")
            if kind == "hdf5":
                if formats.is_local(self.prefix):
                    return h5py.File(self.prefix, "r")
                return h5py.File(formats.open_binary(self.prefix), "r")
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot open Keras file {self.path}: {first_line(exc)}") from None
        raise UserError(f"{self.path} is neither an HDF5 file nor a .keras zip: pass a Keras "
                        ".weights.h5, .keras or .h5 file")

    def _stored_member(self, name: str) -> tuple[int, int] | None:
        """Where the bytes of zip member ``name`` start in the archive, and their size, when
        the member is stored as is (Keras writes ``.keras`` archives uncompressed): its HDF5
        datasets then have byte ranges in the archive itself. None otherwise."""
        info = self._zip.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # 0x1: encrypted
            return None
        try:
            with formats.open_binary(self.prefix) as f:
                f.seek(info.header_offset)
                header = f.read(30)
                # The local header's name and extra field lengths (they may differ from the
                # central directory's), then the data; HDF5 data starts with its signature.
                if len(header) < 30 or header[:4] != formats.ZIP_MAGIC:
                    return None
                start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") \
                    + int.from_bytes(header[28:30], "little")
                f.seek(start)
                if f.read(len(formats.HDF5_MAGIC)) != formats.HDF5_MAGIC:
                    return None
        except Exception:
            return None
        return start, info.file_size

    def _collect(self) -> dict:
        import h5py

        found = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                found[name] = obj

        self._file.visititems(visit)
        return found

    def _entry(self, key: str, ds) -> Entry:
        shape = tuple(int(d) for d in ds.shape) if ds.shape is not None else ()
        dtype = _dtype_name(ds)
        numel = math.prod(shape)
        return Entry(key, shape, dtype, numel, numel * ds.dtype.itemsize)

    @property
    def model_config(self) -> dict | None:
        """The model's config: ``config.json`` of a ``.keras``, or a Keras 2 file's
        ``model_config`` attribute (None when the file has none)."""
        if self._config is not None:
            return self._config
        raw = self._file.attrs.get("model_config")
        if raw is None:
            return None
        try:
            parsed = json.loads(_attr_str(raw))
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    # -- naming ----------------------------------------------------------------------------
    def _layout(self) -> _Layout:
        root = self._file
        if "model_weights" in root and "layer_names" in root["model_weights"].attrs:
            return self._keras2_layout(root["model_weights"], "model_weights", full=True)
        if "layer_names" in root.attrs:
            return self._keras2_layout(root, "", full=False)
        return self._keras3_layout()

    # Keras 3 ----------------------------------------------------------------------------
    def _keras3_layout(self) -> _Layout:
        out = _Layout("keras3")
        owners: dict[str, list[str]] = {}  # object path -> dataset keys under its vars/
        for key in self._datasets:
            head, sep, _ = key.rpartition("/vars/")
            if not sep and key.startswith("vars/"):
                head = ""
            elif not sep:
                out.names[key] = key
                continue
            owners.setdefault(head, []).append(key)
        for keys in owners.values():
            keys.sort(key=lambda k: int(k.rsplit("/", 1)[-1]) if k.rsplit("/", 1)[-1].isdigit()
                      else 1 << 30)
        layer_cfgs = self._keras3_config_map()
        prefix_names: dict[str, str] = {}
        for owner, keys in owners.items():
            if owner == "optimizer" or owner.startswith("optimizer/"):
                continue
            label = self._object_label(owner, layer_cfgs, prefix_names)
            cls = self._object_class(owner, layer_cfgs)
            cfg = (layer_cfgs.get(owner) or {}).get("config") or {}
            table = LAYER_WEIGHTS.get(cls)
            weights = table(cfg) if table else None
            for i, key in enumerate(keys):
                if weights and len(weights) == len(keys):
                    var = weights[i][0]
                else:
                    var = f"vars/{key.rsplit('/', 1)[-1]}"
                out.names[key] = f"{label}/{var}" if label else var
        self._keras3_optimizer(out, owners, layer_cfgs, prefix_names)
        return out

    def _keras3_config_map(self) -> dict[str, dict]:
        """Object path -> layer config, from ``config.json``: a model's layers sit at
        ``layers/<snake_case(class)>[_N]`` in the order of its config's layer list."""
        result: dict[str, dict] = {}

        def walk(model_cfg: dict, base: str):
            layers = (model_cfg.get("config") or {}).get("layers")
            if not isinstance(layers, list):
                return
            counts: dict[str, int] = {}
            for layer in layers:
                if not isinstance(layer, dict):
                    continue
                snake = to_snake_case(str(layer.get("class_name", "")))
                n = counts.get(snake, 0)
                counts[snake] = n + 1
                path = f"{base}layers/{snake}" + (f"_{n}" if n else "")
                result[path] = layer
                walk(layer, path + "/")

        if self._config is not None:
            walk(self._config, "")
        return result

    def _vars_name(self, owner: str) -> str | None:
        group = self._file.get(f"{owner}/vars" if owner else "vars")
        if group is None:
            return None
        name = group.attrs.get("name")
        return _attr_str(name) if name is not None else None

    def _object_label(self, owner: str, cfgs: dict, cache: dict) -> str:
        """The readable prefix of an object: the names of the layers on its path (the
        ``vars`` group's ``name`` attribute, else config.json's name, else the group name);
        the model itself (the root) adds nothing."""
        if owner in cache:
            return cache[owner]
        if not owner:
            cache[owner] = self._root_label()
            return cache[owner]
        parent, _, last = owner.rpartition("/")
        if parent.endswith("layers") and (parent == "layers" or parent.endswith("/layers")):
            parent = parent[: -len("layers")].rstrip("/")
        own = (self._vars_name(owner) or (cfgs.get(owner) or {}).get("config", {}).get("name")
               or (cfgs.get(owner) or {}).get("name") or last)
        parent_label = self._object_label(parent, cfgs, cache)
        label = f"{parent_label}/{own}" if parent_label else str(own)
        cache[owner] = label
        return label

    def _root_label(self) -> str:
        """The model's own name where Keras puts it in front of its variables' paths: a
        Sequential or subclassed model builds its layers inside its own name scope
        (``sequential/dense/kernel``), a Functional model does not (``hidden/kernel``). Without
        config.json, a Functional model is told by its InputLayer in ``layers/``."""
        if self._config is not None:
            functional = self._config.get("class_name") == "Functional"
            name = self._vars_name("") or (self._config.get("config") or {}).get("name")
        else:
            layers = self._file.get("layers")
            functional = layers is not None and any(
                _SUFFIX_NUM.sub("", n) == "input_layer" for n in layers.keys())
            name = self._vars_name("")
        return "" if functional or not name else str(name)

    def _object_class(self, owner: str, cfgs: dict) -> str | None:
        cfg = cfgs.get(owner)
        if cfg and cfg.get("class_name"):
            return to_snake_case(str(cfg["class_name"]))
        parent, _, last = owner.rpartition("/")
        if last == "cell":
            parent_cls = self._object_class(parent, cfgs) if parent else None
            return _CELL_OF.get(parent_cls or "")
        if parent == "layers" or parent.endswith("/layers"):
            return _SUFFIX_NUM.sub("", last)
        name = self._vars_name(owner)
        return _SUFFIX_NUM.sub("", name) if name else None

    def _trainable_order(self, owners: dict, cfgs: dict) -> list[str] | None:
        """Dataset keys of ``model.trainable_variables`` in order, from config.json; None
        when the config cannot prove the order (unknown layer classes, several nested
        objects with variables under one layer, ...)."""
        if self._config is None:
            return None
        order: list[str] = []
        layer_paths = set(cfgs)

        def own_trainable(path: str, cfg: dict | None, cls: str | None) -> list[str] | None:
            keys = owners.get(path, [])
            if not keys:
                return []
            table = LAYER_WEIGHTS.get(cls or "")
            if table is None:
                return None
            weights = table((cfg or {}).get("config") or {})
            if len(weights) != len(keys):
                return None
            return [k for k, (_, trainable) in zip(keys, weights) if trainable]

        def walk_layer(path: str, cfg: dict | None, trainable: bool) -> bool:
            cls = self._object_class(path, cfgs)
            mine = own_trainable(path, cfg, cls)
            if mine is None:
                return False
            if trainable:
                order.extend(mine)
            # Nested objects that are not layers of a nested model (an RNN's cell).
            nested = sorted(o for o in owners if o.startswith(path + "/") and owners[o]
                            and not any(o.startswith(lp + "/") or o == lp
                                        for lp in layer_paths if lp.startswith(path + "/")))
            if len(nested) > 1:
                return False
            for o in nested:
                if not walk_layer(o, None, trainable):
                    return False
            sub = (cfg or {}).get("config", {}).get("layers") if cfg else None
            if isinstance(sub, list):
                return walk_model(path + "/", trainable)
            return True

        def walk_model(base: str, trainable: bool) -> bool:
            paths = [p for p in cfgs if p.startswith(base + "layers/" if base else "layers/")
                     and "/" not in p[len(base + "layers/"):]]
            for p in paths:  # dict order = config order
                cfg = cfgs[p]
                layer_trainable = trainable and (cfg.get("config") or {}).get("trainable", True)
                if not walk_layer(p, cfg, bool(layer_trainable)):
                    return False
            return True

        if owners.get(""):
            return None  # the model's own variables: their trainability is not in the config
        known = set(cfgs)
        for o in owners:
            if o and not (o == "optimizer" or o.startswith("optimizer/")) and not any(
                    o == p or o.startswith(p + "/") for p in known):
                return None  # variables outside the config's layers (a subclassed model)
        if not walk_model("", bool((self._config.get("config") or {}).get("trainable", True))):
            return None
        return order

    def _keras3_optimizer(self, out: _Layout, owners: dict, cfgs: dict, labels: dict) -> None:
        keys = owners.get("optimizer")
        if not keys:
            return
        opt_name = self._vars_name("optimizer") or "optimizer"
        ent = self.entries

        def scalar(k):
            return ent[k].shape == ()

        header = []
        if keys and scalar(keys[0]) and ent[keys[0]].dtype.startswith("int"):
            header.append((keys[0], "iteration"))
            out.iterations_key = keys[0]
        opt_cfg = ((self._config or {}).get("compile_config") or {}).get("optimizer")
        class_name, cfg = None, {}
        if isinstance(opt_cfg, dict):
            class_name = str(opt_cfg.get("class_name", ""))
            cfg = opt_cfg.get("config") or {}
        elif isinstance(opt_cfg, str):
            class_name = opt_cfg
        lr_is_variable = not isinstance(cfg.get("learning_rate"), dict)
        if (len(keys) > len(header) and scalar(keys[len(header)])
                and ent[keys[len(header)]].dtype.startswith("float") and lr_is_variable):
            header.append((keys[len(header)], "learning_rate"))
        for k, n in header:
            out.names[k] = f"{opt_name}/{n}"
            out.hints[k] = ("optimizer", None)
        rest = keys[len(header):]
        linked = False
        trainable = self._trainable_order(owners, cfgs) if class_name else None
        pattern = _opt_slots(class_name, cfg) if class_name else None
        if trainable is not None and pattern is not None:
            groups, tail = pattern
            pre = []
            if cfg.get("use_ema"):
                pre.append(("average",))
            if cfg.get("gradient_accumulation_steps"):
                pre.append(("gradient_accumulator",))
            plan = []  # (slot key, variable key, slot name)
            pos = 0
            for group in pre + groups:
                for var in trainable:
                    for slot in group:
                        plan.append((rest[pos] if pos < len(rest) else None, var, slot))
                        pos += 1
            ok = (pos + len(tail) == len(rest)
                  and all(k is not None and ent[k].shape == ent[v].shape
                          and ent[k].dtype == ent[v].dtype for k, v, _ in plan))
            if ok:
                linked = True
                for k, v, slot in plan:
                    var_name = out.names[v]
                    out.names[k] = f"{opt_name}/{var_name.replace('/', '_')}_{slot}"
                    out.slots[k] = (v, slot)
                for k, n in zip(rest[pos:], tail):
                    out.names[k] = f"{opt_name}/{n}"
                    out.hints[k] = ("optimizer", None)
        if not linked:
            # What the file proves: a slot has its variable's shape and dtype; where exactly
            # one model variable has them, that is its variable.
            model_keys = [k for k in ent if k in out.names and not k.startswith("optimizer/")]
            by_sig: dict[tuple, list[str]] = {}
            for k in model_keys:
                by_sig.setdefault((ent[k].shape, ent[k].dtype), []).append(k)
            for k in rest:
                out.names[k] = f"{opt_name}/vars/{k.rsplit('/', 1)[-1]}"
                if scalar(k):
                    out.hints[k] = ("optimizer", None)
                    continue
                owners_ = by_sig.get((ent[k].shape, ent[k].dtype), [])
                if len(owners_) == 1:
                    out.slots[k] = (owners_[0], None)
                else:
                    out.hints[k] = ("slot", None)
            if class_name or rest:
                out.notes.append("optimizer slots linked by shape only" if self._config is None
                                 else "optimizer layout not recognised: slots linked by shape")

    # Keras 2 ----------------------------------------------------------------------------
    def _keras2_layout(self, group, base: str, full: bool) -> _Layout:
        out = _Layout("keras2" if full else "keras2-weights")
        by_name: dict[str, str] = {}  # weight name (no :0) -> key
        order: list[str] = []  # model weights in layer order
        trainable_layers = self._keras2_trainable_layers()
        trainable: list[str] = []
        for layer in _attr_list(group.attrs.get("layer_names")):
            if layer not in group:
                continue
            lg = group[layer]
            for wn in _attr_list(lg.attrs.get("weight_names")):
                key = "/".join(p for p in (base, layer, wn) if p)
                if key not in self._datasets:
                    continue
                name = _TENSOR_SUFFIX.sub("", wn)
                out.names[key] = name
                by_name.setdefault(name, key)
                order.append(key)
                last = name.rsplit("/", 1)[-1]
                if (trainable_layers is None or trainable_layers.get(layer, True)) and \
                        last not in _K2_NON_TRAINABLE:
                    trainable.append(key)
        if full and "optimizer_weights" in self._file:
            self._keras2_optimizer(out, by_name, trainable)
        for key in self._datasets:  # anything the attributes did not list
            out.names.setdefault(key, key)
        return out

    def _keras2_trainable_layers(self) -> dict[str, bool] | None:
        cfg = self.model_config
        layers = ((cfg or {}).get("config") or {}).get("layers") if cfg else None
        if not isinstance(layers, list):
            return None
        return {str((lay.get("config") or {}).get("name", lay.get("name"))):
                bool((lay.get("config") or {}).get("trainable", True))
                for lay in layers if isinstance(lay, dict)}

    def _keras2_optimizer(self, out: _Layout, by_name: dict, trainable: list[str]) -> None:
        group = self._file["optimizer_weights"]
        names = _attr_list(group.attrs.get("weight_names"))
        keys = []
        for wn in names:
            key = f"optimizer_weights/{wn}"
            if key in self._datasets:
                keys.append((key, _TENSOR_SUFFIX.sub("", wn)))
        listed = {k for k, _ in keys}
        keys += [(k, k[len("optimizer_weights/"):]) for k in sorted(self._datasets)
                 if k.startswith("optimizer_weights/") and k not in listed]
        unnamed = []
        ent = self.entries
        for key, name in keys:
            out.names[key] = name
            last = name.rsplit("/", 1)[-1]
            if ent[key].shape == () and last in ("iter", "iterations", "iteration"):
                out.iterations_key = out.iterations_key or key
            parts = name.split("/")
            best = None
            # The variable's own name inside the slot's: "Adam/m/<var>" (TF 2.11+) or
            # "Adam/<var>/m" (earlier tf.keras); the longest match wins.
            for i in range(len(parts)):
                for j in range(len(parts), i, -1):
                    cand = "/".join(parts[i:j])
                    if cand in by_name and (best is None or j - i > best[1] - best[0]):
                        best = (i, j)
            if best is not None:
                i, j = best
                var_key = by_name["/".join(parts[i:j])]
                slot = "/".join(parts[1:i] + parts[j:]) or parts[0]
                if ent[var_key].shape == ent[key].shape:
                    out.slots[key] = (var_key, slot)
                    continue
            if ent[key].shape == () or ent[key].numel <= 1 and ent[key].shape != (1,):
                out.hints[key] = ("optimizer", None)
            elif re.fullmatch(r"(.*/)?Variable(_\d+)?", name):
                unnamed.append(key)
                out.hints[key] = ("slot", None)
            else:
                out.hints[key] = ("slot", None)
        if unnamed:
            self._keras22_link(out, unnamed, trainable)

    def _keras22_link(self, out: _Layout, unnamed: list[str], trainable: list[str]) -> None:
        """Keras 2.0-2.2: unnamed slots in blocks (all first moments, all second moments, ...)
        in trainable order; linked only when every shape of every full block matches."""
        training = self._file.attrs.get("training_config")
        try:
            opt = json.loads(_attr_str(training))["optimizer_config"]["class_name"]
        except Exception:
            return
        blocks = _KERAS22_BLOCKS.get(str(opt).split(">")[-1])
        n = len(trainable)
        if not blocks or n == 0:
            return
        ent = self.entries
        # Nadam (and others) keep extra scalars first: they were hinted as optimizer already.
        for b, slot in enumerate(blocks):
            chunk = unnamed[b * n:(b + 1) * n]
            if len(chunk) < n:
                break
            if all(ent[k].shape == ent[v].shape for k, v in zip(chunk, trainable)):
                for k, v in zip(chunk, trainable):
                    out.slots[k] = (v, slot)
                    out.hints.pop(k, None)
            else:
                for k in chunk:  # amsgrad placeholders (shape (1,)) and the like
                    out.hints[k] = ("optimizer", None) if ent[k].numel <= 1 else ("slot", slot)

    # -- the Checkpoint interface ----------------------------------------------------------
    @cached_property
    def object_graph(self) -> ObjectGraphInfo:
        """Readable names (``full_names``) and slot links, as a bundle's object graph gives."""
        return ObjectGraphInfo(full_names=dict(self.layout.names), slots=dict(self.layout.slots))

    @property
    def kind_hints(self) -> dict[str, tuple[str, str | None]]:
        """key -> (kind, slot name) where the layout says what an entry is."""
        return self.layout.hints

    @property
    def iterations_key(self) -> str | None:
        """The optimizer's iteration counter, when the file holds one."""
        return self.layout.iterations_key

    @cached_property
    def signature(self) -> tuple:
        try:
            if formats.is_local(self.prefix):
                st = os.stat(self.prefix)
                return (self.prefix, st.st_size, st.st_mtime_ns)
            from tpuckpt_viz.checkpoint import remote

            if remote.handles(self.prefix):
                mtime = remote.mtime_ns(self.prefix)
                if mtime:
                    return (self.prefix, remote.info(self.prefix).get("size"), mtime)
                raise OSError("no modification time")
            from tpuckpt_viz.tfcompat import tf

            st = tf().io.gfile.stat(self.prefix)
            if st.mtime_nsec:
                return (self.prefix, st.length, st.mtime_nsec)
        except Exception:
            pass
        import hashlib

        with formats.open_binary(self.prefix) as f:
            h = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return (self.prefix, h.hexdigest())

    def plan(self, key: str) -> ReadPlan:
        """How to read ``key`` (:class:`tpuckpt_viz.checkpoint.shards.ReadPlan`): the byte range
        of a contiguous, unfiltered dataset (the engine then streams it like a bundle's shard,
        and a Dask worker reads it itself; HDF5 keeps no checksum), in the HDF5 file or, for a
        ``.keras`` whose weights are stored uncompressed (as Keras writes them), in the
        archive; else a plan without ranges: read it through h5py (:meth:`chunks`)."""
        entry = self._check(key)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(key, entry)
        return plan

    def _plan(self, key: str, entry: Entry) -> ReadPlan:
        from tpuckpt_viz.checkpoint.shards import Range

        whole = ReadPlan(key, entry.shape)
        if (self._zip is not None and self._member is None) or entry.numel == 0 \
                or entry.dtype == "string":
            return whole
        ds = self._datasets[key]
        try:
            with self._lock:
                offset = ds.id.get_offset()
                stored = ds.id.get_storage_size()
                plain = (ds.chunks is None and ds.compression is None and ds.external is None
                         and not ds.is_virtual)
        except Exception:
            return whole
        if offset is None or not plain or stored != entry.nbytes:
            return whole
        if entry.dtype == "bfloat16":
            if ds.dtype.byteorder == ">":  # the bits of a big-endian uint16: read by h5py
                return whole
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            dtype = np.dtype(ds.dtype)  # with its byte order: HDF5 keeps either
        offset = int(offset)
        if self._member is not None:
            start, size = self._member
            if offset + entry.nbytes > size:
                return whole
            offset += start
        return ReadPlan(key, entry.shape, dtype, (Range(self.prefix, offset, entry.nbytes),),
                        None)

    def streamable(self, key: str) -> bool:
        return self.plan(key).streamable

    def _check(self, key: str) -> Entry:
        if key not in self.entries:
            raise UserError(f"no variable {key!r} in {self.path}: run `list` to see the keys")
        return self.entries[key]

    def _as_array(self, key: str, value) -> np.ndarray:
        arr = np.asarray(value)
        if self.entries[key].dtype == "bfloat16" and arr.dtype.itemsize == 2:
            import ml_dtypes

            arr = arr.view(ml_dtypes.bfloat16)
        return arr

    def read_raw(self, key: str):
        """The whole dataset as numpy (bfloat16 as ``ml_dtypes.bfloat16``)."""
        self._check(key)
        try:
            with self._lock:
                return self._as_array(key, self._datasets[key][()])
        except Exception as exc:
            raise UserError(f"cannot read {key} from {self.path}: {first_line(exc)}") from None

    def read(self, key: str) -> np.ndarray:
        return np.asarray(self.read_raw(key))

    def chunks(self, key: str, chunk_bytes: int | None = None,
               threshold_bytes: int | None = None) -> Iterator[np.ndarray]:
        """The dataset as flat 1-D arrays, in order, read a slab of leading rows at a time
        (never the whole tensor when it is larger than ``chunk_bytes``)."""
        entry = self._check(key)
        chunk_bytes = chunk_bytes or self.settings.chunk_bytes
        ds = self._datasets[key]
        itemsize = max(ds.dtype.itemsize, 1)
        if entry.numel * itemsize <= chunk_bytes or len(entry.shape) == 0:
            flat = np.asarray(self.read_raw(key)).reshape(-1)
            yield flat
            return
        yield from self._slabs(key, ds, (), entry.shape, chunk_bytes, itemsize)

    def _slabs(self, key, ds, index: tuple, shape: tuple, chunk_bytes: int, itemsize: int):
        row = math.prod(shape[1:]) * itemsize
        if len(shape) == 1 or row <= chunk_bytes:
            step = max(1, chunk_bytes // max(row, 1))
            for start in range(0, shape[0], step):
                sel = index + (slice(start, min(start + step, shape[0])),)
                try:
                    with self._lock:
                        part = ds[sel]
                except Exception as exc:
                    raise UserError(f"cannot read {key} from {self.path}: "
                                    f"{first_line(exc)}") from None
                yield self._as_array(key, part).reshape(-1)
            return
        for i in range(shape[0]):
            yield from self._slabs(key, ds, index + (i,), shape[1:], chunk_bytes, itemsize)

    def close(self) -> None:
        with self._lock:
            try:
                self._file.close()
            finally:
                if self._zip is not None:
                    raw = self._zip.fp  # a file object we passed in: ZipFile leaves it open
                    self._zip.close()
                    if raw is not None:
                        raw.close()


def looks_like_keras(path: str) -> bool:
    """Whether ``path`` is a file this module reads: HDF5 (by its bytes), or a zip that holds
    ``model.weights.h5``."""
    kind = formats.sniff(path)
    if kind == "hdf5":
        return True
    if kind == "zip":
        try:
            with zipfile.ZipFile(formats.open_binary(path)) as z:
                return "model.weights.h5" in z.namelist() or "config.json" in z.namelist()
        except Exception:
            return False
    return False


def open_keras(path: str, display_path: str | None = None) -> KerasCheckpoint:
    """Open a Keras ``.weights.h5`` / ``.keras`` / ``.h5`` file."""
    return KerasCheckpoint(path, display_path)


__all__ = ["KerasCheckpoint", "KERAS_SUFFIXES", "LAYER_WEIGHTS", "looks_like_keras",
           "open_keras", "to_snake_case"]
