"""Name patterns that users type (``--match``, the pages' name filters), matched in linear time.

Python's ``re`` backtracks: ``(.*.*.*)*!`` against a long name runs for hours while holding the
GIL, so one such pattern in the dashboard would stall every session. User patterns are compiled
with RE2 (``google-re2``), whose matching time is linear in the text whatever the pattern.
RE2 takes Python's syntax except backreferences (``\\1``) and lookaround (``(?=``, ``(?<=``,
...); those, and invalid patterns, are a UserError that says so.

The package's own fixed patterns (paths, kinds) stay on ``re``: they are not user input.
"""

from __future__ import annotations

from typing import Protocol

from tpuckpt_viz.errors import UserError


class Pattern(Protocol):
    """What a compiled user pattern offers (RE2's ``_Regexp`` has this ``re``-like method)."""

    pattern: str

    def search(self, text: str, pos: int = ..., endpos: int = ...):  # pragma: no cover
        ...


def compile_user(pattern: str, what: str = "pattern") -> Pattern:
    """Compile ``pattern`` with RE2; an invalid or unsupported one raises UserError.

    ``what`` names the pattern in the message (``--match``, ``name filter``).
    """
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print its own error line to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        hint = ""
        if any(s in pattern for s in ("(?=", "(?!", "(?<=", "(?<!")) or "\\1" in pattern:
            hint = " (lookarounds and backreferences are not supported)"
        raise UserError(f"{what} {pattern!r} is not a valid regular expression: "
                        f"{reason}{hint}") from None


def search_any(pattern: Pattern | None, *texts: str | None) -> bool:
    """Whether ``pattern`` (None: everything matches) is found in any of ``texts``."""
    if pattern is None:
        return True
    return any(text is not None and pattern.search(text) is not None for text in texts)
