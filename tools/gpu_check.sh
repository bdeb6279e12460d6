#!/usr/bin/env bash
# GPU readiness check: the CUDA tests, the benchmark's GPU rows, a short full-size bf16 training run and the
# study's gpu preset cut to fit, each part with its own time limit, in at most 6 minutes on one NVIDIA GPU;
# results in log/gpu/<card name>/ (summary.md). Arguments pass through to tools/gpu_check.py (--help).
#   bash tools/gpu_check.sh                          # a GPU machine with the project installed (.venv or python3)
#   bash tools/gpu_check.sh --wheelhouse DIR         # an offline node with only a CUDA torch: installs the rest
#                                                    # from DIR (made with pip download) into .venv first
#   bash tools/gpu_check.sh --archive DIR            # also packs DIR/gpu_check.tar.gz, to copy off the node
#   bash tools/gpu_check.sh --dry-run                # the same path on the CPU, tiny sizes (the test suite runs it)
# The interpreter: $PYTHON if set, else .venv/bin/python when its torch sees a GPU (or for --dry-run), else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ]; then
    if [[ " $* " == *" --dry-run "* ]] || .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
      PYTHON=.venv/bin/python
    fi
  fi
fi
exec "$PYTHON" -m tools.gpu_check --python "$PYTHON" "$@"
