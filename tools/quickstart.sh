#!/usr/bin/env bash
# Quick start on a fresh machine: install (fonts too, when apt-get is there), render the synthetic word images,
# train ConCLR-Vision on them from the shipped ABINet-Vision weights (12-17 minutes in all on 2 CPU cores), then
# evaluate the best checkpoint on the held-out renders and, when ../shared/benchmarks is present, on the real
# benchmark LMDBs.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup_env.sh
bash tools/install_render_assets.sh
CONFIG=configs/quickstart_conclr_vision_model.yaml
if [ ! -f data/synth/train/data.mdb ] || [ ! -f data/synth/test/data.mdb ]; then
  python -m tools.render_synthetic --output data/synth --num_train 20000 --num_test 1000 --seed 0 --overwrite
fi
python main.py --config="$CONFIG"
source tools/benchmark_roots.sh
TEST_ROOTS=(data/synth/test "${BENCHMARK_ROOTS[@]}")
python main.py --config="$CONFIG" --phase test --checkpoint workdir/quickstart-conclr/best-quickstart-conclr.pth \
  --test_root "${TEST_ROOTS[@]}"
echo "work directory: workdir/quickstart-conclr (train.txt, test.txt, test_results.csv, TensorBoard events," \
     "checkpoints); TensorBoard: .venv/bin/tensorboard --logdir workdir"
