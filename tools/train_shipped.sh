#!/usr/bin/env bash
# Train the two shipped quarter-width models (README "Shipped models") with the project's own commands, resumably:
# call it again after an interruption and it continues where it stopped. ABINet-Vision goes through these stages
# first (the quick start starts from its release), then ConCLR-Vision, each with two torch threads:
#   1. render data/synth64k (once) and train on it (configs/shipped/<model>.yaml);
#   2. keep stage 1's best weights (by held-out render cwr) as log/shipped/<model>/release.pth and test them on the
#      held-out renders and every real benchmark in ../shared/benchmarks;
#   3. fine-tune on ../shared/training (configs/shipped/<model>_finetune.yaml), release the final weights as
#      checkpoints/<model>.pth and test them the same way.
#   PYTHON=.venv/bin/python bash tools/train_shipped.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${THREADS:-2}
if [ ! -f data/synth64k/train/data.mdb ] || [ ! -f data/synth64k/test/data.mdb ]; then
  "$PYTHON" -m tools.render_synthetic --output data/synth64k --num_train 64000 --num_test 1000 --seed 1 --overwrite
fi
TEST_ROOTS=(data/synth64k/test)
for name in IIIT5k_3000 SVT IC13_857 IC15_2077 SVTP CUTE80; do
  if [ -f "../shared/benchmarks/$name/data.mdb" ]; then TEST_ROOTS+=("../shared/benchmarks/$name"); fi
done

newest_checkpoint() {  # the newest periodic checkpoint of a run folder
  ls -t "$1"/"$(basename "$1")"_*.pth | head -n 1
}

stages() {
  local model=$1 pre=log/shipped/$1 fine=log/shipped/$1_finetune
  bash tools/run_resumable.sh "configs/shipped/$model.yaml" "$pre"
  if [ ! -f "$pre/release.pth" ]; then
    "$PYTHON" -m tools.release_checkpoint --checkpoint "$pre/best-$model.pth" --output "$pre/release.pth"
    "$PYTHON" main.py --config="configs/shipped/$model.yaml" --phase test --checkpoint "$pre/release.pth" \
      --test_root "${TEST_ROOTS[@]}" > "$pre.test.stdout" 2>&1
  fi
  bash tools/run_resumable.sh "configs/shipped/${model}_finetune.yaml" "$fine"
  if [ ! -f "checkpoints/$model.pth" ]; then
    "$PYTHON" -m tools.release_checkpoint --checkpoint "$(newest_checkpoint "$fine")" --output "checkpoints/$model.pth"
    "$PYTHON" main.py --config="configs/shipped/${model}_finetune.yaml" --phase test \
      --checkpoint "checkpoints/$model.pth" --test_root "${TEST_ROOTS[@]}" > "$fine.test.stdout" 2>&1
  fi
}
stages abinet_vision_quarter
stages conclr_vision_quarter
