#!/usr/bin/env bash
# What bought what on the real benchmarks: quarter-width ABINet-Vision at a fixed budget (3,000 iterations, the
# plain shipped recipe's schedule), renderer (plain vs scene) x ABINet's augmentation (off vs on), one run each.
# The plain/off cell is the shipped plain recipe's stage 1 (log/abinet_vision_quarter here); this trains the other
# three (configs/ablation/ here), resumably, and tests each best checkpoint on its held-out renders and every real
# benchmark in ../shared/benchmarks (log/ablation/<name>.test.stdout here). Needs data/scene300k (train.sh).
#   PYTHON=.venv/bin/python bash experiments/shipped_models/ablation.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${THREADS:-2}
if [ ! -f data/synth64k/train/data.mdb ] || [ ! -f data/synth64k/test/data.mdb ]; then
  "$PYTHON" -m tools.render_synthetic --output data/synth64k --num_train 64000 --num_test 1000 --seed 1 --overwrite
fi
source tools/benchmark_roots.sh
for name in plain_aug scene_noaug scene_aug; do
  run=experiments/shipped_models/log/ablation/$name
  bash tools/run_resumable.sh "experiments/shipped_models/configs/ablation/$name.yaml" "$run"
  if [ ! -f "$run.test.stdout" ]; then
    data=$(dirname "$("$PYTHON" -c "from configuration import Config; print(Config('experiments/shipped_models/configs/ablation/$name.yaml').dataset_test_roots[0])")")
    "$PYTHON" main.py --config="experiments/shipped_models/configs/ablation/$name.yaml" --phase test --checkpoint "$run/best-$name.pth" \
      --image_only --test_root "$data/test" "${BENCHMARK_ROOTS[@]}" > "$run.test.stdout.tmp" 2>&1
    mv "$run.test.stdout.tmp" "$run.test.stdout"
  fi
done
