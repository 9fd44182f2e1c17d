"""Loading a SavedModel and calling one of its signatures: the TF2 loader, else a TF1 session.

``tf.saved_model.load`` is tried first; where it (or the call) fails, the TF1 session loader
still reads old exports: ``float32_ref`` signatures, Keras 2 objects with optimizer slots
(``'_UserObject' object has no attribute 'add_slot'``), TF 1.0 graphs, and the ParseExample
``ValueError`` of half_plus_three.
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping

import numpy as np

from tpuckpt_viz.errors import UserError
from tpuckpt_viz.inference.calls import input_error, missing_op_hint, tf_error_text, timed, to_numpy
from tpuckpt_viz.inference.devices import CPU_NAME
from tpuckpt_viz.inference.savedmodel import SignatureInfo, fmt_tags
from tpuckpt_viz.tfcompat import tf


class LoadedSavedModel:
    """One SavedModel loaded on one device (lazily; shared by every session, hence the lock)."""

    def __init__(self, path: str, tags: tuple[str, ...], device: str, tf1_graph: bool):
        self.path, self.tags, self.device = path, tags, device
        self.tf1_graph = tf1_graph  # a TF1 export (no object graph): feeds are shape-checked
        self.lock = threading.Lock()
        self.tf2 = None
        self.tf2_error: BaseException | None = None
        self.tf2_tried = False
        self.session = None
        self.tf1_meta = None
        self.tf1_error: BaseException | None = None
        self.use_tf1: set[str] = set()  # signatures whose TF2 call failed and TF1 ran

    @property
    def loaded(self) -> bool:
        return self.session is not None or self.tf2 is not None

    def _load_tf2(self):
        with self.lock:
            if not self.tf2_tried:
                self.tf2_tried = True
                t = tf()
                try:
                    with t.device(self.device):
                        self.tf2 = t.saved_model.load(self.path, tags=list(self.tags) or None)
                except Exception as exc:  # noqa: BLE001 - any failure: try the TF1 loader
                    self.tf2_error = exc
        return self.tf2

    def _load_tf1(self):
        with self.lock:
            if self.session is None and self.tf1_error is None:
                t = tf()
                v1 = t.compat.v1
                cfg = v1.ConfigProto(allow_soft_placement=True)
                if self.device == CPU_NAME:
                    cfg.device_count["GPU"] = 0
                graph = t.Graph()
                session = v1.Session(graph=graph, config=cfg)
                try:
                    with graph.as_default():
                        # clear_devices: exports pin ops to the GPU they were made on.
                        self.tf1_meta = v1.saved_model.loader.load(
                            session, list(self.tags), self.path, clear_devices=True)
                    self.session = session
                except Exception as exc:  # noqa: BLE001 - reported with the TF2 error
                    session.close()
                    self.tf1_error = exc
        return self.session

    def _call_tf2(self, signature: str, inputs: dict[str, np.ndarray]) -> Callable[[], dict]:
        t = tf()
        fn = self.tf2.signatures[signature]
        _, spec = fn.structured_input_signature
        if self.tf1_graph:
            # TF2 wraps a TF1 graph without checking feeds (half_plus_two would take [2] for
            # its [-1, 1] input and broadcast); TF Serving and the TF1 session refuse such
            # feeds. The shapes here are the graph's own static ones (not the signature's
            # declarations, which can be wrong), so refusing matches what the session does;
            # the caller then asks the TF1 session, whose own message is what the user sees.
            for k, v in inputs.items():
                if k in spec and not spec[k].shape.is_compatible_with(np.shape(v)):
                    raise ValueError(f"Cannot feed value of shape {np.shape(v)} for input {k!r}, "
                                     f"which has shape {spec[k].shape}")
        with t.device(self.device):
            tensors = {k: t.constant(v, dtype=spec[k].dtype if k in spec else None)
                       for k, v in inputs.items()}

        def call():
            with t.device(self.device):
                out = fn(**tensors)
            if not isinstance(out, Mapping):
                out = {"output_0": out}
            return {k: to_numpy(v) for k, v in out.items()}

        return call

    def _call_tf1(self, signature: str, inputs: dict[str, np.ndarray]) -> Callable[[], dict]:
        sd = self.tf1_meta.signature_def[signature]
        feed = {sd.inputs[k].name: v for k, v in inputs.items()}
        fetch = {k: sd.outputs[k].name for k in sd.outputs}
        session = self.session
        return lambda: {k: np.asarray(v) for k, v in session.run(fetch, feed).items()}

    def run(self, sig: SignatureInfo, inputs: dict[str, np.ndarray], repeats: int
            ) -> tuple[dict, float, int]:
        """(outputs, latency_ms, runs) of signature ``sig`` on ``inputs`` (see ``timed``)."""
        name = sig.name
        tf2_call_error = None
        if name not in self.use_tf1 and self._load_tf2() is not None \
                and name in self.tf2.signatures:
            try:
                return timed(self._call_tf2(name, inputs), repeats)
            except Exception as exc:  # noqa: BLE001 - try TF1 before blaming the inputs
                tf2_call_error = exc
        if self._load_tf1() is None:
            if tf2_call_error is not None:
                raise input_error(sig, tf2_call_error)
            first = self.tf2_error or self.tf1_error
            hint = missing_op_hint(self.tf1_error) or missing_op_hint(first)
            raise UserError(f"cannot load SavedModel {self.path} (tags {fmt_tags(self.tags)}): "
                            + (hint or tf_error_text(first)))
        try:
            result = timed(self._call_tf1(name, inputs), repeats)
        except Exception as exc:  # noqa: BLE001 - TensorFlow rejected the inputs
            raise input_error(sig, exc)
        self.use_tf1.add(name)
        return result
