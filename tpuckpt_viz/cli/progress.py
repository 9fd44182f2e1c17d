"""The CLI's progress display on stderr (rich), for ``stats``, ``diff`` and ``steps``.

``TPUCKPT_PROGRESS`` (or ``--progress``) says when it shows: ``auto`` (stderr is a terminal
and the work has taken over a second), ``always``, ``never``. Use it as a context manager:
it is also the engine's progress callback. When the work fails, the display stops where it
was and its line is closed, so the ``error:`` line that follows starts on a line of its own;
when the work succeeds, the display is cleared from a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

DELAY_S = 1.0


class CliProgress:
    """``progress(done, total, label="", nbytes=0)`` counting ``unit`` (tensors, checkpoints)."""

    def __init__(self, title: str, unit: str, mode: str = "auto", stream: TextIO | None = None):
        self.title = title
        self.unit = unit
        self.mode = mode
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self._progress = None
        self._task = None
        self._total = 0
        terminal = _is_terminal(self.stream)
        self.enabled = mode == "always" or (mode == "auto" and terminal)
        self._terminal = terminal

    # -- the engine calls this
    def __call__(self, done: int, total: int, label: str = "", nbytes: int = 0) -> None:
        if not self.enabled:
            return
        opening = self._progress is None
        if opening:
            if self.mode == "auto" and time.monotonic() - self.start < DELAY_S:
                return
            self._open()
        self._total = total
        self._progress.update(self._task, completed=done, total=max(total, 1),
                              label=_short(label), size=_size(nbytes))
        if opening:
            self._progress.start()  # after the first update: its first frame has the total

    def _open(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeElapsedColumn

        # Not a terminal (``always`` into a log): wide enough that no column is cut.
        console = Console(file=self.stream, highlight=False, markup=False, emoji=False,
                          width=None if self._terminal else 160)
        self._progress = Progress(
            TextColumn(f"{self.title}:"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn(self.unit), TextColumn("{task.fields[size]}"),
            TimeElapsedColumn(), TextColumn("{task.fields[label]}"),
            console=console, transient=self._terminal, redirect_stdout=False,
            redirect_stderr=False)
        self._task = self._progress.add_task(self.title, total=None, label="", size="")

    # -- context manager: close the line whatever happens
    def __enter__(self) -> "CliProgress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        if self._progress is None:
            return
        progress, self._progress = self._progress, None
        if failed:
            progress.live.transient = False  # keep how far it got, then end its line
        progress.stop()
        if failed and not self._terminal:
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _short(label: str, limit: int = 48) -> str:
    label = str(label or "")
    return label if len(label) <= limit else "..." + label[-(limit - 3):]


def _size(nbytes: int) -> str:
    if not nbytes:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""
