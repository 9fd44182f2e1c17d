"""Browser test of Browse and Compare on a Keras ``ModelCheckpoint`` run (issue 11): Playwright
drives Chromium against the real dashboard (the ``server`` of tests/test_e2e.py), opened with
``?ckpt=`` on a ``.keras`` archive and ``?a=&b=`` on two epochs of the run."""

from __future__ import annotations

import shutil
from urllib.parse import quote

import h5py
import numpy as np
import pytest
from test_e2e import (assert_right_stats, browser, errors, page, select_option,  # noqa: F401
                      server, shot, shown_stats, wait_idle)

pytestmark = pytest.mark.e2e


def test_browse_and_compare_a_keras_run(server, page, keras3_run):  # noqa: F811
    home = server["home"] / "keras"  # inside the server's allowed roots
    shutil.copytree(keras3_run["run"], home / "run")
    shutil.copy(keras3_run["keras"], home / "model.keras")
    page.goto(server["url"] + "/?ckpt=" + quote(str(home / "model.keras")))
    wait_idle(page)
    # A fresh server's first run can start after wait_idle's grace period: wait for the page.
    page.get_by_text("model.keras").first.wait_for()
    wait_idle(page)
    select_option(page, "Tensor", "hidden/kernel")
    wait_idle(page)
    page.get_by_role("heading", name="hidden/kernel").wait_for()
    x = np.asarray(keras3_run["values"]["hidden/kernel"], np.float64).ravel()
    assert_right_stats(shown_stats(page), {"min": x.min(), "max": x.max(), "mean": x.mean(),
                                           "std": x.std(), "L2 norm": float(np.linalg.norm(x))})
    page.get_by_role("heading", name="Optimizer slots").wait_for()
    assert not errors(page)
    shot(page, "browse_keras")

    files = sorted((home / "run").iterdir())
    page.goto(server["url"] + "/compare?a=" + quote(str(files[0])) + "&b="
              + quote(str(files[-1])))
    wait_idle(page)
    changed = page.locator("[data-testid=stMetric]").filter(has_text="changed").first
    assert int(changed.locator("[data-testid=stMetricValue]").inner_text()) > 0
    assert not errors(page)
    with h5py.File(files[0]) as f:
        assert f["layers/dense/vars/0"].shape == (2, 3)
    shot(page, "compare_keras")
