"""TPU -> GPU -> CPU selection, with fake TPU resolvers (no TPU needed) and the real GPU list."""

from __future__ import annotations

import threading
import time

import pytest

from tpuckpt_viz.errors import UserError
from tpuckpt_viz.inference import devices
from tpuckpt_viz.inference.devices import DeviceChoice, checkpoint_options, choose_device


@pytest.fixture(autouse=True)
def clean_tpu_cache():
    devices._reset_tpu_cache()
    yield
    devices._reset_tpu_cache()


@pytest.fixture
def no_tpu_env(monkeypatch):
    """This machine does not look like a TPU VM and names no TPU."""
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
    monkeypatch.setattr(devices, "_tpu_device_files", lambda: False)


def failing_resolver(target):
    raise ValueError(f"Could not find any TPU named {target!r}\nsecond line of detail")


class FakeTPU:
    """Records the TPU steps; stands in for resolver, connect, initialize and strategy."""

    def __init__(self):
        self.calls: list[str] = []
        self.strategy = object()

    def resolver(self, target):
        self.calls.append(f"resolve:{target}")
        return ("resolver", target)

    def connect(self, resolver):
        self.calls.append("connect")

    def initialize(self, resolver):
        time.sleep(0.05)  # widen the window for the thread test
        self.calls.append("initialize")

    def make_strategy(self, resolver):
        self.calls.append("strategy")
        return self.strategy

    def choose(self, requested="auto", **kw):
        return choose_device(requested, self.resolver, connect=self.connect,
                             initialize=self.initialize, strategy_factory=self.make_strategy, **kw)


def test_failing_resolver_falls_back_to_cpu_with_reason(no_tpu_env):
    choice = choose_device("auto", failing_resolver, gpu_lister=lambda: [])
    assert choice.kind == "cpu" and choice.name == "/device:CPU:0"
    assert choice.strategy is not None  # the default strategy
    assert choice.reasons[0].startswith("TPU: no TPU found (TPUClusterResolver: Could not find")
    assert "second line" not in choice.reasons[0]
    assert choice.reasons[1] == "GPU: none visible to TensorFlow"


def test_failing_initialize_names_the_step(no_tpu_env):
    def bad_init(resolver):
        raise RuntimeError("No matching devices found for '/device:TPU_SYSTEM:0'")

    choice = choose_device("auto", lambda t: object(), connect=lambda r: None,
                           initialize=bad_init, gpu_lister=lambda: [])
    assert choice.kind == "cpu"
    assert "initialize_tpu_system: No matching devices" in choice.reasons[0]


def test_succeeding_fake_resolver_chooses_tpu(no_tpu_env, monkeypatch):
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    fake = FakeTPU()
    choice = fake.choose(gpu_lister=lambda: ["a GPU that must not be chosen"])
    assert choice.kind == "tpu"
    assert choice.name.endswith("TPU:0")
    assert choice.strategy is fake.strategy
    assert choice.reasons == []
    assert fake.calls == ["resolve:my-tpu", "connect", "initialize", "strategy"]
    assert checkpoint_options(choice).experimental_io_device == "/job:localhost"


def test_tpu_system_initialized_once_per_process(no_tpu_env):
    fake = FakeTPU()
    choices = []
    threads = [threading.Thread(target=lambda: choices.append(fake.choose())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    choices.append(fake.choose("tpu"))
    assert [c.kind for c in choices] == ["tpu"] * 5
    assert fake.calls.count("initialize") == 1
    assert fake.calls[0] == "resolve:local"  # no TPU_NAME: the local TPU


def test_failed_tpu_is_not_retried(no_tpu_env):
    calls = []

    def resolver(target):
        calls.append(target)
        raise ValueError("no TPU")

    for _ in range(3):
        assert choose_device("auto", resolver, gpu_lister=lambda: []).kind == "cpu"
    assert calls == ["local"]


def test_forced_gpu_without_gpu_is_a_user_error(no_tpu_env):
    with pytest.raises(UserError, match="no GPU visible to TensorFlow: use --device auto or cpu"):
        choose_device("gpu", gpu_lister=lambda: [])


def test_forced_tpu_without_tpu_is_a_user_error(no_tpu_env):
    with pytest.raises(UserError, match=r"no TPU found .*use --device auto or cpu"):
        choose_device("tpu", failing_resolver)


def test_gpu_is_chosen_when_listed(no_tpu_env):
    class Dev:
        name = "/device:GPU:0"

    choice = choose_device("auto", gpu_lister=lambda: [Dev()])
    assert (choice.kind, choice.name) == ("gpu", "/device:GPU:0")
    assert choice.reasons == ["TPU: none on this machine (no /dev/accel* or /dev/vfio, "
                              "TPU_NAME not set)"]
    assert checkpoint_options(choice) is None


def test_forced_cpu_skips_the_others(no_tpu_env):
    choice = choose_device("CPU")
    assert choice.kind == "cpu"
    assert choice.reasons == ["TPU: not tried (--device cpu)", "GPU: not tried (--device cpu)"]
    assert checkpoint_options(choice) is None


def test_unknown_device_is_a_user_error():
    with pytest.raises(UserError, match="unknown device 'npu'"):
        choose_device("npu")


def test_auto_on_this_machine_matches_tensorflow(no_tpu_env, tf):
    gpus = tf.config.list_logical_devices("GPU")
    choice = choose_device("auto")
    assert choice.kind == ("gpu" if gpus else "cpu")
    assert isinstance(choice, DeviceChoice)


@pytest.mark.parametrize("env, accel, vfio, expected", [
    ({}, [], False, None),
    ({"TPU_NAME": "grpc://10.0.0.2:8470"}, [], False, "grpc://10.0.0.2:8470"),
    ({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, [], False, "local"),
    ({}, ["/dev/accel0"], False, "local"),
    ({"TPU_NAME": "named"}, [], True, "local"),  # a TPU VM uses its local chips
])
def test_tpu_target_detection(monkeypatch, env, accel, vfio, expected):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(devices.glob, "glob",
                        lambda pattern: [a for a in accel if pattern == "/dev/accel*"])
    monkeypatch.setattr(devices.os.path, "exists", lambda path: vfio and path == "/dev/vfio")
    assert devices.tpu_target() == expected
