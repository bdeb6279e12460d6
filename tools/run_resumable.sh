#!/usr/bin/env bash
# Train one config with main.py so that a second call continues it: a finished run (<workdir>/done) is skipped and
# an interrupted one resumes from its newest periodic checkpoint. Output goes to <workdir>.stdout.
#   OMP_NUM_THREADS=1 bash tools/run_resumable.sh <config.yaml> <workdir = global.workdir/global.name>
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
config=$1 workdir=$2
name=$(basename "$workdir")
[ -f "$workdir/done" ] && { echo "$name: done already"; exit 0; }
resume=()
compgen -G "$workdir/${name}_*.pth" > /dev/null && resume=(--resume "$workdir")
echo "$name: starting ${resume[*]}"
mkdir -p "$(dirname "$workdir")"
if "$PYTHON" main.py --config="$config" "${resume[@]}" > "$workdir.stdout" 2>&1; then
  touch "$workdir/done" && echo "$name: finished"
else
  echo "$name: FAILED (see $workdir.stdout)"; exit 1
fi
