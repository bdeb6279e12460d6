"""python -m experiments.oov_study: the out-of-vocabulary study (experiments/oov_study/cli.py)."""

import sys

from runtime import quiet_start

quiet_start.install()  # first: Ctrl-C during the slow imports ends in one line

from experiments.oov_study.cli import main  # noqa: E402

sys.exit(main())
