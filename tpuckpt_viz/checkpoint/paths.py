"""What a path means: which checkpoint(s) a user-given PATH stands for.

PATH may be a directory (its latest checkpoint), a prefix, an ``.index`` or ``.data-*`` file,
a SavedModel directory (its ``variables/variables`` checkpoint) or its ``saved_model.pb``, a
folder of numbered SavedModel versions (the newest), a TF1 ``.meta`` file (its checkpoint), a
checkpoint state file, a legacy V1 TensorSlice file, or a Keras file (``.weights.h5``, ``.keras``,
``.h5``; HDF5 is told by its bytes, whatever the name) or a folder of them (a ``ModelCheckpoint``
run), on any ``tf.io.gfile`` filesystem (local, ``gs://``, ``ram://``).

We resolve paths ourselves instead of trusting ``tf.train.latest_checkpoint``: TensorFlow
follows a state file's absolute paths blindly (they go stale when a run is copied down from
``gs://``) and treats a prefix ending in ``/`` as a folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tpuckpt_viz.checkpoint import formats, remote
from tpuckpt_viz.errors import UserError, first_line
from tpuckpt_viz.tfcompat import tf

_DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")
_TEMP_RE = re.compile(r"_temp(_[0-9a-f]{32})?(/|$)|\.tmp[0-9a-f]*(/|$)")
_NUMBER_RE = re.compile(r"(\d+)(?!.*\d)")
STATE_FILE = "checkpoint"


@dataclass(frozen=True)
class Resolved:
    """A resolved checkpoint: the exact prefix to open, and what the user pointed at."""

    prefix: str
    # "v2" (bundle: PREFIX.index + PREFIX.data-*), "v1" (TensorSlice file) or "keras" (a Keras
    # .weights.h5 / .keras / .h5 file, read with h5py; prefix is the file)
    format: str
    saved_model_dir: str | None = None
    run_dir: str | None = None


def _gfile():
    return tf().io.gfile


def _join(*parts: str) -> str:
    head, *rest = parts
    for part in rest:
        head = head.rstrip("/") + "/" + part.lstrip("/")
    return head


def _dirname(path: str) -> str:
    path = path.rstrip("/")
    return path.rsplit("/", 1)[0] if "/" in path else "."


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _exists(path: str) -> bool:
    if remote.handles(path):  # gs:// and other fsspec URLs: a failure is an error, not False
        return remote.exists(path)
    if formats.is_local(path):  # no TensorFlow import for local files (Keras files need none)
        return os.path.exists(path)
    try:
        return _gfile().exists(path)
    except Exception:  # gfile raises for unknown schemes or unreachable buckets
        return False


def _isdir(path: str) -> bool:
    if remote.handles(path):
        return remote.isdir(path)
    if formats.is_local(path):
        return os.path.isdir(path)
    try:
        return _gfile().isdir(path)
    except Exception:
        return False


def _listdir(path: str) -> list[str]:
    if remote.handles(path):
        return remote.listdir(path)
    if formats.is_local(path):
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            raise UserError(f"cannot list {path}: {exc.strerror or exc}") from None
    try:
        return sorted(name.rstrip("/") for name in _gfile().listdir(path))
    except Exception as exc:
        raise UserError(f"cannot list {path}: {first_line(exc)}") from None


def in_progress(prefix: str) -> bool:
    """Whether ``prefix`` belongs to a save still in progress (a ``*_temp*`` folder or name)."""
    return bool(_TEMP_RE.search(prefix))


def is_saved_model(path: str) -> bool:
    """Whether ``path`` is a SavedModel directory (or one missing only its saved_model.pb)."""
    path = path.rstrip("/")
    return _isdir(path) and (
        _exists(_join(path, "saved_model.pb"))
        or _exists(_join(path, "saved_model.pbtxt"))
        or _exists(_join(path, "variables", "variables.index"))
    )


def _foreign_format(path: str) -> str | None:
    """A message for files and folders of other frameworks that people mistake for ours
    (Keras files themselves are read: see :mod:`tpuckpt_viz.checkpoint.keras`)."""
    name = _basename(path).lower()
    if name.endswith(KERAS_SUFFIXES) and _exists(path) and not _isdir(path):
        return (f"{path} is named like a Keras file but is neither HDF5 nor a .keras zip: it "
                "may be truncated or of another format; save it again with model.save_weights "
                "or model.save")
    if _isdir(path):
        names = set(_listdir(path))
        orbax = {"_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "_sharding", "d"}
        if names & orbax and not any(n.endswith(".index") for n in names):
            return (f"{path} looks like a JAX/Orbax checkpoint: this tool reads TensorFlow "
                    "checkpoints (PREFIX.index + PREFIX.data-*)")
    return None


# ------------------------------------------------------------------- Keras files and folders
KERAS_SUFFIXES = (".keras", ".weights.h5", ".h5", ".hdf5")
_KERAS_SUFFIX_RE = re.compile(r"(\.weights\.h5|\.keras|\.h5|\.hdf5)$", re.IGNORECASE)
_FIRST_NUMBER_RE = re.compile(r"\d+")


def keras_file_number(path: str) -> int | None:
    """The epoch (or batch) in a ``ModelCheckpoint`` file name: the first number of the name
    without its suffix (``w.03.weights.h5`` -> 3, ``model-12-0.41.keras`` -> 12)."""
    stem = _KERAS_SUFFIX_RE.sub("", _basename(path))
    match = _FIRST_NUMBER_RE.search(stem)
    return int(match.group(0)) if match else None


def keras_run_number(path: str) -> int | None:
    """The number in a Keras file's name when it is one save of a ``ModelCheckpoint`` run
    (another file of the same name pattern beside it); None for a lone file, whose name's
    number (``resnet50.h5``, ``keras2_full.h5``) says nothing about a step."""
    number = keras_file_number(path)
    if number is None:
        return None
    family = _family(path)
    try:
        siblings = [n for n in _listdir(_dirname(path)) if n != _basename(path)
                    and n.lower().endswith(KERAS_SUFFIXES) and _family(n) == family]
    except UserError:
        return None
    return number if siblings else None


def _keras_order(path: str):
    number = keras_file_number(path)
    return (number is None, number if number is not None else 0, path)


def _is_keras_file(path: str) -> bool:
    from tpuckpt_viz.checkpoint.keras import looks_like_keras

    return looks_like_keras(path)


def keras_files(directory: str) -> list[str]:
    """The Keras weight files directly in ``directory`` (told by their bytes), in run order:
    by the number in the file name, the way ``ModelCheckpoint`` names them."""
    found = []
    for name in _listdir(directory):
        full = _join(directory, name)
        if (name.lower().endswith(KERAS_SUFFIXES) and not in_progress(name)
                and not _isdir(full) and _is_keras_file(full)):
            found.append(full)
    return sorted(found, key=_keras_order)


def saved_model_versions(directory: str) -> list[str]:
    """Numbered SavedModel versions in ``directory`` (TF Serving's layout), oldest first."""
    try:
        names = _listdir(directory)
    except UserError:
        return []
    versions = [n for n in names if n.isdigit() and is_saved_model(_join(directory, n))]
    return [_join(directory, n) for n in sorted(versions, key=int)]


def _family(path: str) -> str:
    """A checkpoint's name with its numbers masked: saves of one run share it."""
    return re.sub(r"\d+", "#", _KERAS_SUFFIX_RE.sub("", _basename(path)))


def other_checkpoints(path: str) -> list[str]:
    """Checkpoints in folder ``path`` other than the one it opens, when the folder holds
    several unrelated checkpoints and no state file names one (empty otherwise).

    Saves of one run (``ckpt-100``, ``ckpt-200``; ``w.01.weights.h5``, ``w.02...``) are not
    unrelated: the folder is that run. The CLI prints these on stderr; the dashboard offers
    them in a picker.
    """
    path = str(path).strip().rstrip("/") or "/"
    if not _isdir(path) or is_saved_model(path) or _read_state(path) is not None:
        return []
    candidates = _index_prefixes(path) + keras_files(path)
    if len({_family(c) for c in candidates}) < 2:
        return []
    try:
        opened = resolve_checkpoint(path).prefix
    except UserError:
        return []
    return [c for c in candidates if c != opened]


def _resolve_file(stripped: str) -> Resolved | None:
    """A file the user pointed at: a Keras file, a TF1 ``.meta``, a ``saved_model.pb``; a
    message for model files of other formats; None for anything else (prefixes, V1 files,
    state files go on through :func:`resolve_checkpoint`)."""
    base = _basename(stripped)
    if base in ("saved_model.pb", "saved_model.pbtxt"):
        return resolve_checkpoint(_dirname(stripped))
    if base.endswith(".meta"):
        prefix = stripped[: -len(".meta")]
        if _exists(prefix + ".index"):
            return Resolved(prefix, "v2")
        raise UserError(f"{stripped} is a TF1 graph (.meta) without its checkpoint: "
                        f"{_basename(prefix)}.index is not beside it; copy the checkpoint's "
                        ".index and .data-* files next to it")
    if _is_keras_file(stripped):
        return Resolved(stripped, "keras")
    message = formats.foreign_message(stripped)
    if message:
        raise UserError(message)
    return None


def _read_state(directory: str):
    """Parse ``directory/checkpoint`` as a CheckpointState; None when absent or not one."""
    state_path = _join(directory, STATE_FILE)
    if not _exists(state_path) or _isdir(state_path):
        return None
    from google.protobuf import text_format

    from tpuckpt_viz.checkpoint import storage
    from tpuckpt_viz.checkpoint.protos import CheckpointState  # no TensorFlow import

    try:
        if remote.handles(state_path):
            raw = remote.read_range(state_path, 0, 1 << 20)
        else:  # a regular file only: a named pipe here never blocks
            with storage.open_input(state_path) as f:
                raw = storage.read_range(f, 0, 1 << 20)
        text = raw.decode("utf-8")
        return text_format.Parse(text, CheckpointState())
    except Exception:  # a garbage or binary state file: fall back to the *.index files
        return None


def _locate(directory: str, recorded: str) -> str | None:
    """Where a prefix recorded in a state file really is now.

    The state file may hold relative paths, absolute paths that still exist, or absolute paths
    from another machine or bucket (a run copied down from ``gs://``): then the same base name
    inside ``directory`` is the checkpoint.
    """
    candidates = []
    if recorded.startswith("/") or "://" in recorded:
        candidates.append(recorded)
    else:
        candidates.append(_join(directory, recorded))
    candidates.append(_join(directory, _basename(recorded)))
    if "://" in recorded and "://" not in directory:
        # A run copied down from a bucket: the local copy first, so that listing a local
        # folder never waits on (or fails for) a bucket it no longer needs.
        candidates.reverse()
    for candidate in candidates:
        try:
            found = _exists(candidate + ".index")
        except UserError:
            if "://" not in directory and "://" in candidate:
                continue  # a stale remote path recorded in a local folder's state file
            raise
        if found and not in_progress(candidate):
            return candidate
    return None


def _step_number(prefix: str) -> int:
    match = _NUMBER_RE.search(_basename(prefix))
    return int(match.group(1)) if match else -1


def _index_prefixes(directory: str) -> list[str]:
    """Prefixes of the complete bundles directly in ``directory`` (saves in progress skipped)."""
    prefixes = []
    for name in _listdir(directory):
        if name.endswith(".index") and not in_progress(name[: -len(".index")]):
            prefixes.append(_join(directory, name[: -len(".index")]))
    return prefixes


def run_checkpoints(path: str) -> list[str]:
    """Every complete checkpoint prefix of the run in folder ``path``, oldest first.

    The union of the state file's ``all_model_checkpoint_paths`` (located even when stale)
    and the ``*.index`` files present; ordered by the number in the file name (the diff
    module re-orders by the step stored inside each checkpoint).
    """
    path = path.rstrip("/") or "/"
    if not _isdir(path):
        return [resolve_checkpoint(path).prefix]
    if is_saved_model(path) or saved_model_versions(path):
        return [resolve_checkpoint(path).prefix]
    found: dict[str, None] = {}
    state = _read_state(path)
    if state is not None:
        for recorded in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]:
            located = _locate(path, recorded) if recorded else None
            if located:
                found[located] = None
    for prefix in _index_prefixes(path):
        found.setdefault(prefix, None)
    if not found:
        keras = keras_files(path) if state is None else []
        if keras:  # a ModelCheckpoint run: by the epoch (or batch) in the file names
            return keras
        return [resolve_checkpoint(path).prefix]  # a legacy V1 file, else the usual error
    return sorted(found, key=lambda p: (_step_number(p), p))


