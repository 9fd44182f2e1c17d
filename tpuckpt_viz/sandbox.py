"""Run TensorFlow on a user's file in a worker process, so that nothing the file does can take
down the server or the command line.

TensorFlow's C++ code ends the whole process on a failed ``CHECK`` (SIGABRT, exit 134), and a
hostile file can also segfault it or make it allocate without end; a Python ``try`` catches none
of that. Everything that hands a user's file to TensorFlow (its ``CheckpointReader`` for what our
own reader does not handle, SavedModel loading, inference, restoring into a builder) runs here,
in a worker: when the worker dies, the caller gets one :class:`UserError` line, made from the
``Check failed`` line that TensorFlow wrote to the worker's stderr, and the next request starts a
fresh worker.

Why a plain ``subprocess`` with a pickle protocol over pipes, not ``multiprocessing``: a spawn
context re-imports the parent's ``__main__`` (Streamlit's CLI in the dashboard), and its
managers hide the child's exit status and stderr, which are exactly what we need to report an
abort. Here the worker is ``python -m tpuckpt_viz.sandbox``; requests and replies are pickles
with a length prefix on two private pipes (the worker's original stdin and stdout; TensorFlow
printing to fd 1 goes to stderr instead and cannot corrupt them), and stderr is read by a thread
that keeps its last lines.

- Limits: the worker's data segment is capped (``RLIMIT_DATA``, setting ``worker_mb``; unlike
  ``RLIMIT_AS`` it leaves the large address-space reservations of TensorFlow and CUDA alone),
  and each request has a time limit (``worker_timeout_s``) after which the worker is killed.
- Dies with its parent: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, plus a watchdog thread
  that exits when a pipe held only by the parent reaches EOF (any OS, and the moment between
  fork and prctl). PDEATHSIG fires when the *thread* that forked exits, and Streamlit runs
  scripts in short-lived threads: workers are therefore started from one long-lived thread.
- Warm: a worker serves request after request, so a loaded model stays loaded
  (:mod:`tpuckpt_viz.inference.api` caches models inside it); :func:`start` launches one ahead
  of time (the Infer page does when it opens) so that a Run does not pay TensorFlow's import.

A request names a function ``"package.module:function"`` of this package and its arguments;
the worker also takes the caller's ``TPUCKPT_*`` settings, ``sys.path`` and working folder with
each request, so that it behaves as the caller would have in process.
"""

from __future__ import annotations

import atexit
import collections
import importlib
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from tpuckpt_viz import config
from tpuckpt_viz.errors import UserError, first_line

IN_WORKER_ENV = "TPUCKPT_IN_WORKER"
_PARENT_ENV = "TPUCKPT_WORKER_PARENT"
_LIFE_ENV = "TPUCKPT_WORKER_LIFE_FD"
_HEADER = struct.Struct("<Q")
_STDERR_LINES = 200
# TensorFlow's fatal log lines: "F0000 00:00:1700000000.1 12 tensor_shape.cc:201] Check failed:
# ..." (absl) or "2025-01-01 ... F tensorflow/core/...cc:12] ..." (older logging).
_FATAL = re.compile(r"^(?:F\d{4} \S+\s+\d+ |\S+ \S+: F |.*\bF )?\S+\.(?:cc|h):\d+\] (.+)$")
_OTHER_FATAL = re.compile(r"(Check failed: .+|terminate called .+|what\(\): .+|"
                          r"Fatal Python error: .+|std::bad_alloc.*)")


def in_worker() -> bool:
    """Whether this process is a worker (then work runs here, in process)."""
    return os.environ.get(IN_WORKER_ENV) == "1"


class WorkerDied(UserError):
    """The worker ended (abort, segfault, memory or time limit) while serving a request."""


# --------------------------------------------------------------------------------------------
# Parent side

_SPAWNER: "concurrent.futures.ThreadPoolExecutor | None" = None
_SPAWNER_LOCK = threading.Lock()


