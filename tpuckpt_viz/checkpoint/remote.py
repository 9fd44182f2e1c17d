"""Remote filesystems through fsspec: ``gs://`` with gcsfs, and any other fsspec URL.

Why fsspec/gcsfs and not ``tf.io.gfile`` for the tool's own reads: TensorFlow's GCS reader
fetches a 64 MB block from wherever a file is opened (its read-ahead) and retries a dead
endpoint for minutes; gcsfs asks for exactly the byte range wanted, runs many ranges at once
on its event loop, and lets us bound retries and timeouts. TensorFlow's ``gs://`` support is
still what loads a SavedModel for inference (see :func:`tf_gcs_defaults`).

Every failure becomes a :class:`RemoteError` (a ``UserError``) of one of five kinds, each
with its own one-line message: ``network`` (no connection, DNS failure, timeout),
``credentials`` (401, no usable credentials), ``denied`` (403), ``missing`` (404) and
``other``. Retries are bounded (:data:`ATTEMPTS`, :data:`RETRY_BUDGET_S`) and every request
has connect and read timeouts, so each of these errors arrives within seconds.

Which URLs come here (:func:`handles`): ``gs://`` and ``gcs://`` always; another scheme when
fsspec knows it and its package is installed (``s3://`` with s3fs, ``memory://``, ...).
``ram://`` (TensorFlow's in-memory filesystem) and unknown schemes stay with ``tf.io.gfile``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from tpuckpt_viz.errors import UserError, first_line

# gcsfs 2026.10 probes every bucket's type over gRPC (60 s where gRPC cannot get through)
# unless this is off; it is read when gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# Looking for credentials, google-auth asks the GCE metadata server (off this machine unless
# it is a Cloud VM) 3 times with a 3 s timeout each; on a VM it answers in milliseconds.
os.environ.setdefault("GCE_METADATA_TIMEOUT", "1")

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0  # between two reads of one response, not for the whole response
ATTEMPTS = 3
RETRY_BUDGET_S = 4.0  # no retry starts after this long since the first attempt
LISTING_TTL_S = 10.0
_GFILE_ONLY = {"ram", "file", "local"}
_lock = threading.Lock()
_filesystems: dict[str, object] = {}


class RemoteError(UserError):
    """A remote read that failed; ``kind`` is network, credentials, denied, missing or other."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def scheme(path: str) -> str:
    return path.split("://", 1)[0].lower() if "://" in path else ""


def handles(path: str) -> bool:
    """Whether ``path`` is read through fsspec here (see the module docstring)."""
    proto = scheme(str(path))
    if not proto or proto in _GFILE_ONLY:
        return False
    if proto in ("gs", "gcs"):
        return True
    try:
        from fsspec.registry import get_filesystem_class

        get_filesystem_class(proto)
        return True
    except (ImportError, ValueError):
        return False


def _gcs_class():
    import aiohttp
    from gcsfs.core import GCSFileSystem
    from gcsfs.retry import is_retriable

    raw = GCSFileSystem._request.__wrapped__  # the request without gcsfs's 6 slow retries

    class BoundedGCSFileSystem(GCSFileSystem):
        """gcsfs with bounded retries (gcsfs itself sleeps up to ~30 s over 6 attempts)."""

        async def _request(self, method, path, *args, **kwargs):
            start = time.monotonic()
            for attempt in range(ATTEMPTS):
                try:
                    return await raw(self, method, path, *args, **kwargs)
                except Exception as e:
                    delay = 0.2 * 3 ** attempt
                    if (attempt + 1 == ATTEMPTS or not is_retriable(e)
                            or _kind(e) == "credentials"
                            or time.monotonic() - start + delay > RETRY_BUDGET_S):
                        raise
                    import asyncio  # here: gcsfs has imported it; a listing does not

                    await asyncio.sleep(delay)

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                    sock_read=READ_TIMEOUT_S)
    return BoundedGCSFileSystem, {"requests_timeout": timeout}


def _gcs_filesystem():
    """gcsfs with Application Default Credentials, else anonymous (public buckets).

    gcsfs's own search (token=None) also tries the GCE metadata server directly after
    google-auth has already found no VM there: 5 attempts with backoff, ~17 s off Google
    Cloud before even the first request. google-auth's check covers the VM case.
    """
    from google.auth.exceptions import DefaultCredentialsError

    cls, options = _gcs_class()
    try:
        return cls(token="google_default", listings_expiry_time=LISTING_TTL_S, **options)
    except (DefaultCredentialsError, ValueError):
        return cls(token="anon", listings_expiry_time=LISTING_TTL_S, **options)


def filesystem(path: str):
    """The fsspec filesystem for ``path``'s scheme (one instance per scheme and process)."""
    proto = scheme(path)
    proto = "gs" if proto == "gcs" else proto
    with _lock:
        fs = _filesystems.get(proto)
        if fs is None:
            try:
                if proto == "gs":
                    fs = _gcs_filesystem()
                else:
                    import fsspec

                    fs = fsspec.filesystem(proto, listings_expiry_time=LISTING_TTL_S)
            except Exception as e:
                raise error(e, path) from None
            _filesystems[proto] = fs
    return fs