def _raise_no_checkpoint(directory: str):
    names = _listdir(directory)
    foreign = _foreign_format(directory)
    if foreign:
        raise UserError(foreign)
    if not names:
        raise UserError(f"{directory} is empty: pass a folder that holds PREFIX.index and "
                        "PREFIX.data-* files, or the prefix itself")
    subdirs = [n for n in names if _isdir(_join(directory, n))]
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    hint = (f"; try one of its folders ({', '.join(subdirs[:3])})" if subdirs else "")
    raise UserError(f"no TensorFlow checkpoint in {directory} (it holds {shown}){hint}: pass a "
                    "folder with *.index files, or a checkpoint prefix")


def _latest_in_dir(directory: str) -> str:
    state = _read_state(directory)
    if state is not None and state.model_checkpoint_path:
        located = _locate(directory, state.model_checkpoint_path)
        if located:
            return located
    prefixes = _index_prefixes(directory)
    if not prefixes:
        _raise_no_checkpoint(directory)

    def newest(prefix: str):
        try:
            mtime = (remote.mtime_ns(prefix + ".index") if remote.handles(prefix)
                     else _gfile().stat(prefix + ".index").mtime_nsec)
        except Exception:
            mtime = 0
        return (_step_number(prefix), mtime)

    return max(prefixes, key=newest)


