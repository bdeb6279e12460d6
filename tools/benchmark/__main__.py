"""`python -m tools.benchmark`: see tools/benchmark/__init__.py."""

import sys

from tools.benchmark.cli import main

sys.exit(main())
