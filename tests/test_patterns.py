"""User regular expressions (tpuckpt_viz.patterns): RE2, linear time, clear errors.

``(.*.*.*)*!`` against a name of a few thousand characters takes Python's ``re`` longer than
any test could wait (it backtracks, holding the GIL); RE2 answers at once. Every place that
compiles a user's pattern goes through ``compile_user``: the CLI's ``--match`` (tests/cli/test_cli.py
runs ``stats`` and ``steps``), the engine's ``diff``/``steps`` (the Compare page's run tab) and
the Browse page's name filter.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from tpuckpt_viz.errors import UserError
from tpuckpt_viz.patterns import compile_user, search_any

EVIL = "(.*.*.*)*!"
LONG = "layer/" * 1000 + "kernel"


def test_catastrophic_pattern_answers_at_once():
    start = time.monotonic()
    pattern = compile_user(EVIL)
    assert not search_any(pattern, LONG, LONG + "?")
    assert search_any(pattern, LONG + "!")
    assert time.monotonic() - start < 1.0


def test_python_syntax_that_re2_keeps():
    pattern = compile_user(r"^dense(_\d+)?/(kernel|bias)$")
    assert search_any(pattern, "dense_1/kernel") and not search_any(pattern, "dense/gamma")
    assert search_any(compile_user(r"(?i)KERNEL"), "dense/kernel")
    assert search_any(None, "anything")
    assert not search_any(compile_user("x"), None)


@pytest.mark.parametrize("pattern,words", [
    ("(", ["missing )"]),
    ("(?<=a)b", ["not supported"]),
    ("(?=a)", ["not supported"]),
    (r"(a)\1", ["not supported"]),
    ("[z-a]", ["character class range"]),
])
def test_invalid_or_unsupported_is_one_line(pattern, words, capfd):
    with pytest.raises(UserError) as err:
        compile_user(pattern, "--match")
    message = str(err.value)
    assert message.startswith(f"--match {pattern!r} is not a valid regular expression: ")
    assert "\n" not in message and all(w in message for w in words), message
    assert capfd.readouterr().err == ""  # RE2 prints nothing of its own


def test_browse_name_filter_uses_re2():
    from tpuckpt_viz.dashboard.pagedata import filter_table

    table = pd.DataFrame({"name": [LONG, "dense/kernel"], "key": ["k1", "k2"],
                          "kind": ["weight", "weight"], "layer": [None, "dense"],
                          "dtype": ["float32", "float32"]})
    start = time.monotonic()
    assert filter_table(table, pattern=EVIL).empty
    assert list(filter_table(table, pattern="^dense/").name) == ["dense/kernel"]
    assert list(filter_table(table, pattern="k1").name) == [LONG]  # keys are searched too
    assert time.monotonic() - start < 2.0
    with pytest.raises(UserError, match="name filter"):
        filter_table(table, pattern="(?!x)")


def test_engine_match_uses_re2(tf, tmp_path):
    import numpy as np

    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.engine.diff import diff_checkpoints, run_steps

    for i in range(2):
        tf.train.Checkpoint(**{"a" * 3000: tf.Variable(np.full(3, i, np.float32))}).write(
            str(tmp_path / f"ckpt-{i}"))
    a, b = (open_checkpoint(str(tmp_path / f"ckpt-{i}")) for i in range(2))
    start = time.monotonic()
    assert diff_checkpoints(a, b, match=EVIL) == []
    assert run_steps(str(tmp_path), match=EVIL) == []
    assert time.monotonic() - start < 10
    assert len(diff_checkpoints(a, b, match="^a+$")) == 1
    with pytest.raises(UserError, match="not supported"):
        run_steps(str(tmp_path), match="(?<=a)a")
