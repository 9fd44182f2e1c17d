"""One table of settings: name, default, environment variable, command-line flag, help.

The README documents every row (a test checks it). Values come from the environment; the
``serve`` command turns its flags into these environment variables for the Streamlit process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    env: str
    flag: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("roots", "", "TPUCKPT_ROOTS", "--root",
            "Folders or gs://bucket/prefix URIs the dashboard may open, separated by os.pathsep "
            "(the flag repeats). Default: the folder the server was started in. The demo folder "
            "is always allowed. The CLI ignores it."),
    Setting("address", "127.0.0.1", "TPUCKPT_ADDRESS", "--address",
            "Address the dashboard binds to. 0.0.0.0 exposes every allowed checkpoint and the "
            "inference page to the whole network."),
    Setting("port", "8501", "TPUCKPT_PORT", "--port", "Port of the dashboard."),
    Setting("model", "", "TPUCKPT_MODEL", "--model",
            "Model builder `package.module:function` (or a .keras file) used by Infer to restore "
            "checkpoints. Default: the demo run's builder."),
    Setting("upload_mb", "64", "TPUCKPT_UPLOAD_MB", "--upload-mb",
            "Largest input file the Infer page accepts, in MB (kept in memory)."),
    Setting("slice_mb", "64", "TPUCKPT_SLICE_MB", "--slice-mb",
            "Tensors larger than this many MB are streamed from their data shard in chunks "
            "instead of read whole."),
    Setting("chunk_mb", "8", "TPUCKPT_CHUNK_MB", "--chunk-mb",
            "Size of one streamed chunk in MB."),
    Setting("cache_entries", "256", "TPUCKPT_CACHE_ENTRIES", "--cache-entries",
            "How many results (tensor statistics, histograms, diffs) the dashboard keeps cached."),
    Setting("allow_unsafe_ops", "0", "TPUCKPT_ALLOW_UNSAFE_OPS", "--allow-unsafe-ops",
            "Set to 1 to run SavedModels whose signature uses file-system or Python ops "
            "(ReadFile, WriteFile, PyFunc, ...). Off by default."),
    Setting("demo_dir", "", "TPUCKPT_DEMO_DIR", "--demo-dir",
            "Where the demo run is written. Default: ~/.cache/tpuckpt-viz/demo."),
    Setting("scheduler", "", "TPUCKPT_SCHEDULER", "--scheduler",
            "Address of a Dask scheduler (tcp://host:8786): stats, diff, steps and Compare "
            "read on its workers, which must see the checkpoints at the same paths. Default: "
            "none (in-process)."),
    Setting("workers", "", "TPUCKPT_WORKERS", "--workers",
            "Start a local Dask cluster of this many worker processes for stats, diff, steps "
            "and Compare (shut down with the command or the server). Default: none."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def get(name: str) -> str:
    """The value of setting ``name``: its environment variable, else its default."""
    setting = _BY_NAME[name]
    value = os.environ.get(setting.env, "")
    return value if value != "" else setting.default


def get_int(name: str) -> int:
    """An integer setting; a malformed value falls back to the default."""
    try:
        return int(get(name))
    except ValueError:
        return int(_BY_NAME[name].default)


def get_bool(name: str) -> bool:
    return get(name).strip().lower() in ("1", "true", "yes", "on")


def demo_dir() -> Path:
    """The folder of the built-in demo run."""
    value = get("demo_dir")
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tpuckpt-viz" / "demo"


def roots() -> list[str]:
    """The dashboard's allowed roots (configured ones, else the working folder)."""
    value = get("roots")
    parts = [p for p in value.split(os.pathsep) if p.strip()] if value else []
    # gs:// URIs contain ':' which is os.pathsep on POSIX: glue "gs" + "//bucket" back together.
    merged: list[str] = []
    for part in parts:
        if merged and merged[-1] in ("gs", "s3", "ram", "hdfs") and part.startswith("//"):
            merged[-1] = merged[-1] + ":" + part
        else:
            merged.append(part)
    return merged or [os.getcwd()]