def _spawn(argv, env, life_r):
    # In the long-lived spawner thread: PR_SET_PDEATHSIG follows the thread that forked.
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, pass_fds=(life_r,),
                            close_fds=True, start_new_session=False)


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            import concurrent.futures  # only once a worker is needed

            _SPAWNER = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tpuckpt-worker-spawner")
        return _SPAWNER


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Worker:
    """One worker process, restarted when it dies. Requests are served one at a time."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()  # one request at a time
        self.proc: subprocess.Popen | None = None
        self.life_w: int | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self.stderr_thread: threading.Thread | None = None
        self.ready = False
        self.limit_mb = 0

    # -- lifecycle -------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the worker if it is not running (returns at once; it imports TensorFlow)."""
        if self.alive():
            return
        self.stop()
        life_r, life_w = os.pipe()
        os.set_inheritable(life_r, True)
        env = dict(os.environ)
        env[IN_WORKER_ENV] = "1"
        env[_PARENT_ENV] = str(os.getpid())
        env[_LIFE_ENV] = str(life_r)
        env["PYTHONPATH"] = os.pathsep.join(
            [_package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.limit_mb = config.get_int("worker_mb")
        argv = [sys.executable, "-m", "tpuckpt_viz.sandbox", self.name]
        try:
            self.proc = _spawner().submit(_spawn, argv, env, life_r).result()
        finally:
            os.close(life_r)
        self.life_w = life_w
        self.ready = False
        self.stderr_tail = collections.deque(maxlen=_STDERR_LINES)
        self.stderr_thread = threading.Thread(target=self._drain, args=(self.proc,
                                                                       self.stderr_tail),
                                              name=f"tpuckpt-worker-{self.name}-stderr",
                                              daemon=True)
        self.stderr_thread.start()

    @staticmethod
    def _drain(proc, tail) -> None:
        for raw in iter(proc.stderr.readline, b""):
            tail.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def stop(self) -> None:
        """End the worker (a loaded model is forgotten)."""
        proc, self.proc = self.proc, None
        if self.life_w is not None:
            try:
                os.close(self.life_w)
            except OSError:
                pass
            self.life_w = None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    # -- requests --------------------------------------------------------------------------
    def call(self, func: str, args: tuple = (), kwargs: dict | None = None, *,
             what: str = "running TensorFlow", timeout: float | None = None) -> Any:
        """``func(*args, **kwargs)`` in the worker; its UserError is raised here as it was."""
        limit = float(timeout if timeout is not None else config.get_int("worker_timeout_s"))
        deadline = time.monotonic() + limit
        if not self.lock.acquire(timeout=limit):
            raise UserError(f"the TensorFlow worker was busy for {limit:.0f} s with another "
                            "request: try again")
        try:
            self.start()
            request = ("call", func, args, kwargs or {}, _settings(), list(sys.path),
                       os.getcwd())
            try:
                self._send(request)
                if not self.ready:
                    self._receive(deadline, what, limit)  # ("ready",)
                    self.ready = True
                reply = self._receive(deadline, what, limit)
            except BrokenPipeError:
                raise self._died(what, None) from None
        finally:
            self.lock.release()
        status = reply[0]
        if status == "ok":
            return reply[1]
        raise UserError(reply[1])

    def _send(self, message) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)
        self.proc.stdin.flush()

    def _read_exact(self, n: int, deadline: float, what: str, limit: float) -> bytes:
        fd = self.proc.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise WorkerDied(f"TensorFlow took longer than {limit:.0f} s {what}: stopped "
                                 "(time limit: the worker_timeout_s setting, "
                                 "TPUCKPT_WORKER_TIMEOUT_S)")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise self._died(what, None)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _receive(self, deadline: float, what: str, limit: float):
        (size,) = _HEADER.unpack(self._read_exact(_HEADER.size, deadline, what, limit))
        return pickle.loads(self._read_exact(size, deadline, what, limit))

    def _died(self, what: str, _) -> WorkerDied:
        proc = self.proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        if self.stderr_thread is not None:
            self.stderr_thread.join(timeout=5)
        lines = list(self.stderr_tail)
        self.stop()
        return WorkerDied(death_message(code, lines, what, self.limit_mb))


def death_message(code: int | None, stderr_lines: list[str], what: str, limit_mb: int) -> str:
    """One line saying how the worker ended while ``what``, from its exit status and stderr."""
    if code is not None and code < 0:
        try:
            how = signal.Signals(-code).name
        except ValueError:
            how = f"signal {-code}"
    else:
        how = f"exit status {code}"
    cause = fatal_line(stderr_lines)
    memory = any(("bad_alloc" in ln or "MemoryError" in ln or "Cannot allocate memory" in ln
                  or "out of memory" in ln.lower()) for ln in stderr_lines)
    if memory or (code == -signal.SIGKILL and not cause):
        hint = (f"it ran out of memory (limit {limit_mb} MB: the worker_mb setting, "
                "TPUCKPT_WORKER_MB)" if limit_mb else "it ran out of memory")
        cause = f"{hint}{': ' + cause if cause else ''}"
    text = f"TensorFlow crashed {what} ({how})"
    if cause:
        text += f": {cause}"
    return text + ": the file is malformed or hostile (only the worker process ended)"


def fatal_line(lines: list[str]) -> str:
    """The text of TensorFlow's fatal ``CHECK`` line (or another fatal line) in ``lines``."""
    for line in reversed(lines):
        match = _OTHER_FATAL.search(line)
        if match and "Check failed" in match.group(1):
            return match.group(1).strip()[:300]
    for line in reversed(lines):
        match = _FATAL.match(line.strip())
        if match and line.lstrip().startswith("F"):
            return match.group(1).strip()[:300]
    for line in reversed(lines):
        match = _OTHER_FATAL.search(line)
        if match:
            return match.group(1).strip()[:300]
    return ""


def _settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("TPUCKPT_")
            and k not in (IN_WORKER_ENV, _PARENT_ENV, _LIFE_ENV)}


