"""Allowed roots: every path the dashboard opens must stay inside them.

Local paths are resolved with realpath (so ``..`` and symlinks that lead out are caught) and
must lie under a configured root (``--root`` / ``TPUCKPT_ROOTS``, else the folder the server
was started in) or the demo folder. Remote paths (``gs://bucket/...``) need a root with the
same scheme and bucket. The command line does not use this: it runs with its user's rights.
"""

from __future__ import annotations

import os

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
    return resolved
