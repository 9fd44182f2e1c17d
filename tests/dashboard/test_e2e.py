"""Browser tests of every page (issue 6): Playwright drives Debian's Chromium against a real
``streamlit run app.py`` started here on a free local port.

A missing browser fails these tests (it does not skip them): CI installs Chromium. Each test
saves a screenshot under ``test-output/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = os.environ.get("TPUCKPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
BUSY = ("running", "rerunRequested", "stopRequested", "initial")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(demo_run, shared, tmp_path_factory):
    """``streamlit run app.py`` on a free port, with the demo run already made."""
    home = tmp_path_factory.mktemp("e2e")
    demo = home / "demo"
    shutil.copytree(demo_run, demo)  # as `python -m tpuckpt_viz demo DIR` makes it
    port = _free_port()
    env = dict(os.environ, TPUCKPT_DEMO_DIR=str(demo),
               TPUCKPT_ROOTS=os.pathsep.join([str(shared), str(home)]))
    SHOTS.mkdir(parents=True, exist_ok=True)
    log = open(SHOTS.parent / "e2e-server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail("the dashboard did not start: see test-output/e2e-server.log")
        time.sleep(0.3)
    yield {"url": url, "demo": demo, "home": home, "proc": proc}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium "
                    "(CI must run the browser tests)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def wait_idle(page, timeout: float = 120, settle: float = 0.6) -> None:
    """Wait until the script has run and stopped: running -> notRunning, then quiet.

    After a click or a navigation Streamlit may take a moment to start the rerun, so first
    give it up to 3 s to leave ``notRunning``; then wait for ``notRunning`` and require it to
    stay so for ``settle`` seconds (a widget's rerun can follow right after).
    """
    app = page.locator("[data-testid=stApp]")
    app.wait_for(state="attached", timeout=timeout * 1000)

    def state() -> str | None:
        return app.get_attribute("data-test-script-state")

    start = time.monotonic()
    while time.monotonic() - start < 3 and state() == "notRunning":
        time.sleep(0.05)
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        s = state()
        if s == "notRunning":
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle:
                break
        else:
            quiet_since = None
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not finish running (state {s!r})")
        time.sleep(0.1)
    # Spinners of cached functions and progress bars are gone once the run ended.
    assert_no_exception(page)


def assert_no_exception(page) -> None:
    exc = page.locator("[data-testid=stException]")
    if exc.count():
        raise AssertionError("exception on the page: " + exc.first.inner_text()[:2000])


def shot(page, name: str) -> None:
    """A screenshot of the whole page (Streamlit scrolls inside stMain, not the document)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll("
                           "'[data-testid=stMain], [data-testid=stMainBlockContainer]')]"
                           ".map(e => e.scrollHeight), 0)")
    if height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 6000)})
        time.sleep(0.5)  # let plotly re-lay out
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(size)


def select_option(page, label: str, option: str) -> None:
    """Pick ``option`` in the st.selectbox labelled ``label`` (a react-aria combobox)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.get_by_role("combobox", name=label, exact=True)
    for _ in range(3):
        # A rerun that lands while the list is open (the page writing its URL, a lazy chart)
        # redraws the box and closes the list: then open it again.
        box.click()
        box.fill(option)
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=15_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            wait_idle(page)
    raise AssertionError(f"no option {option!r} in the {label!r} box")


def plot_titles(page) -> list[str]:
    return page.locator(".js-plotly-plot .gtitle").evaluate_all(
        "els => els.map(e => e.textContent)")


def grid(frame) -> list[str]:
    """The cell texts of an st.dataframe (its accessible grid), row by row."""
    return frame.locator("[role=gridcell]").evaluate_all("els => els.map(e => e.textContent)")


def shown_stats(page, index: int = 0) -> dict[str, str]:
    """The ``index``-th statistics table on the page as {statistic: text}."""
    frames = page.locator("[data-testid=stDataFrame]").filter(
        has=page.locator("[role=gridcell]", has_text="L2 norm"))
    cells = grid(frames.nth(index))
    return dict(zip(cells[0::2], cells[1::2]))


def reference_stats(prefix: str, name: str) -> dict[str, float]:
    """min, max, mean, std and L2 norm of the tensor ``name``, by numpy on TensorFlow's read."""
    import numpy as np

    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records
    from tpuckpt_viz.tfcompat import tf

    key = next(r["key"] for r in list_records(open_checkpoint(prefix)) if r["name"] == name)
    x = np.asarray(tf().train.load_checkpoint(prefix).get_tensor(key), np.float64).ravel()
    return {"min": x.min(), "max": x.max(), "mean": x.mean(), "std": x.std(),
            "L2 norm": float(np.sqrt(np.sum(x * x)))}


