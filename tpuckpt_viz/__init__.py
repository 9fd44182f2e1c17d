"""tpuckpt-viz: look inside TensorFlow checkpoints (browse, compare, infer).

The core modules return plain records (lists of dicts and dataclasses) and never import
Streamlit; the dashboard pages under ``app_pages/`` and the command line only render them.
"""

__version__ = "0.1.0"
