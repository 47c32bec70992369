"""`python -m mailaudit VERB`: the same entry point as the `mailaudit` console script."""

import sys

from mailaudit.cli import main

# Guarded, as an entry module should be: importing it (a tool, a spawned process) must never run the CLI.
if __name__ == "__main__":
    sys.exit(main())
