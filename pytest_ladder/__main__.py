"""`python -m pytest_ladder ...`: the `ladder` command, for environments where the console script is not on PATH."""

import sys

from pytest_ladder.cli import main

if __name__ == "__main__":
    sys.exit(main())
