"""tpuckpt-viz dashboard: the Streamlit frame. Pages live in tpuckpt_viz/app_pages/."""

import streamlit as st

st.set_page_config(page_title="tpuckpt-viz", page_icon=":material/memory:", layout="wide")

PAGES = [
    st.Page("tpuckpt_viz/app_pages/browse.py", title="Browse", icon=":material/table_view:",
            url_path="browse", default=True),
    st.Page("tpuckpt_viz/app_pages/compare.py", title="Compare", icon=":material/compare:",
            url_path="compare"),
    st.Page("tpuckpt_viz/app_pages/infer.py", title="Infer", icon=":material/play_arrow:",
            url_path="infer"),
]

st.navigation(PAGES).run()
