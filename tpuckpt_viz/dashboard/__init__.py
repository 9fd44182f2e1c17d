"""The Streamlit dashboard: entry script, pages, page data (DataFrames), charts, allowed roots.

The only part of the package that imports Streamlit.
"""