_WORKERS: dict[str, Worker] = {}
_WORKERS_LOCK = threading.Lock()


def worker(name: str = "infer") -> Worker:
    """The worker ``name`` ("infer": models; "checkpoint": TensorFlow's checkpoint reader)."""
    with _WORKERS_LOCK:
        if name not in _WORKERS:
            _WORKERS[name] = Worker(name)
        return _WORKERS[name]


def start(name: str = "infer") -> None:
    """Start worker ``name`` ahead of its first request (the Infer page does, on opening)."""
    w = worker(name)
    if w.lock.acquire(blocking=False):
        try:
            w.start()
        finally:
            w.lock.release()


def call(func: str, *args, worker_name: str = "infer", what: str = "running TensorFlow",
         timeout: float | None = None, **kwargs):
    """``func(*args, **kwargs)`` in worker ``worker_name`` (in process inside a worker)."""
    if in_worker():
        return resolve(func)(*args, **kwargs)
    return worker(worker_name).call(func, args, kwargs, what=what, timeout=timeout)


def stop_all() -> None:
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values())
    for w in workers:
        w.stop()


atexit.register(stop_all)


def resolve(func: str):
    module, _, name = func.partition(":")
    if not module.startswith("tpuckpt_viz.") or not name:
        raise ValueError(f"not a tpuckpt_viz function: {func}")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------------
# TensorFlow's checkpoint reader, in the worker

class _DType:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"tf.{self.name}"


class CheckpointReader:
    """``tf.compat.v1.train.NewCheckpointReader(prefix)``, run in the "checkpoint" worker.

    The same methods the tool uses (``get_variable_to_shape_map``,
    ``get_variable_to_dtype_map``, ``has_tensor``, ``get_tensor``); errors are UserErrors with
    TensorFlow's first line, and a crash of TensorFlow's reader is one such line too.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        listing = call("tpuckpt_viz.sandbox:reader_listing", prefix, worker_name="checkpoint",
                       what=f"opening checkpoint {prefix}")
        self._shapes = {k: list(s) for k, (s, _) in listing.items()}
        self._dtypes = {k: _DType(d) for k, (_, d) in listing.items()}

    def get_variable_to_shape_map(self) -> dict:
        return dict(self._shapes)

    def get_variable_to_dtype_map(self) -> dict:
        return dict(self._dtypes)

    def has_tensor(self, key) -> bool:
        key = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
        return key in self._shapes

    def get_tensor(self, key):
        return call("tpuckpt_viz.sandbox:reader_tensor", self.prefix, key,
                    worker_name="checkpoint", what=f"reading {key!r} from {self.prefix}")


def is_tensorflow_checkpoint(path: str) -> bool:
    """Whether TensorFlow's reader opens ``path`` (a legacy V1 TensorSlice file); in the worker."""
    try:
        return bool(call("tpuckpt_viz.sandbox:reader_opens", path, worker_name="checkpoint",
                         what=f"opening {path}"))
    except UserError:
        return False


