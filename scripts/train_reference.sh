#!/usr/bin/env bash
# Trains the two v2 reference models side by side on one GPU (the recipe RESULTS.md reports):
# softmax and one learnable sink token, configs/train.py:ref (7.9 M parameters, 8 layers, GQA
# 4/2, context 2048, batch 32, lr 2e-3, weight decay 0.5, BOS on every row, 8 of 32 rows
# RULER-style task rows), each stopping after SECONDS of training or STEPS steps. ARGS are
# appended to the config's arguments, e.g. "answer=16,kv=4,ffn=960" (configs/train.py).
#   usage: scripts/train_reference.sh OUT_DIR [SECONDS] [STEPS] [ARGS]
set -euo pipefail
out=${1:?output directory}; secs=${2:-430}; steps=${3:-3300}; args=${4:+,$4}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45  # two processes share the card
python=${PYTHON:-python3}
for model in softmax sinktoken; do
  sinks=$([ "$model" = sinktoken ] && echo 1 || echo 0)
  $python -m experiments.train \
    --config="configs/train.py:ref,tasks=8,sinks=$sinks,time=$secs,steps=$steps$args" \
    --config.data.max_bytes=300000000 --workdir="$out/$model" >"$out/$model.log" 2>&1 &
done
wait
