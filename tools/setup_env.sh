#!/usr/bin/env bash
# Create .venv (once) and install requirements.txt into it, pinned to requirements-lock.txt (the exact versions
# CI and the README numbers used); sourced by quickstart.sh and run_tests.sh.
# torch comes from PyPI (on this project's machines pip finds torch/torchvision on local disk).
# Offline (no package index): WHEELHOUSE=DIR (or, run directly, `bash tools/setup_env.sh --wheelhouse DIR`) installs
# from a folder made beforehand with pip download, keeping the machine's own CUDA torch (tools/wheelhouse.py,
# docs/reference.md#installation-without-network).
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" == "$0" && "${1:-}" == "--wheelhouse" ]]; then
  WHEELHOUSE="$(realpath "${2:?--wheelhouse needs a folder}")"
  cd "$(dirname "$0")/.."
fi
if [ -n "${WHEELHOUSE:-}" ]; then
  python3 -m tools.install_wheelhouse "$WHEELHOUSE" --venv .venv
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements-lock.txt 'setuptools<81' wheel
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -c requirements-lock.txt
fi
export PATH="$PWD/.venv/bin:$PATH"
