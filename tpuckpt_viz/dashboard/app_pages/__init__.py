"""Thin Streamlit pages: they pick inputs, call the core, cache, and render."""
