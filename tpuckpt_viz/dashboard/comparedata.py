"""The Compare page's data (no Streamlit here): the pair to compare, the diff table as the page
shows it, its counts, the variable to look at first, and the one-line summary of a run.

Every page also labels a run's steps with :func:`step_label`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd

from tpuckpt_viz.checkpoint.objectgraph import OBJECT_GRAPH_KEY
from tpuckpt_viz.engine.diff import first_nonfinite

# Kinds the page's counts, table and charts leave out unless asked: they are not model weights.
HIDDEN_KINDS = ("slot", "optimizer", "counter", "metric", "other")
# The diff statuses, in the order the page shows their counts.
STATUSES = ("changed", "same", "added", "removed", "shape_changed", "dtype_changed")
# Columns of the diff table as shown: the readable name first, the raw keys last.
DIFF_COLUMNS = ["name", "status", "kind", "layer", "shape_a", "shape_b", "l2_a", "l2_b",
                "delta_l2", "rel_change", "cosine", "max_abs_delta", "key_a", "key_b"]
# Columns of the whole-run table as shown.
STEPS_COLUMNS = ["label", "step", "name", "kind", "layer", "l2", "delta_l2", "update_ratio",
                 "nan", "inf"]


def step_label(item: dict) -> str:
    """``step 300 · ckpt-300``: the step of a run's checkpoint (an item of ``run_order``) and
    the file it is in."""
    return f"{item['label']} · {os.path.basename(item['checkpoint'])}"


def describe(run: list[dict], path: str) -> str:
    """:func:`step_label` of ``path`` where it is a checkpoint of ``run``, else the path in
    backticks (Markdown)."""
    item = next((d for d in run if d["checkpoint"] == path), None)
    return step_label(item) if item else f"`{path}`"


def linked_checkpoint(ckpt: str | None, b: str | None, run: str | None) -> str | None:
    """The checkpoint a link to Compare opens: ``?ckpt=``, else B (``?b=``), else the run alone
    (``?run=DIR``: its newest checkpoint); None without any."""
    return next((p.strip() for p in (ckpt, b, run) if p and p.strip()), None)


def step_before(prefixes: list[str], prefix: str) -> str:
    """The checkpoint to compare ``prefix`` with: the one before it in its run (``prefixes``,
    in training order), the second one for the first, "" when there is none."""
    if prefix not in prefixes:
        return ""
    i = prefixes.index(prefix)
    if i > 0:
        return prefixes[i - 1]
    return prefixes[1] if len(prefixes) > 1 else ""


def initial_pair(current: str, prefix: str, prefixes: list[str], link_a: str | None = None,
                 link_b: str | None = None) -> dict:
    """The pair that Compare starts with for the current checkpoint ``current`` (resolved to
    ``prefix``): B is it and A the step before it, unless a link gave both (``?a=&b=``).

    A dict ``for`` (the current path it was made for), ``a``, ``b``.
    """
    if link_a and link_b:
        return {"for": current, "a": link_a, "b": link_b}
    return {"for": current, "a": step_before(prefixes, prefix), "b": prefix}


def variables_only(table: pd.DataFrame) -> pd.DataFrame:
    """The diff records without the object graph entry, which is not a variable."""
    return table[(table["key_a"] != OBJECT_GRAPH_KEY) & (table["key_b"] != OBJECT_GRAPH_KEY)]


@dataclass
class DiffShown:
    """The diff table after the page's filters."""

    shown: pd.DataFrame  # the rows shown, in the records' order (charts, CSV)
    total: int  # variables on either side (the object graph left out)
    caption: str  # "3 of 9 variables", and what was left out and why
    counts: dict  # status -> count over the rows shown, in STATUSES order

    @property
    def table(self) -> pd.DataFrame:
        """The rows shown as the page's table: :data:`DIFF_COLUMNS`, most changed first
        (largest ``rel_change``; rows without one last)."""
        return self.shown[DIFF_COLUMNS].sort_values("rel_change", ascending=False,
                                                    na_position="last", kind="stable")


def filter_diff(table: pd.DataFrame, show_all: bool = False, kinds=(), layers=()) -> DiffShown:
    """The diff records (a DataFrame of ``diff`` records) as the page shows them.

    Without ``show_all`` or ``kinds``, :data:`HIDDEN_KINDS` are left out (the caption says
    how many); ``kinds`` and ``layers`` keep only those.
    """
    table = variables_only(table)
    shown = table
    if not show_all and not kinds:
        shown = shown[~shown["kind"].isin(HIDDEN_KINDS)]
    if kinds:
        shown = shown[shown["kind"].isin(list(kinds))]
    if layers:
        shown = shown[shown["layer"].isin(list(layers))]
    left_out = len(table) - len(shown)
    caption = f"{len(shown):,} of {len(table):,} variables"
    if left_out and not show_all and not kinds and not layers:
        caption += (f": {left_out:,} optimizer slots and state, counters, metrics and other "
                    "entries left out (tick the box to include them)")
    counts = shown["status"].value_counts()
    return DiffShown(shown, len(table), caption, {s: int(counts.get(s, 0)) for s in STATUSES})


def comparable(shown: pd.DataFrame) -> tuple[list[str], int]:
    """The variables whose values both sides can show side by side (same shape and dtype,
    not strings), most changed first, and the index of the one to show first: the most
    changed weight, else the most changed variable. ([], 0) when there is none."""
    both = shown[shown["status"].isin(["changed", "same"]) & ~shown["dtype_a"].isin(["string"])]
    both = both.sort_values("rel_change", ascending=False, na_position="last", kind="stable")
    weights = list(both["kind"] == "weight")
    return list(both["name"]), (weights.index(True) if True in weights else 0)


@dataclass
class RunSummary:
    """What a whole run says at a glance."""

    text: str  # one line: the steps, then the first NaN/Inf or that there is none
    bad_label: str | None  # the label of the first checkpoint with a NaN or Inf


def run_summary(steps: pd.DataFrame, run_dir: str) -> RunSummary:
    """The one line above the Compare tabs, from the steps records of the run in ``run_dir``
    (with ``save`` and ``label``): its checkpoints and steps, and the first NaN or Inf (the
    page shows it as an error) or how many checkpoints and variables are free of them."""
    bad = first_nonfinite(steps.to_dict("records"))
    labels = list(steps.drop_duplicates("save").sort_values("save")["label"])
    numbered = labels[0].startswith("step ")
    step_list = ", ".join(label.split(" ", 1)[1] for label in labels)
    glance = (f"Run `{run_dir}`: {len(labels)} checkpoints "
              + (f"at steps {step_list}. " if numbered else
                 "without step numbers (shown in the order saved). "))
    if bad:
        return RunSummary(glance + f"First NaN/Inf at {bad['label']}: `{bad['name']}` "
                          f"({bad['nan']} NaN, {bad['inf']} Inf). See the Whole run tab.",
                          bad["label"])
    return RunSummary(glance + f"No NaN or Inf in {len(labels)} checkpoints "
                      f"({steps['name'].nunique()} variables); norms and update ratios in "
                      "the Whole run tab.", None)
