"""Allowed roots: every path the dashboard opens must stay inside them.

Local paths are resolved with realpath (so ``..`` and symlinks that lead out are caught) and
must lie under a configured root (``--root`` / ``TPUCKPT_ROOTS``, else the folder the server
was started in) or the demo folder. Not only the path typed: every file that opening it reads
(the ``.index`` and ``.data-*`` files of a checkpoint, the folder's state file, a SavedModel's
``saved_model.pb``, ``variables/`` and ``assets/``) is resolved and checked too, so that a
symlinked file inside a root cannot lead out of it (see :func:`opened_files`). Remote paths (``gs://bucket/...``) need a root with the
same scheme and bucket. The command line does not use this: it runs with its user's rights.
"""

from __future__ import annotations

import os
import re

from tpuckpt_viz import config
from tpuckpt_viz.errors import UserError


def _is_remote(path: str) -> bool:
    return "://" in path


def _norm_remote(path: str) -> str:
    scheme, _, rest = path.partition("://")
    parts = [p for p in rest.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"{path}: '..' is not allowed in a remote path")
    return f"{scheme}://" + "/".join(parts)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def allowed_roots() -> list[str]:
    """The configured roots plus the demo folder, normalized."""
    roots = []
    for root in config.roots() + [str(config.demo_dir())]:
        roots.append(_norm_remote(root) if _is_remote(root)
                     else os.path.realpath(os.path.expanduser(root)))
    return roots


def check_path(path: str, roots: list[str] | None = None) -> str:
    """Return the resolved ``path`` if it lies inside an allowed root, else raise UserError.

    Relative paths are taken from the server's working folder.
    """
    path = str(path).strip()
    if not path:
        raise UserError("no path given: type a checkpoint folder or prefix")
    if "\x00" in path:
        raise UserError("the path contains a NUL byte: type a plain path")
    roots = allowed_roots() if roots is None else roots
    if _is_remote(path):
        resolved = _norm_remote(path)
        ok = any(_is_remote(r) and _under(resolved, r) for r in roots)
    else:
        resolved = os.path.realpath(os.path.expanduser(path))
        # A checkpoint prefix is not a file itself: resolve its folder, keep its base name.
        if not os.path.exists(resolved) and os.path.exists(os.path.dirname(resolved)):
            resolved = os.path.join(os.path.realpath(os.path.dirname(resolved)),
                                    os.path.basename(resolved))
        ok = any(not _is_remote(r) and _under(resolved, r) for r in roots)
    if not ok:
        shown = ", ".join(roots)
        raise UserError(f"{path} is outside the allowed roots ({shown}): start the server with "
                        "--root DIR (or set TPUCKPT_ROOTS) to allow another folder")
    if not _is_remote(resolved):
        files = opened_files(resolved)
        if os.path.isdir(resolved) and os.path.isfile(os.path.join(resolved, "checkpoint")):
            for prefix in _state_prefixes(resolved):  # where the state file leads
                real = os.path.join(os.path.realpath(os.path.dirname(prefix)),
                                    os.path.basename(prefix))
                if not any(not _is_remote(r) and _under(real, r) for r in roots):
                    raise UserError(f"{prefix}, named by the state file of {path}, is outside "
                                    f"the allowed roots ({', '.join(roots)}): start the server "
                                    "with --root DIR (or set TPUCKPT_ROOTS) to allow it")
                files += opened_files(prefix)
        for file in files:
            real = os.path.realpath(file)
            if not any(not _is_remote(r) and _under(real, r) for r in roots):
                raise UserError(f"{file} is a link that leads outside the allowed roots: "
                                f"{path} cannot be opened; copy the files into an allowed "
                                "root, or start the server with --root DIR")
    return resolved


def is_allowed(path: str) -> bool:
    """Whether ``path`` (and every file opening it reads) lies inside the allowed roots."""
    try:
        check_path(path)
        return True
    except UserError:
        return False


def resolve_allowed(path: str):
    """``path`` checked, resolved to its checkpoint (a folder to its latest one, a SavedModel to
    its variables), and the checkpoint checked too: a state file must not lead out of the roots.

    Returns :class:`tpuckpt_viz.checkpoint.paths.Resolved`; raises UserError. What the pages
    open goes through here (``cached.open_allowed``), never through ``check_path`` alone.
    """
    from tpuckpt_viz.checkpoint.paths import resolve_checkpoint

    resolved = resolve_checkpoint(check_path(path))
    check_path(resolved.prefix)
    return resolved


def allowed_run(run_dir: str) -> list[str]:
    """Every checkpoint of the run in ``run_dir`` (newest last), each checked: a whole-run view
    reads all of them, so one outside the roots (through a state file or a link) is a
    UserError, not a checkpoint left out."""
    from tpuckpt_viz.checkpoint.paths import run_checkpoints

    members = run_checkpoints(check_path(run_dir))
    for member in members:
        check_path(member)
    return members


_DATA_OR_INDEX = re.compile(r"^(?P<prefix>.+)\.(index|data-\d{5}-of-\d{5})$")
_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt", "fingerprint.pb", "keras_metadata.pb")
_MODEL_DIRS = ("variables", "assets", "assets.extra")
_MAX_LISTED = 10_000


def opened_files(path: str) -> list[str]:
    """The local files (and folders) that opening ``path`` may read, for the roots check.

    ``path`` (resolved) is a folder, a checkpoint prefix, an ``.index`` / ``.data-*`` file or
    a V1 file. A folder: its state file ``checkpoint``, its ``.index`` and ``.data-*`` files;
    for a SavedModel, its
    ``saved_model.pb`` (and the other files beside it) and everything under ``variables/``,
    ``assets/`` and ``assets.extra/``. A prefix: its ``.index``, every ``.data-*`` shard, the
    V1 file of that name, the state file beside it, and for ``variables/variables`` the
    SavedModel around it. Names are listed without following links; the caller resolves each.
    """
    if os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError:
            return []
        # the state file, the bundles that resolving the folder may open, a SavedModel's files
        files = [os.path.join(path, n) for n in names
                 if n in ("checkpoint",) + _MODEL_FILES or _DATA_OR_INDEX.match(n)]
        for sub in _MODEL_DIRS:
            folder = os.path.join(path, sub)
            if os.path.lexists(folder):
                files.append(folder)
                files += _walk(folder)
        return files
    match = _DATA_OR_INDEX.match(os.path.basename(path))
    folder = os.path.dirname(path)
    base = match.group("prefix") if match else os.path.basename(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    files = [os.path.join(folder, n) for n in names
             if n in (base, base + ".index", "checkpoint") or n.startswith(base + ".data-")]
    if base == "variables" and os.path.basename(folder) == "variables":
        files += opened_files(os.path.dirname(folder))
    return files


def _state_prefixes(folder: str) -> list[str]:
    """The checkpoints that folder's state file (and its *.index files) lead to."""
    from tpuckpt_viz.checkpoint.paths import run_checkpoints

    try:
        return run_checkpoints(folder)
    except UserError:  # no checkpoint there: the page says so when it opens it
        return []


def _walk(folder: str) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):  # links are listed, not followed
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
        if len(found) > _MAX_LISTED:
            raise UserError(f"{folder} holds more than {_MAX_LISTED:,} files: it is not a "
                            "SavedModel's own folder")
    return found
