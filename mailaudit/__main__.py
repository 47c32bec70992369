"""`python -m mailaudit VERB`: the same entry point as the `mailaudit` console script."""

import sys

from mailaudit.cli import main

# Guarded: ingest worker processes (ingest/pool.py) are spawned, and spawn re-imports the main
# module of `python -m mailaudit` in each worker; it must not run the CLI there.
if __name__ == "__main__":
    sys.exit(main())
