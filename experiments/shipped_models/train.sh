#!/usr/bin/env bash
# Train the two shipped quarter-width models (docs/results.md "Shipped models") with the project's own commands,
# resumably: call it again after an interruption and it continues where it stopped; on a fresh clone without the
# run's periodic checkpoints it continues from the milestone kept in git (log/<model>_scene.milestone.pth here, fresh
# optimiser, short warm-up; a finished stage 1's milestone holds its best weights, released with --finished, and goes
# straight to stage 2).
# ABINet-Vision goes through these stages first (the quick start starts from its release), then ConCLR-Vision, each
# with two torch threads (paths below are relative to this folder):
#   1. render data/scene300k at the repository root (once: 300,000 scene-style renders and 2,000 held-out ones) and
#      train on it (configs/<model>_scene.yaml, ABINet's augmentation on);
#   2. keep stage 1's best weights (by cwr on the held-out renders and the real training crops pooled) as
#      log/<model>_scene/release.pth and test them on the held-out renders and every benchmark in ../shared/benchmarks;
#   3. fine-tune on ../shared/training (configs/<model>_scene_finetune.yaml), release the final weights as
#      checkpoints/<model>.pth at the repository root and test them the same way.
#   PYTHON=.venv/bin/python bash experiments/shipped_models/train.sh [abinet_vision_quarter|conclr_vision_quarter ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${THREADS:-2}
TRAINING=../shared/training
if [ ! -f data/scene300k/train/data.mdb ] || [ ! -f data/scene300k/test/data.mdb ]; then
  bash tools/install_render_assets.sh "$PYTHON"
  "$PYTHON" -m tools.render_synthetic --output data/scene300k --num_train 300000 --num_test 2000 --seed 11 \
    --style scene --font_dirs data/render_assets/fonts --overwrite \
    --real_crops "$TRAINING/IIIT5k_train" "$TRAINING/SVT_train" "$TRAINING/IC15_train"
fi
source tools/benchmark_roots.sh
TEST_ROOTS=(data/scene300k/test "${BENCHMARK_ROOTS[@]}")

newest_checkpoint() {  # the newest periodic checkpoint of a run folder
  ls -t "$1"/"$(basename "$1")"_*.pth | head -n 1
}

stages() {
  local model=$1 pre=experiments/shipped_models/log/$1_scene fine=experiments/shipped_models/log/$1_scene_finetune
  bash tools/run_resumable.sh "experiments/shipped_models/configs/${model}_scene.yaml" "$pre" "$pre.milestone.pth"
  if [ ! -f "$pre/release.pth" ]; then
    local best="$pre/best-${model}_scene.pth"
    [ -f "$best" ] || best="$pre.milestone.pth"  # a fresh clone of a finished stage 1: its milestone is its best
    "$PYTHON" -m tools.release_checkpoint --checkpoint "$best" --output "$pre/release.pth"
    "$PYTHON" main.py --config="experiments/shipped_models/configs/${model}_scene.yaml" --phase test --checkpoint "$pre/release.pth" \
      --test_root "${TEST_ROOTS[@]}" > "$pre.test.stdout" 2>&1
  fi
  bash tools/run_resumable.sh "experiments/shipped_models/configs/${model}_scene_finetune.yaml" "$fine"
  if [ ! -f "checkpoints/$model.pth" ] || [ "checkpoints/$model.pth" -ot "$fine/done" ]; then
    "$PYTHON" -m tools.release_checkpoint --checkpoint "$(newest_checkpoint "$fine")" --output "checkpoints/$model.pth"
    "$PYTHON" main.py --config="experiments/shipped_models/configs/${model}_scene_finetune.yaml" --phase test \
      --checkpoint "checkpoints/$model.pth" --test_root "${TEST_ROOTS[@]}" > "$fine.test.stdout" 2>&1
  fi
}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(abinet_vision_quarter conclr_vision_quarter)
for model in "${models[@]}"; do
  stages "$model"
done
