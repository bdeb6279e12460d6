#!/usr/bin/env bash
# Train one config with main.py so that a second call continues it: a finished run (<workdir>/done) is skipped and
# an interrupted one resumes from its newest periodic checkpoint. Output goes to <workdir>.stdout.
# With a MILESTONE (a weights-only release of this run, kept in git) and no periodic checkpoint on this machine,
# the run continues from the milestone's weights and iteration with a fresh optimiser and a 200-iteration warm-up
# (config written to <workdir>.continue.yaml): a fresh clone picks a long run up where its last milestone left it.
# A milestone released with --finished (tools/release_checkpoint.py) marks the run done.
#   OMP_NUM_THREADS=1 bash tools/run_resumable.sh <config.yaml> <workdir = global.workdir/global.name> [MILESTONE]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
config=$1 workdir=$2 milestone=${3:-}
name=$(basename "$workdir")
[ -f "$workdir/done" ] && { echo "$name: done already"; exit 0; }
resume=()
if compgen -G "$workdir/${name}_*.pth" > /dev/null; then
  resume=(--resume "$workdir")
elif [ -n "$milestone" ] && [ -f "$milestone" ]; then
  status=0
  "$PYTHON" -m tools.continue_config --config "$config" --milestone "$milestone" --output "$workdir.continue.yaml" \
    || status=$?
  case $status in  # 3 is tools/continue_config.py FINISHED
    0) config=$workdir.continue.yaml ;;
    3) mkdir -p "$workdir" && touch "$workdir/done" && echo "$name: done already (its milestone)"; exit 0 ;;
    *) exit "$status" ;;
  esac
fi
echo "$name: starting ${resume[*]}"
mkdir -p "$(dirname "$workdir")"
status=0
"$PYTHON" main.py --config="$config" "${resume[@]}" >> "$workdir.stdout" 2>&1 || status=$?
case $status in
  0) touch "$workdir/done" && echo "$name: finished" ;;
  130|143) echo "$name: stopped by a signal, its checkpoint saved (see $workdir.stdout): the same command continues it"
           exit "$status" ;;
  *) echo "$name: FAILED (see $workdir.stdout)"; exit 1 ;;
esac
