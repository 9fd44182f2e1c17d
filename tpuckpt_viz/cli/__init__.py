"""The command line: ``python -m tpuckpt_viz`` / ``tpuckpt-viz``; table, JSON and CSV output."""

from tpuckpt_viz.cli.commands import main, main_entry

__all__ = ["main", "main_entry"]
