"""`python -m wsss` entry point."""

import sys

from wsss.cli import main

sys.exit(main())