def assert_right_stats(shown: dict[str, str], expected: dict[str, float]) -> None:
    for label, value in expected.items():
        assert float(shown[label]) == pytest.approx(value, rel=2e-5, abs=1e-9), label


def at_least(locator, n: int) -> int:
    """Wait until ``locator`` matches ``n`` elements (dataframes and charts load lazily)."""
    locator.nth(n - 1).wait_for(state="attached")
    return locator.count()


def errors(page) -> list[str]:
    return page.locator("[data-testid=stAlertContentError]").all_inner_texts()


# -- every page ------------------------------------------------------------------------------

def test_browse_demo(server, page):
    page.goto(server["url"] + "/")
    wait_idle(page)
    # The first run of a fresh server can start after wait_idle's grace period: wait for it.
    page.locator("[data-testid=stMetric]").filter(has_text="Variables").first.wait_for()
    wait_idle(page)
    assert page.locator("[data-testid=stMetric]").filter(has_text="Variables").count() == 1
    at_least(page.locator("[data-testid=stDataFrame]"), 4)  # 2 summaries, variables, stats
    select_option(page, "Tensor", "classifier/kernel")
    wait_idle(page)
    page.get_by_role("heading", name="classifier/kernel").wait_for()
    assert_right_stats(shown_stats(page),
                       reference_stats(str(server["demo"] / "ckpt-300"), "classifier/kernel"))
    titles = plot_titles(page)
    assert any(t.startswith("histogram (all") for t in titles), titles
    assert any("heatmap" in t for t in titles), titles
    # Its Adam slots side by side.
    page.get_by_role("heading", name="Optimizer slots").wait_for()
    at_least(page.locator("[data-testid=stDataFrame]").filter(
        has=page.locator("[role=gridcell]", has_text="L2 norm")), 3)
    assert not errors(page)
    shot(page, "browse_demo")


def test_compare_demo(server, page):
    page.goto(server["url"] + "/compare")
    wait_idle(page)
    changed = page.locator("[data-testid=stMetric]").filter(has_text="changed").first
    value = changed.locator("[data-testid=stMetricValue]").inner_text()
    assert int(value) > 0
    at_least(page.locator("[data-testid=stDataFrame]"), 1)
    at_least(page.locator(".js-plotly-plot"), 2)
    assert not errors(page)
    shot(page, "compare_demo")
    page.get_by_role("tab", name="Whole run").click()
    page.locator("[data-testid=stAlertContentSuccess]").first.wait_for()
    assert "7 checkpoints at steps 0, 50, 100" in page.locator(
        "[data-testid=stAlertContentSuccess]").inner_text()
    shot(page, "compare_whole_run")


def test_current_checkpoint_across_pages(server, page):
    """An earlier step opened by link is the one Compare and Infer open; back on Browse, it
    is still there; the URL says so on every page."""
    earlier = str(server["demo"] / "ckpt-150")
    page.goto(server["url"] + "/?ckpt=" + quote(earlier))
    wait_idle(page)
    page.get_by_text(earlier, exact=False).first.wait_for()
    page.get_by_role("link", name="Compare").click()
    wait_idle(page)
    page.get_by_text("A = step 100 · ckpt-100 · B = step 150 · ckpt-150").wait_for()
    assert "b=" + quote(earlier, safe="") in page.url or "ckpt-150" in page.url
    shot(page, "context_compare")
    page.get_by_role("link", name="Infer").click()
    wait_idle(page)
    assert page.get_by_role("combobox", name="Step of this run").input_value() == \
        "step 150 · ckpt-150"
    page.get_by_role("link", name="Browse").click()
    wait_idle(page)
    assert page.locator("[data-testid=stCaptionContainer]").filter(
        has_text="ckpt-150").count() >= 1
    assert "ckpt-150" in page.url
    assert not errors(page)
    shot(page, "context_browse_again")


