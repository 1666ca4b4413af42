"""`python -m encdec` runs the command line."""

import sys

from encdec.cli import main

sys.exit(main())
