"""Where inference runs: a TPU when one is there, else a GPU, else the CPU.

``choose_device("auto")`` tries, in order:

1. a TPU: on a TPU VM (``/dev/accel*`` or ``/dev/vfio`` present, or ``TPU_ACCELERATOR_TYPE``
   set without ``TPU_NAME``) through ``TPUClusterResolver(tpu="local")``, else through
   ``TPUClusterResolver(tpu=$TPU_NAME)`` when ``TPU_NAME`` is set. The TPU system is
   initialized once per process (``initialize_tpu_system`` wipes the TPU's memory, so a
   second call would destroy every model already placed there); the strategy is cached.
2. a GPU that TensorFlow can see (``tf.config.list_logical_devices("GPU")``);
3. the CPU.

Each device that was skipped leaves a line in ``DeviceChoice.reasons``. The TPU steps
(resolver, connect, initialize, strategy) are injectable so that the selection logic is
testable without a TPU; left out, they are the real TensorFlow calls. Only APIs present in
TensorFlow 2.20 are used.
"""

from __future__ import annotations

import glob
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from tpuckpt_viz.errors import UserError, first_line
from tpuckpt_viz.tfcompat import tf

KINDS = ("auto", "tpu", "gpu", "cpu")

CPU_NAME = "/device:CPU:0"
GPU_NAME = "/device:GPU:0"
TPU_NAME = "/device:TPU:0"


@dataclass
class DeviceChoice:
    """The device inference runs on, and why those before it (TPU -> GPU -> CPU) were not."""

    kind: str  # "tpu" | "gpu" | "cpu"
    name: str  # e.g. "/device:CPU:0"
    strategy: Any = None  # TPUStrategy for a TPU, the default strategy otherwise
    reasons: list[str] = field(default_factory=list)


# target -> ("ok", strategy, device name) | ("error", message). One entry per TPU target and
# resolver factory: a TPU system is initialized once per process, and a TPU that failed to
# come up is not retried on every page refresh.
_TPU_CACHE: dict[tuple, tuple] = {}
_TPU_LOCK = threading.Lock()


def _reset_tpu_cache() -> None:
    """Forget TPU results (tests only: a real TPU system must not be initialized twice)."""
    with _TPU_LOCK:
        _TPU_CACHE.clear()


def _tpu_device_files() -> bool:
    """TPU chips attached to this machine: /dev/accel* (v2-v4) or /dev/vfio (v5e and later)."""
    return bool(glob.glob("/dev/accel*")) or os.path.exists("/dev/vfio")


def on_tpu_vm() -> bool:
    """Whether this machine looks like a Cloud TPU VM (TPU chips attached locally)."""
    if _tpu_device_files():
        return True
    return bool(os.environ.get("TPU_ACCELERATOR_TYPE")) and not os.environ.get("TPU_NAME")


def tpu_target() -> str | None:
    """The TPUClusterResolver ``tpu`` argument: "local" on a TPU VM, else $TPU_NAME, else None."""
    if on_tpu_vm():
        return "local"
    return os.environ.get("TPU_NAME") or None


def _real_resolver(target: str):
    return tf().distribute.cluster_resolver.TPUClusterResolver(tpu=target)


def _real_connect(resolver) -> None:
    # A no-op for tpu="local" (TensorFlow returns early for a local master).
    tf().config.experimental_connect_to_cluster(resolver)


def _real_initialize(resolver) -> None:
    tf().tpu.experimental.initialize_tpu_system(resolver)


def _real_strategy(resolver):
    return tf().distribute.TPUStrategy(resolver)


def _tpu_device_name() -> str:
    try:
        tpus = tf().config.list_logical_devices("TPU")
    except Exception:  # noqa: BLE001 - a name is all we want here
        tpus = []
    return tpus[0].name if tpus else TPU_NAME


