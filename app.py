"""``streamlit run app.py`` in the repository: runs the packaged dashboard entry script."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent / "tpuckpt_viz" / "dashboard" / "app.py"),
               run_name="__main__")