def _kind(exc: BaseException) -> str:
    """Which of the five kinds of failure ``exc`` is (see the module docstring)."""
    import socket

    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    text = str(exc)
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or code == 404:
        return "missing"
    if code == 401 or name in ("DefaultCredentialsError", "RefreshError"):
        return "credentials"
    if code == 403 or text.startswith("Forbidden"):
        return "denied"
    # asyncio only when loaded (by gcsfs): importing it costs a CLI listing 50 ms.
    asyncio = sys.modules.get("asyncio")
    timeouts = (asyncio.TimeoutError,) if asyncio else ()
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror) + timeouts):
        return "network"
    if type(exc).__module__.startswith("aiohttp") and not isinstance(code, int):
        return "network"  # ClientConnectorError, ServerDisconnectedError, timeouts
    if name in ("FSTimeoutError", "ProxyError", "ConnectionError", "ConnectTimeout",
                "ReadTimeout"):
        return "network"
    return "other"


def error(exc: BaseException, path: str) -> RemoteError:
    """The one-line error for a failed remote call on ``path``."""
    if isinstance(exc, RemoteError):
        return exc
    kind = _kind(exc)
    where = path.split("://", 1)[1].split("/", 1)[0] if "://" in path else path
    if kind == "missing":
        msg = f"{path} does not exist: check the bucket and the path"
    elif kind == "network":
        msg = (f"cannot reach the storage service for {path} ({first_line(exc, 120)}): check "
               "the network connection (and any proxy); gave up after "
               f"{ATTEMPTS} attempts")
    elif kind == "credentials":
        msg = (f"{path} needs credentials and none were found (the request was refused as "
               "unauthenticated): run 'gcloud auth application-default login' or set "
               "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file")
    elif kind == "denied":
        msg = (f"access to {path} is denied: the account in use may not read bucket {where} "
               "(it needs storage.objects.get and storage.objects.list, e.g. the role "
               "roles/storage.objectViewer); use another account or ask the bucket's owner")
    else:
        msg = f"cannot read {path}: {first_line(exc)}"
    return RemoteError(msg, kind)


def _call(path: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RemoteError:
        raise
    except Exception as e:  # gcsfs, aiohttp, google-auth: classified into one line
        raise error(e, path) from None


def info(path: str) -> dict:
    """fsspec's ``info`` (``type``, ``size``, ...); a missing path raises kind ``missing``.

    Answered from a listing of the parent folder (one request, then cached for
    :data:`LISTING_TTL_S`): resolving a PATH asks about several names in one folder, and
    gcsfs's own ``info`` costs two requests per name.
    """
    fs = filesystem(path)
    name = fs._strip_protocol(path).rstrip("/")
    parent = name.rsplit("/", 1)[0] if "/" in name else ""
    if not parent:
        return _call(path, fs.info, path)
    for entry in _call(path, fs.ls, parent, detail=True):
        if entry["name"].rstrip("/") == name:
            return entry
    raise RemoteError(f"{path} does not exist: check the bucket and the path", "missing")


def exists(path: str) -> bool:
    """Whether ``path`` is a file or folder; failures other than "missing" raise."""
    try:
        info(path)
        return True
    except RemoteError as e:
        if e.kind == "missing":
            return False
        raise


def isdir(path: str) -> bool:
    try:
        return info(path)["type"] == "directory"
    except RemoteError as e:
        if e.kind == "missing":
            return False
        raise


def listdir(path: str) -> list[str]:
    """Base names of the entries directly in folder ``path`` (sorted)."""
    fs = filesystem(path)
    entries = _call(path, fs.ls, path.rstrip("/"), detail=False)
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""})


def mtime_ns(path: str) -> int:
    """Modification time of a file in ns (0 when the filesystem gives none)."""
    meta = info(path)
    for key in ("updated", "mtime", "LastModified", "last_modified", "created"):
        value = meta.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9)
        try:
            from datetime import datetime

            return int(datetime.fromisoformat(str(value).replace("Z", "+00:00"))
                       .timestamp() * 1e9)
        except ValueError:
            return 0
    return 0


