"""What a checkpoint holds: what a PATH means, the formats' readers, names, kinds and records.

Imports no Streamlit, pandas or plotly (``tests/test_layering.py``).
"""
