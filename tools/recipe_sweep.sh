#!/usr/bin/env bash
# Run the recipe sweep (configs/recipes/*.yaml, or the configs given) with main.py, JOBS at a time with
# THREADS torch threads each; resumable: a finished run (log/recipe_sweep/<name>/done) is skipped and an
# interrupted one continues from its newest periodic checkpoint. Logs go to log/recipe_sweep/<name>/.
#   JOBS=2 THREADS=1 bash tools/recipe_sweep.sh [configs/recipes/a.yaml ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
JOBS=${JOBS:-1}
THREADS=${THREADS:-2}
run_one() {
  local config=$1 name workdir
  name=$(basename "$config" .yaml)
  workdir=log/recipe_sweep/$name
  [ -f "$workdir/done" ] && { echo "$name: done already"; return 0; }
  local resume=()
  compgen -G "$workdir/${name}_*.pth" > /dev/null && resume=(--resume "$workdir")
  echo "$name: starting ${resume[*]}"
  OMP_NUM_THREADS=$THREADS "$PYTHON" main.py --config="$config" "${resume[@]}" > "$workdir.stdout" 2>&1 \
    && touch "$workdir/done" && echo "$name: finished" || echo "$name: FAILED (see $workdir.stdout)"
}
export -f run_one
export PYTHON THREADS
mkdir -p log/recipe_sweep
if [ $# -eq 0 ]; then set -- configs/recipes/*.yaml; fi
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c 'run_one "$@"' _ {}
