"""`python -m explorer` runs the unclip-explorer command line."""
import sys

from explorer.cli import main

sys.exit(main())
