#!/usr/bin/env bash
# Train the two shipped quarter-width models (README "Shipped models") with the project's own commands, resumably:
# call it again after an interruption and it continues where it stopped. Stage 1 renders data/synth64k (once) and
# trains ABINet-Vision and ConCLR-Vision on it side by side, one torch thread each.
#   PYTHON=.venv/bin/python bash tools/train_shipped.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=1
if [ ! -f data/synth64k/train/data.mdb ] || [ ! -f data/synth64k/test/data.mdb ]; then
  "$PYTHON" tools/render_synthetic.py --output data/synth64k --num_train 64000 --num_test 1000 --seed 1 --overwrite
fi
pids=()
for model in abinet_vision_quarter conclr_vision_quarter; do
  bash tools/run_resumable.sh "configs/shipped/$model.yaml" "log/shipped/$model" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
