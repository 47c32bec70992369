"""`python -m mailaudit VERB`: the same entry point as the `mailaudit` console script."""

import sys

from mailaudit.cli import main

sys.exit(main())
