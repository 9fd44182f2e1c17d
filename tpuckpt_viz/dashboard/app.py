"""tpuckpt-viz dashboard: the Streamlit entry script. Pages live in ``app_pages/`` beside it.

Started by ``tpuckpt-viz serve`` (from any folder, as an installed package) or
``streamlit run app.py`` in the repository.
"""

from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent / "app_pages"

st.set_page_config(page_title="tpuckpt-viz", page_icon=":material/memory:", layout="wide")

PAGES = [
    st.Page(PAGES_DIR / "browse.py", title="Browse", icon=":material/table_view:",
            url_path="browse", default=True),
    st.Page(PAGES_DIR / "compare.py", title="Compare", icon=":material/compare:",
            url_path="compare"),
    st.Page(PAGES_DIR / "infer.py", title="Infer", icon=":material/play_arrow:",
            url_path="infer"),
]

st.navigation(PAGES).run()
