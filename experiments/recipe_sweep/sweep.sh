#!/usr/bin/env bash
# Run the recipe sweep (experiments/recipe_sweep/configs/*.yaml, or the configs given) with main.py, JOBS at a time with
# THREADS torch threads each; resumable (tools/run_resumable.sh). Logs go to experiments/recipe_sweep/log/<name>/.
#   JOBS=2 THREADS=1 bash experiments/recipe_sweep/sweep.sh [experiments/recipe_sweep/configs/a.yaml ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${JOBS:-1}
export OMP_NUM_THREADS=${THREADS:-2}
if [ $# -eq 0 ]; then set -- experiments/recipe_sweep/configs/*.yaml; fi
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c \
  'bash tools/run_resumable.sh "$1" "experiments/recipe_sweep/log/$(basename "$1" .yaml)" || true' _ {}