def run_model(page) -> None:
    page.get_by_role("button", name="Run", exact=True).click()


def device_shown(page) -> str:
    metric = page.locator("[data-testid=stMetric]").filter(has_text="Device").first
    metric.wait_for()
    return metric.locator("[data-testid=stMetricValue]").inner_text()


def test_infer_demo(server, page):
    page.goto(server["url"] + "/infer")
    wait_idle(page)
    run_model(page)
    wait_idle(page)
    assert not errors(page), errors(page)
    assert device_shown(page).startswith("/device:")  # e.g. /device:CPU:0
    page.get_by_role("heading", name="Outputs").wait_for()
    at_least(page.locator("[data-testid=stDataFrame]"), 1)
    shot(page, "infer_demo")


def test_error_is_a_message_not_a_traceback(server, page):
    page.goto(server["url"] + "/?ckpt=" + quote("/nonexistent"))
    wait_idle(page)
    alert = page.locator("[data-testid=stAlertContentError]")
    alert.first.wait_for()
    text = alert.first.inner_text()
    assert "/nonexistent" in text and "Traceback" not in text
    assert page.locator("[data-testid=stMetric]").count() == 0
    shot(page, "browse_error")
    missing = server["home"] / "no-such-run"
    page.goto(server["url"] + "/?ckpt=" + quote(str(missing)))
    wait_idle(page)
    assert "does not exist" in page.locator("[data-testid=stAlertContentError]").first.inner_text()


# -- load ------------------------------------------------------------------------------------

def test_four_sessions_at_once(server, browser):
    """Browsing, comparing and inferring on the same checkpoints from four sessions at once."""
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.engine.diff import diff_checkpoints

    demo = server["demo"]
    a, b = str(demo / "ckpt-50"), str(demo / "ckpt-100")
    # The page counts model variables only (slots, counters and the like left out by default).
    expected_changed = sum(r["status"] == "changed" and r["kind"] in ("weight", "bias", "norm",
                                                                      "stat")
                           for r in diff_checkpoints(open_checkpoint(a), open_checkpoint(b)))
    url = server["url"]
    jobs = {
        "load_browse_1": f"{url}/?ckpt={quote(b)}",
        "load_browse_2": f"{url}/?ckpt={quote(b)}",
        "load_compare": f"{url}/compare?a={quote(a)}&b={quote(b)}&run={quote(str(demo))}",
        "load_infer": f"{url}/infer?ckpt={quote(b)}",
    }
    contexts, pages = [], {}
    try:
        for name in jobs:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            contexts.append(ctx)
            pg = ctx.new_page()
            pg.set_default_timeout(120_000)
            pages[name] = pg
        for name, pg in pages.items():  # all four sessions start before any is waited on
            pg.goto(jobs[name], wait_until="commit")
        for pg in pages.values():
            wait_idle(pg, timeout=240)
        # Second round, again all at once: pick tensors, run the model.
        select_option(pages["load_browse_1"], "Tensor", "block1_ffn_in/kernel")
        select_option(pages["load_browse_2"], "Tensor", "block1_ffn_in/kernel")
        run_model(pages["load_infer"])
        for name, pg in pages.items():
            wait_idle(pg, timeout=240)
            assert not errors(pg), (name, errors(pg))
            shot(pg, name)
        # The right results: both Browse sessions show the same statistics and histogram.
        expected = reference_stats(b, "block1_ffn_in/kernel")
        for name in ("load_browse_1", "load_browse_2"):
            pg = pages[name]
            titles = plot_titles(pg)
            assert any(t.startswith("histogram (all") for t in titles), titles
            assert_right_stats(shown_stats(pg), expected)
        cmp = pages["load_compare"]
        value = cmp.locator("[data-testid=stMetric]").filter(has_text="changed").first.locator(
            "[data-testid=stMetricValue]").inner_text()
        assert int(value) == expected_changed
        at_least(cmp.locator(".js-plotly-plot"), 2)
        assert device_shown(pages["load_infer"]).startswith("/device:")
        pages["load_infer"].get_by_role("heading", name="Outputs").wait_for()
    finally:
        for ctx in contexts:
            ctx.close()
    assert server["proc"].poll() is None  # the server is still up
