"""`python -m tools.bench`: see `tools.bench.cli`."""

import sys

from .cli import main

sys.exit(main())