_V1_SHARD_RE = re.compile(r"-00000-of-00001$")


def _v1_in_dir(directory: str) -> str | None:
    """A legacy V1 TensorSlice file in a folder with no bundle: the one its state file names
    (located by base name when the recorded path is stale), else a single-shard
    ``NAME-00000-of-00001`` file (a TF1 session bundle export)."""
    candidates = []
    state = _read_state(directory)
    if state is not None and state.model_checkpoint_path:
        recorded = state.model_checkpoint_path
        if not (recorded.startswith("/") or "://" in recorded):
            candidates.append(_join(directory, recorded))
        candidates.append(_join(directory, _basename(recorded)))
    candidates += [_join(directory, n) for n in _listdir(directory)
                   if _V1_SHARD_RE.search(n) and not _DATA_RE.match(n)]
    for candidate in candidates:
        if _exists(candidate) and not _isdir(candidate) and _is_v1_file(candidate):
            return candidate
    return None


def _is_v1_file(path: str) -> bool:
    """Whether ``path`` is a legacy V1 TensorSlice checkpoint file that TensorFlow can read."""
    from tpuckpt_viz import sandbox

    return sandbox.is_tensorflow_checkpoint(path)  # in the worker: a crash ends only it


def resolve_checkpoint(path: str) -> Resolved:
    """Resolve a user-given PATH to the checkpoint prefix to open (see the module docstring).

    Raises :class:`UserError` with a one-line message when PATH holds no readable checkpoint.
    """
    resolved = _resolve(path)
    if resolved.format != "keras":
        # Bundles go on to TensorFlow's protos (index, object graph): import TensorFlow quietly
        # first, as the gfile calls used to; Keras files need no TensorFlow at all.
        tf()
    return resolved


