#!/usr/bin/env bash
# Run the recipe sweep (configs/recipes/*.yaml, or the configs given) with main.py, JOBS at a time with
# THREADS torch threads each; resumable (tools/run_resumable.sh). Logs go to log/recipe_sweep/<name>/.
#   JOBS=2 THREADS=1 bash tools/recipe_sweep.sh [configs/recipes/a.yaml ...]
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-1}
export OMP_NUM_THREADS=${THREADS:-2}
if [ $# -eq 0 ]; then set -- configs/recipes/*.yaml; fi
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c \
  'bash tools/run_resumable.sh "$1" "log/recipe_sweep/$(basename "$1" .yaml)" || true' _ {}
