"""``python -m tpuckpt_viz``: the command line."""

from tpuckpt_viz.cli import main_entry

if __name__ == "__main__":
    main_entry()
