"""The out-of-vocabulary study's former entry point: `python -m tools.ood_experiment ...` runs
`python -m tools.ood ...` (tools/ood/)."""

import sys

from tools.ood.cli import main

if __name__ == '__main__':
    sys.exit(main())
