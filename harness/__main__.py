"""`python -m harness` is the `ftbench` command."""

import sys

from harness.cli import main

sys.exit(main())
