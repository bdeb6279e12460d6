"""python -m experiments.oov_study: the out-of-vocabulary study (experiments/oov_study/cli.py)."""

import sys

from experiments.oov_study.cli import main

sys.exit(main())
