"""Browse and Compare on Keras files through Streamlit's AppTest (issue 11): a ``.keras``
archive with its Adam state, and a ``ModelCheckpoint`` run of ``.weights.h5`` files. Values
shown are checked against h5py on the same datasets."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from apphelpers import COMPARE, open_app
from test_app_browse import (assert_stats_match, errors, rerun, select_tensor, shown_stats,
                             variable_table)


def test_browse_keras_archive(app_env, keras3_run):
    at = open_app(ckpt=str(keras3_run["keras"]))
    assert not errors(at)
    table = variable_table(at)
    names = set(table["name"])
    assert set(keras3_run["weight_paths"]) <= names
    kernel = table[table["name"] == "hidden/kernel"].iloc[0]
    assert kernel["kind"] == "weight"
    if "slot_of_name" in table.columns:
        assert len(table[table["slot_of_name"] == "hidden/kernel"]) == 2
    at = select_tensor(at, "hidden/kernel")
    with h5py.File(keras3_run["weights"]) as f:
        value = f[kernel["key"]][()]
    assert_stats_match(shown_stats(at), value)


def test_compare_keras_run(app_env, keras3_run):
    files = sorted(keras3_run["run"].iterdir())
    at = open_app(COMPARE, a=str(files[0]), b=str(files[-1]), run=str(keras3_run["run"]))
    assert not errors(at)
    frames = [d.value for d in at.dataframe if {"name", "status"} <= set(d.value.columns)]
    assert frames, "no diff table"
    diff = frames[0]
    row = diff[diff["name"] == "hidden/kernel"].iloc[0]
    assert row["status"] == "changed"
    with h5py.File(files[0]) as fa, h5py.File(files[-1]) as fb:
        a = fa["layers/dense/vars/0"][()].astype(np.float64)
        b = fb["layers/dense/vars/0"][()].astype(np.float64)
    if "delta_l2" in diff.columns:
        assert float(row["delta_l2"]) == pytest.approx(np.linalg.norm(b - a), rel=1e-4)
    _ = rerun
