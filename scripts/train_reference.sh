#!/usr/bin/env bash
# Trains the two v2 reference models side by side on one GPU (the recipe RESULTS.md reports):
# softmax and one learnable sink token, configs/train.py:ref (8.1 M parameters, 8 layers, 4
# heads of 64 with their own keys and values, context 2048, batch 32, lr 2e-3, weight decay 0.5,
# BOS on every row, 8 of 32 rows RULER-style task rows whose answer tokens weigh ANSWER_WEIGHT),
# each stopping after SECONDS of training or STEPS steps.
#   usage: scripts/train_reference.sh OUT_DIR [SECONDS] [STEPS] [ANSWER_WEIGHT]
set -euo pipefail
out=${1:?output directory}; secs=${2:-470}; steps=${3:-6000}; answer=${4:-16}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45  # two processes share the card
python=${PYTHON:-python3}
for model in softmax sinktoken; do
  sinks=$([ "$model" = sinktoken ] && echo 1 || echo 0)
  $python -m experiments.train \
    --config="configs/train.py:ref,tasks=8,sinks=$sinks,time=$secs,steps=$steps,answer=$answer" \
    --config.data.max_bytes=300000000 --workdir="$out/$model" >"$out/$model.log" 2>&1 &
done
wait
