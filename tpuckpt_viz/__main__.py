"""``python -m tpuckpt_viz``: the command line."""

import sys

from tpuckpt_viz.cli import main

if __name__ == "__main__":
    sys.exit(main())