def _resolve(path: str) -> Resolved:
    raw = str(path).strip()
    if not raw:
        raise UserError("no path given: pass a checkpoint folder, prefix or .index file")
    stripped = raw.rstrip("/") or "/"
    if (not stripped.endswith(".index") and not _DATA_RE.match(_basename(stripped))
            and _exists(stripped) and not _isdir(stripped)):
        resolved = _resolve_file(stripped)
        if resolved is not None:
            return resolved
    foreign = None if raw.endswith((".index",)) else _foreign_format(raw)
    if foreign and not _isdir(raw):
        raise UserError(foreign)
    # A prefix that exists as a bundle wins over a folder of the same name: a trailing "/"
    # must not turn "run/ckpt" into a folder lookup (TensorFlow's helpers do that).
    if _exists(stripped + ".index") and not _isdir(stripped + ".index"):
        return Resolved(stripped, "v2")
    if stripped.endswith(".index"):
        prefix = stripped[: -len(".index")]
        if _exists(stripped):
            return Resolved(prefix, "v2")
        raise UserError(f"{stripped} does not exist: check the path")
    data = _DATA_RE.match(_basename(stripped))
    if data:
        prefix = _join(_dirname(stripped), data.group("prefix"))
        if _exists(prefix + ".index"):
            return Resolved(prefix, "v2")
        if _exists(stripped):
            raise UserError(f"{stripped} has no {_basename(prefix)}.index beside it: a data "
                            "shard cannot be read without its index file")
    if _isdir(stripped):
        if is_saved_model(stripped):
            variables = _join(stripped, "variables", "variables")
            if not _exists(variables + ".index"):
                raise UserError(f"SavedModel {stripped} has no variables/variables.index: "
                                "it holds no variables to browse")
            return Resolved(variables, "v2", saved_model_dir=stripped)
        versions = saved_model_versions(stripped)
        if versions:  # TF Serving's numbered versions: the newest, for every command
            return resolve_checkpoint(versions[-1])
        if foreign:
            raise UserError(foreign)
        if in_progress(stripped):
            raise UserError(f"{stripped} is a save still in progress (a *_temp* folder): pass "
                            "the finished checkpoint beside it")
        v1 = None if _index_prefixes(stripped) else _v1_in_dir(stripped)
        if v1:
            return Resolved(v1, "v1", run_dir=stripped)
        if not _index_prefixes(stripped) and _read_state(stripped) is None:
            keras = keras_files(stripped)
            if keras:  # a ModelCheckpoint folder: its latest epoch
                return Resolved(keras[-1], "keras", run_dir=stripped)
        return Resolved(_latest_in_dir(stripped), "v2", run_dir=stripped)
    if _exists(stripped):
        if _basename(stripped) == STATE_FILE:
            return resolve_checkpoint(_dirname(stripped))
        if _is_v1_file(stripped):
            return Resolved(stripped, "v1")
        raise UserError(f"{stripped} is not a TensorFlow checkpoint: pass the checkpoint "
                        "prefix (PREFIX for PREFIX.index), its folder, or a SavedModel folder")
    parent = _dirname(stripped)
    if _isdir(parent):
        near = [n[: -len(".index")] for n in _listdir(parent) if n.endswith(".index")]
        if near:
            raise UserError(f"{stripped} does not exist; checkpoints in {parent}: "
                            f"{', '.join(near[:5])}")
    if in_progress(stripped):
        raise UserError(f"{stripped} is a save still in progress: its .index is not written yet")
    raise UserError(f"{stripped} does not exist: check the path")