def read_range(path: str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes of ``path`` at ``offset``: one ranged request."""
    fs = filesystem(path)
    if length <= 0:
        return b""
    return _call(path, fs.cat_file, path, start=offset, end=offset + length)


class SpillCache:
    """Bytes already fetched from remote files, kept in temporary files on local disk.

    ``steps`` reads every checkpoint twice (as the newer side of one step, then as the older
    side of the next), and the pages read a tensor again on each rerun: without this, a run
    costs twice its size in downloads. Keyed by (path, size, modification time), so a file
    rewritten in the bucket is fetched again. Ranges of one file merge as they arrive; a read
    is answered from disk when one cached range covers it. Bounded: the least recently used
    files are dropped past :attr:`budget` bytes (a quarter of the free temporary space, at
    most 16 GiB); the temporary files are deleted when dropped or when the process ends.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._files: dict = {}  # key -> [tempfile, intervals [(start, end)], bytes]
        self.budget: int | None = None
        self.used = 0

    def clear(self) -> None:
        with self._lock:
            for item in self._files.values():
                item[0].close()
            self._files.clear()
            self.used = 0

    def _budget(self) -> int:
        if self.budget is None:
            import shutil
            import tempfile

            free = shutil.disk_usage(tempfile.gettempdir()).free
            self.budget = min(16 << 30, free // 4)
        return self.budget

    def get(self, key, offset: int, length: int) -> bytes | None:
        import bisect

        with self._lock:
            item = self._files.get(key)
            if item is None:
                return None
            self._files[key] = self._files.pop(key)  # most recently used last
            intervals = item[1]
            i = bisect.bisect_right(intervals, (offset, float("inf"))) - 1
            if i < 0 or intervals[i][1] < offset + length:
                return None
            return os.pread(item[0].fileno(), length, offset)

    def put(self, key, offset: int, data: bytes) -> None:
        import tempfile

        if not data or len(data) > self._budget():
            return
        with self._lock:
            item = self._files.get(key)
            if item is None:
                item = self._files[key] = [tempfile.TemporaryFile(prefix="tpuckpt-"), [], 0]
            os.pwrite(item[0].fileno(), data, offset)
            start, end = offset, offset + len(data)
            kept = []
            for a, b in item[1]:  # merge with every range it touches
                if b < start or a > end:
                    kept.append((a, b))
                else:
                    start, end = min(a, start), max(b, end)
            kept.append((start, end))
            kept.sort()
            size = sum(b - a for a, b in kept)
            self.used += size - item[2]
            item[1], item[2] = kept, size
            while self.used > self._budget() and len(self._files) > 1:
                old = next(iter(self._files))
                if old == key:
                    break
                dropped = self._files.pop(old)
                dropped[0].close()
                self.used -= dropped[2]


spill = SpillCache()


def read_cached(path: str, version, offset: int, length: int) -> bytes:
    """:func:`read_range`, answered from :data:`spill` where it can be; ``version`` is what
    tells one content of ``path`` from another (its size and modification time)."""
    key = (path, version)
    data = spill.get(key, offset, length)
    if data is None:
        data = read_range(path, offset, length)
        spill.put(key, offset, data)
    return data


def read_ranges(path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Many ``(offset, length)`` ranges of one file, all requests in flight at once."""
    fs = filesystem(path)
    if not ranges:
        return []
    starts = [o for o, _ in ranges]
    ends = [o + n for o, n in ranges]
    out = _call(path, fs.cat_ranges, [path] * len(ranges), starts, ends, on_error="raise")
    return list(out)


def open_file(path: str):
    """A seekable binary file object (reads ahead in blocks of 4 MB: Keras/HDF5 files)."""
    fs = filesystem(path)
    return _call(path, fs.open, path, "rb", block_size=4 << 20)


def read_all(path: str) -> bytes:
    """The whole file in one request (a missing file raises kind ``missing``)."""
    fs = filesystem(path)
    return _call(path, fs.cat_file, path)


def find_runs(root: str, depth: int = 4) -> list[str]:
    """Folders under ``root`` (at most ``depth`` levels down) that hold checkpoints.

    One flat listing of the prefix (paged, 1000 names a request) instead of a walk of one
    request per folder; a folder counts when it holds a ``*.index`` file; a SavedModel's
    ``variables/`` folder is given as the SavedModel folder. Sorted, ``root`` itself first.
    """
    fs = filesystem(root)
    base = fs._strip_protocol(root).rstrip("/")
    names = _call(root, fs.find, base)
    runs = set()
    for name in names:
        if not name.endswith(".index") or "_temp" in name:
            continue
        folder = name.rsplit("/", 1)[0]
        if name.endswith("/variables/variables.index"):
            folder = folder[: -len("/variables")]
        rel = folder[len(base):].strip("/")
        if rel.count("/") + 1 > depth and rel:
            continue
        runs.add(root.rstrip("/") + ("/" + rel if rel else ""))
    return sorted(runs, key=lambda r: (r != root.rstrip("/"), r))


def tf_gcs_defaults() -> None:
    """Bounded retries and timeouts for TensorFlow's own GCS filesystem (used for SavedModel
    inference): its defaults retry a dead endpoint for minutes. Set before TensorFlow first
    touches ``gs://``; values already in the environment win."""
    for key, value in {
        "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "200000",
        "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000",
        "GCS_REQUEST_CONNECTION_TIMEOUT_SECS": str(int(CONNECT_TIMEOUT_S)),
        "GCS_REQUEST_IDLE_TIMEOUT_SECS": str(int(READ_TIMEOUT_S) * 2),
        "GCS_METADATA_REQUEST_TIMEOUT_SECS": str(int(READ_TIMEOUT_S)),
        # Ask for what is read (8 MB blocks), not TensorFlow's 64 MB read-ahead.
        "GCS_READ_CACHE_BLOCK_SIZE_MB": "8",
    }.items():
        os.environ.setdefault(key, value)
