"""One table of settings: name, default, environment variable, flag, help, and what it takes.

Like datasette's settings: one table that the code, the command line and the docs all read.
``docs/reference.md`` and the README document every row (tests check both). Values come from
the environment; the commands named in a row's ``commands`` also take it as a flag (``serve``
turns its flags into these environment variables for the Streamlit process).

A malformed value is an error that names the setting and what it takes
(``TPUCKPT_PORT='abc' is not valid: it takes a whole number from 1 to 65535``), never a
silent default.

To add a setting, add one ``Setting`` row: its ``kind`` says how it is parsed and checked
(``text``, ``int``, ``bool``, ``choice``, ``paths``), and README.md's settings table gets one
line (tests/test_config.py and tests/test_docs.py fail until it does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tpuckpt_viz.errors import UserError

KINDS = ("text", "int", "bool", "choice", "paths")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One row of the settings table.

    ``kind``: ``text`` (any string), ``int`` (a whole number from ``minimum`` to ``maximum``),
    ``bool`` (1/0, true/false, yes/no, on/off; a bare flag sets it), ``choice`` (one of
    ``choices``), ``paths`` (a list separated by ``os.pathsep``; the flag repeats).
    ``commands``: the CLI commands that take ``flag``.
    """

    name: str
    default: str
    env: str
    flag: str
    help: str
    kind: str = "text"
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    commands: tuple[str, ...] = ("serve",)
    metavar: str = "VALUE"

    def takes(self) -> str:
        """What a valid value looks like, for error messages and the docs."""
        if self.kind == "int":
            if self.maximum is not None:
                return f"a whole number from {self.minimum} to {self.maximum}"
            return f"a whole number of at least {self.minimum}" if self.minimum is not None \
                else "a whole number"
        if self.kind == "bool":
            return "1 or 0 (also true/false, yes/no, on/off)"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "paths":
            return f"folders or gs:// URIs separated by {os.pathsep!r}"
        return "any text"

    def parse(self, value: str, source: str | None = None):
        """``value`` as this setting's type; a malformed one raises UserError naming it."""
        text = value.strip()
        if not text and not self.default and self.kind in ("int", "choice", "bool"):
            return None  # an optional setting left unset (its default is "none")

        def bad() -> UserError:
            where = source or f"{self.env}={value!r}"
            return UserError(f"{where} is not valid: it takes {self.takes()}")

        if self.kind == "int":
            try:
                number = int(text)
            except ValueError:
                raise bad() from None
            if (self.minimum is not None and number < self.minimum) or (
                    self.maximum is not None and number > self.maximum):
                raise bad()
            return number
        if self.kind == "bool":
            if text.lower() in TRUE:
                return True
            if text.lower() in FALSE:
                return False
            raise bad()
        if self.kind == "choice":
            if text.lower() not in self.choices:
                raise bad()
            return text.lower()
        if self.kind == "paths":
            return split_paths(value)
        return value


