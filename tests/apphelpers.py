"""Helpers for the tests that drive the dashboard through Streamlit's AppTest.

Imported as ``from apphelpers import ...``: ``tests/`` has no ``__init__.py``, so pytest's
default (prepend) import mode puts it on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "tpuckpt_viz" / "dashboard" / "app.py")
# Page paths as AppTest.switch_page takes them: relative to the entry script's folder.
BROWSE = "app_pages/browse.py"
COMPARE = "app_pages/compare.py"
INFER = "app_pages/infer.py"


def clear_caches() -> None:
    """Empty Streamlit's ``st.cache_data`` and ``st.cache_resource``."""
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def open_app(page: str | None = None, timeout: int = 120, **query) -> AppTest:
    """Run the dashboard entry script with these query parameters, on ``page`` (default: Browse).

    Asserts that no exception reached the page; returns the ``AppTest``.
    """
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    for k, v in query.items():
        at.query_params[k] = str(v)
    if page:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
