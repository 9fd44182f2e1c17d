"""The one exception type the user sees.

Every failure that a user can cause (a wrong path, a truncated index, a bad input) is raised
as :class:`UserError` with a one-line message that says what is wrong and what to do. The CLI
prints it as ``error: ...`` and exits 1; the pages show it with ``st.error``.
"""


class UserError(Exception):
    """A problem with the user's input, with a one-line message that says what to do."""

    def __init__(self, message: str):
        # Keep it to one line whatever TensorFlow put into the text we wrap.
        super().__init__(" ".join(str(message).split()))


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception's text (TensorFlow's messages are long)."""
    text = str(exc).strip() or type(exc).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    return line if len(line) <= limit else line[: limit - 3] + "..."