SETTINGS: tuple[Setting, ...] = (
    Setting("roots", "", "TPUCKPT_ROOTS", "--root",
            "Folders or gs://bucket/prefix URIs the dashboard may open, separated by os.pathsep "
            "(the flag repeats). Default: the folder the server was started in. The demo folder "
            "is always allowed. The CLI ignores it.", kind="paths", metavar="DIR"),
    Setting("address", "127.0.0.1", "TPUCKPT_ADDRESS", "--address",
            "Address the dashboard binds to. 0.0.0.0 exposes every allowed checkpoint and the "
            "inference page to the whole network.", metavar="ADDRESS"),
    Setting("port", "8501", "TPUCKPT_PORT", "--port", "Port of the dashboard.", kind="int",
            minimum=1, maximum=65535, metavar="PORT"),
    Setting("model", "", "TPUCKPT_MODEL", "--model",
            "Model builder `package.module:function` (or a .keras file) that checkpoints are "
            "restored into for inference. Default: the demo run's builder.",
            commands=("serve", "infer"), metavar="MODULE:FUNCTION"),
    Setting("upload_mb", "64", "TPUCKPT_UPLOAD_MB", "--upload-mb",
            "Largest input file the Infer page accepts, in MB (kept in memory).", kind="int",
            minimum=1, metavar="MB"),
    Setting("slice_mb", "64", "TPUCKPT_SLICE_MB", "--slice-mb",
            "Tensors larger than this many MB are streamed from their data shard in chunks "
            "instead of read whole (0: every tensor).", kind="int", minimum=0, metavar="MB"),
    Setting("chunk_mb", "8", "TPUCKPT_CHUNK_MB", "--chunk-mb",
            "Size of one streamed chunk in MB.", kind="int", minimum=1, metavar="MB"),
    Setting("cache_entries", "256", "TPUCKPT_CACHE_ENTRIES", "--cache-entries",
            "How many results of each kind (variable tables, tensor statistics and histograms, "
            "diffs, run steps) the dashboard keeps cached.",
            kind="int", minimum=1, metavar="N"),
    Setting("open_checkpoints", "64", "TPUCKPT_OPEN_CHECKPOINTS", "--open-checkpoints",
            "How many opened checkpoints (their parsed index and object graph) the dashboard "
            "keeps open across pages and sessions.", kind="int", minimum=1, metavar="N"),
    Setting("run_ttl_s", "5", "TPUCKPT_RUN_TTL_S", "--run-ttl-s",
            "How long the dashboard keeps the list of a run's checkpoints, in seconds: a run "
            "that is still training shows a new checkpoint this long after it is saved.",
            kind="int", minimum=1, metavar="SECONDS"),
    Setting("bucket_ttl_s", "30", "TPUCKPT_BUCKET_TTL_S", "--bucket-ttl-s",
            "How long the dashboard keeps the list of runs under a gs:// root, in seconds "
            "(listing a bucket costs a request per 1000 names).", kind="int", minimum=1,
            metavar="SECONDS"),
    Setting("allow_unsafe_ops", "0", "TPUCKPT_ALLOW_UNSAFE_OPS", "--allow-unsafe-ops",
            "Run SavedModels whose signature uses file-system or Python ops (ReadFile, "
            "WriteFile, PyFunc, ...). Off by default.", kind="bool",
            commands=("serve", "infer")),
    Setting("demo_dir", "", "TPUCKPT_DEMO_DIR", "--demo-dir",
            "Where the demo run is written. Default: ~/.cache/tpuckpt-viz/demo.", metavar="DIR"),
    Setting("progress", "auto", "TPUCKPT_PROGRESS", "--progress",
            "Progress display on stderr for stats, diff and steps: auto (when stderr is a "
            "terminal and the work takes over a second), always, or never.", kind="choice",
            choices=("auto", "always", "never"), commands=("stats", "diff", "steps")),
    Setting("worker_mb", "16384", "TPUCKPT_WORKER_MB", "--worker-mb",
            "Memory limit (data segment, MB) of the worker process that runs TensorFlow on a "
            "user's file: model loading, inference, TensorFlow's checkpoint reader. 0: none.",
            kind="int", minimum=0, metavar="MB"),
    Setting("worker_timeout_s", "300", "TPUCKPT_WORKER_TIMEOUT_S", "--worker-timeout-s",
            "Time limit of one request to that worker, in seconds; then it is stopped.",
            kind="int", minimum=1, metavar="SECONDS"),
    Setting("scheduler", "", "TPUCKPT_SCHEDULER", "--scheduler",
            "Address of a Dask scheduler (tcp://host:8786): stats, diff, steps and Compare "
            "read on its workers, which must see the checkpoints at the same paths (a shared "
            "disk, or gs://). Default: none (in-process).", metavar="ADDRESS",
            commands=("stats", "diff", "steps", "serve")),
    Setting("workers", "", "TPUCKPT_WORKERS", "--workers",
            "Start a local Dask cluster of this many worker processes for stats, diff, steps "
            "and Compare, shut down with the command or the server. Default: none "
            "(in-process).", kind="int", minimum=1, metavar="N",
            commands=("stats", "diff", "steps", "serve")),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    """The row of setting ``name``."""
    return _BY_NAME[name]


def get(name: str) -> str:
    """The raw text of setting ``name``: its environment variable, else its default."""
    row = _BY_NAME[name]
    value = os.environ.get(row.env, "")
    return value if value.strip() != "" else row.default


def value(name: str):
    """Setting ``name`` parsed by its kind (int, bool, ...); malformed: UserError."""
    return _BY_NAME[name].parse(get(name))


def get_int(name: str) -> int:
    """An integer setting; a malformed value is a UserError naming the setting."""
    return value(name)


def get_bool(name: str) -> bool:
    """A yes/no setting; a malformed value is a UserError naming the setting."""
    return value(name)


def check_all(environ: dict | None = None) -> None:
    """Raise UserError for the first malformed setting in ``environ`` (``os.environ``)."""
    environ = os.environ if environ is None else environ
    for row in SETTINGS:
        raw = environ.get(row.env, "")
        if raw.strip():
            row.parse(raw)


def demo_dir() -> Path:
    """The folder of the built-in demo run."""
    folder = get("demo_dir")
    if folder:
        return Path(folder).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tpuckpt-viz" / "demo"


def split_paths(text: str) -> list[str]:
    """A ``os.pathsep``-separated list of folders or URIs (``gs://`` kept whole)."""
    parts = [p for p in text.split(os.pathsep) if p.strip()] if text else []
    # gs:// URIs contain ':' which is os.pathsep on POSIX: glue "gs" + "//bucket" back together.
    merged: list[str] = []
    for part in parts:
        if merged and merged[-1] in ("gs", "s3", "ram", "hdfs") and part.startswith("//"):
            merged[-1] = merged[-1] + ":" + part
        else:
            merged.append(part)
    return merged


def roots() -> list[str]:
    """The dashboard's allowed roots (configured ones, else the working folder)."""
    return split_paths(get("roots")) or [os.getcwd()]