def _try_tpu(target: str, resolver_factory, connect, initialize, strategy_factory) -> tuple:
    """("ok", strategy, name) or ("error", reason), cached per (target, factory) per process."""
    key = (target, resolver_factory or _real_resolver)
    with _TPU_LOCK:  # held while initializing: two sessions must not initialize at once
        cached = _TPU_CACHE.get(key)
        if cached is not None:
            return cached
        step = "TPUClusterResolver"
        try:
            resolver = (resolver_factory or _real_resolver)(target)
            step = "connect_to_cluster"
            (connect or _real_connect)(resolver)
            step = "initialize_tpu_system"
            (initialize or _real_initialize)(resolver)
            step = "TPUStrategy"
            strategy = (strategy_factory or _real_strategy)(resolver)
            result = ("ok", strategy, _tpu_device_name())
        except Exception as exc:  # noqa: BLE001 - any failure means "no usable TPU"
            result = ("error", f"no TPU found ({step}: {first_line(exc, 200)})")
        _TPU_CACHE[key] = result
        return result


def _gpus(gpu_lister: Callable[[], list] | None) -> list:
    try:
        if gpu_lister is not None:
            return list(gpu_lister())
        return tf().config.list_logical_devices("GPU")
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU"
        return []


def choose_device(requested: str = "auto", resolver_factory: Callable[[str], Any] | None = None,
                  *, connect: Callable[[Any], None] | None = None,
                  initialize: Callable[[Any], None] | None = None,
                  strategy_factory: Callable[[Any], Any] | None = None,
                  gpu_lister: Callable[[], list] | None = None) -> DeviceChoice:
    """Pick the device to run on: ``requested`` is "auto", "tpu", "gpu" or "cpu".

    "auto" goes TPU -> GPU -> CPU and records in ``reasons`` why each skipped device was
    skipped. A forced device that is not there raises :class:`UserError`.

    The keyword hooks replace the real TensorFlow calls (for tests): ``resolver_factory(target)``
    returns a cluster resolver (when given, the TPU is tried even where this machine does not
    look like a TPU VM, with target $TPU_NAME or "local"), ``connect(resolver)``,
    ``initialize(resolver)``, ``strategy_factory(resolver)`` and ``gpu_lister()``.
    """
    kind = (requested or "auto").strip().lower()
    if kind not in KINDS:
        raise UserError(f"unknown device {requested!r}: use one of {', '.join(KINDS)}")
    reasons: list[str] = []
    default_strategy = tf().distribute.get_strategy

    if kind in ("auto", "tpu"):
        target = tpu_target()
        if target is None and (resolver_factory is not None or kind == "tpu"):
            target = os.environ.get("TPU_NAME") or "local"
        if target is None:
            reasons.append("TPU: none on this machine (no /dev/accel* or /dev/vfio, "
                           "TPU_NAME not set)")
        else:
            result = _try_tpu(target, resolver_factory, connect, initialize, strategy_factory)
            if result[0] == "ok":
                return DeviceChoice("tpu", result[2], result[1], reasons)
            if kind == "tpu":
                raise UserError(f"TPU {target!r}: {result[1]}: use --device auto or cpu")
            reasons.append(f"TPU: {result[1]}")
    else:
        reasons.append(f"TPU: not tried (--device {kind})")

    if kind in ("auto", "gpu"):
        gpus = _gpus(gpu_lister)
        if gpus:
            name = getattr(gpus[0], "name", None) or GPU_NAME
            return DeviceChoice("gpu", name, default_strategy(), reasons)
        if kind == "gpu":
            raise UserError("no GPU visible to TensorFlow: use --device auto or cpu")
        reasons.append("GPU: none visible to TensorFlow")
    else:
        reasons.append(f"GPU: not tried (--device {kind})")

    return DeviceChoice("cpu", CPU_NAME, default_strategy(), reasons)


def checkpoint_options(choice: DeviceChoice):
    """``CheckpointOptions`` for restoring on ``choice``: on a TPU, read files on the host.

    A TPU worker cannot open the host's local files; ``experimental_io_device`` makes the
    restore read them through the local job. ``None`` (the default options) elsewhere.
    """
    if choice.kind == "tpu":
        return tf().train.CheckpointOptions(experimental_io_device="/job:localhost")
    return None
