#!/usr/bin/env bash
# The test command: install (once), lint with ruff, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup_env.sh
ruff check .
python -m pytest "$@"