_READERS: collections.OrderedDict = collections.OrderedDict()


def _reader(prefix: str):
    from tpuckpt_viz.tfcompat import tf

    reader = _READERS.get(prefix)
    if reader is None:
        try:
            reader = tf().compat.v1.train.NewCheckpointReader(prefix)
        except Exception as exc:  # noqa: BLE001 - TensorFlow's own words
            raise UserError(first_line(exc)) from None
        _READERS[prefix] = reader
        while len(_READERS) > 8:
            _READERS.popitem(last=False)
    return reader


def reader_listing(prefix: str) -> dict[str, tuple[list[int], str]]:
    """(worker side) key -> (shape, dtype name) from TensorFlow's reader."""
    reader = _reader(prefix)
    try:
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as exc:  # noqa: BLE001
        raise UserError(first_line(exc)) from None
    return {k: ([int(d) for d in shapes[k]], dtypes[k].name) for k in shapes}


def reader_tensor(prefix: str, key):
    """(worker side) one tensor from TensorFlow's reader."""
    try:
        return _reader(prefix).get_tensor(key)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(first_line(exc)) from None


def reader_opens(path: str) -> bool:
    """(worker side) whether TensorFlow's reader opens ``path``."""
    try:
        _reader(path)
        return True
    except UserError:
        return False


# --------------------------------------------------------------------------------------------
# Worker side

def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)
    life = int(os.environ.get(_LIFE_ENV, "-1"))
    if life >= 0:
        def watch():
            try:
                while os.read(life, 4096):
                    pass
            except OSError:
                pass
            os._exit(0)  # EOF: the parent is gone

        threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _limit_memory(mb: int) -> None:
    if mb <= 0:
        return
    import resource

    limit = mb << 20
    for which in ("RLIMIT_DATA",):
        res = getattr(resource, which, None)
        if res is None:
            continue
        try:
            _, hard = resource.getrlimit(res)
            resource.setrlimit(res, (limit if hard == resource.RLIM_INFINITY
                                     else min(limit, hard), hard))
        except (ValueError, OSError):
            pass


def _recv(stream):
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def _reply(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _apply(settings: dict, path: list, cwd: str) -> None:
    for key in [k for k in os.environ if k.startswith("TPUCKPT_")]:
        if key not in settings and key not in (IN_WORKER_ENV, _PARENT_ENV, _LIFE_ENV):
            del os.environ[key]
    os.environ.update(settings)
    for entry in reversed(path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        os.chdir(cwd)
    except OSError:
        pass


def serve() -> None:
    """The worker's main loop: requests on the original stdin, replies on the original stdout."""
    _die_with_parent(int(os.environ.get(_PARENT_ENV, "0")))
    _limit_memory(config.get_int("worker_mb"))
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # anything printed (TensorFlow's PrintV2, a builder's print) goes to stderr
    sys.stdout = sys.stderr
    from tpuckpt_viz.tfcompat import tf

    tf()  # the import is what makes a worker slow to start: do it before the first request
    _reply(replies, ("ready",))
    while True:
        message = _recv(requests)
        if message is None:
            os._exit(0)
        _, func, args, kwargs, settings, path, cwd = message
        _apply(settings, path, cwd)
        try:
            reply = ("ok", resolve(func)(*args, **kwargs))
        except UserError as exc:
            reply = ("error", str(exc))
        except MemoryError:
            reply = ("error", "TensorFlow ran out of memory (limit "
                     f"{config.get_int('worker_mb')} MB: the worker_mb setting, "
                     "TPUCKPT_WORKER_MB)")
        except RecursionError:
            reply = ("error", "the input is nested too deeply")
        except Exception as exc:  # noqa: BLE001 - one line back to the caller
            reply = ("error", f"{type(exc).__name__}: {first_line(exc)}")
        try:
            _reply(replies, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _reply(replies, ("error", f"cannot send the result back: {first_line(exc)}"))


if __name__ == "__main__":
    serve()
