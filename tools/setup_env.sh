#!/usr/bin/env bash
# Create .venv (once) and install requirements.txt into it, pinned to requirements-lock.txt (the exact versions
# CI and the README numbers used); sourced by quickstart.sh and run_tests.sh.
# torch comes from PyPI (on this project's machines pip finds torch/torchvision on local disk).
set -euo pipefail
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements-lock.txt 'setuptools<81' wheel
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -c requirements-lock.txt
export PATH="$PWD/.venv/bin:$PATH"
