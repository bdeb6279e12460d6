"""python -m tools.ood: the out-of-vocabulary study (tools/ood/cli.py)."""

import sys

from tools.ood.cli import main

sys.exit(main())
