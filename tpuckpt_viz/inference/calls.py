"""Calling TensorFlow for a test run: timing, outputs as numpy, and its errors as one line."""

from __future__ import annotations

import re
import statistics
import time
from typing import Callable

import numpy as np

from tpuckpt_viz.errors import UserError, first_line
from tpuckpt_viz.inference.savedmodel import SignatureInfo, declared

# Add-on libraries whose custom ops a SavedModel may need (op name prefix -> package).
_CUSTOM_OP_PACKAGES = (
    ("SimpleML", "tensorflow_decision_forests"),
    ("YggdrasilDecisionForests", "tensorflow_decision_forests"),
    ("TokenizerFromLogits", "tensorflow_text"), ("SentencepieceOp", "tensorflow_text"),
    ("WordpieceTokenize", "tensorflow_text"), ("RegexSplitWithOffsets", "tensorflow_text"),
    ("WhitespaceTokenize", "tensorflow_text"), ("CaseFoldUTF8", "tensorflow_text"),
    ("NormalizeUTF8", "tensorflow_text"), ("UnicodeScriptTokenize", "tensorflow_text"),
    ("FastWordpiece", "tensorflow_text"), ("FastBertNormalize", "tensorflow_text"),
    ("TensorsToCoo", "tensorflow_recommenders_addons"),
    ("Addons>", "tensorflow_addons"),
)

_NOISE = re.compile(r"^(Graph execution error:?|Detected at node|\[\[|File |Traceback|Node:|"
                    r"Call arguments received|\s*$)")


def timed(call: Callable[[], dict], repeats: int) -> tuple[dict, float, int]:
    """(outputs, latency_ms, runs): one warm-up run, then the median of ``repeats`` runs."""
    start = time.perf_counter()
    outputs = call()
    first = (time.perf_counter() - start) * 1000.0
    if repeats <= 1:
        return outputs, first, 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return outputs, statistics.median(times), repeats + 1


def to_numpy(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def tf_error_text(exc: BaseException, limit: int = 240) -> str:
    """The line of a TensorFlow error that says what went wrong.

    ``str()`` of an op error starts with "Graph execution error:" and a stack of
    "Detected at node" lines; the cause is the first line that is none of those.
    """
    text = str(getattr(exc, "message", "") or exc)
    for line in text.splitlines():
        line = line.strip()
        if line and not _NOISE.match(line):
            line = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", line)
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return first_line(exc, limit)


def missing_op_hint(exc: BaseException | None) -> str | None:
    """What to install when ``exc`` says an op type is not registered (a custom op)."""
    match = re.search(r"Op type not registered '([^']+)'", str(exc or ""))
    if not match:
        return None
    op = match.group(1)
    package = next((p for prefix, p in _CUSTOM_OP_PACKAGES if op.startswith(prefix)), None)
    where = f" (from {package})" if package else ""
    return (f"it needs the custom op {op!r}{where}, which this TensorFlow does not have: "
            f"install {package or 'the library that defines it'} and import it before loading")


def input_error(sig: SignatureInfo, exc: BaseException) -> UserError:
    """TensorFlow's refusal of a signature's inputs, naming the declared shapes and dtypes."""
    hint = missing_op_hint(exc)
    if hint:
        return UserError(f"signature {sig.name!r} cannot run: {hint}")
    return UserError(f"signature {sig.name!r} rejected the inputs: {tf_error_text(exc)} "
                     f"(it declares {declared(sig.inputs)})")
