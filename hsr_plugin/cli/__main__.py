"""`python -m hsr_plugin.cli ...` runs the `hsr` console script."""

import sys

from hsr_plugin.cli import run

sys.exit(run())
