"""The statistics engine: chunk reductions, chunked reads, per-tensor statistics, diffs, runs.

Works on what ``tpuckpt_viz.checkpoint`` opens; imports no Streamlit, pandas or plotly.
"""
