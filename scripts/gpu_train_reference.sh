#!/usr/bin/env bash
# Trains the reference models on one GPU (see RESULTS.md): an MFU probe of a 95M-parameter
# shape alone, then 8 matched small models at once (7 attention variants + Bigram-Backcopy).
# Usage on the GPU host, from the repo root:  OUT=/some/dir bash scripts/gpu_train_reference.sh
set -u
OUT=${OUT:-runs/gpu_out}
R=/tmp/r; mkdir -p $R "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
if [ -z "${SKIP_PROBE:-}" ]; then
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout 150 python3 -m experiments.train \
    --config=configs/train.py:medium,time=75 --config.data.max_bytes=200000000 \
    --workdir=$R/medium > $R/medium.log 2>&1
  tail -3 $R/medium/metrics.csv
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.1
TRAIN_S=${TRAIN_S:-330}
STEPS=${STEPS:-2500}
declare -A RUNS=(
  [softmax]="small,passkey=8" [sinktoken]="small,passkey=8,sinks=1"
  [sinklogit]="small,passkey=8,attn=sink_logit" [offbyone]="small,passkey=8,attn=off_by_one"
  [softpick]="small,passkey=8,attn=softpick" [sigmoid]="small,passkey=8,attn=sigmoid"
  [gated]="small,passkey=8,gated=true" [backcopy]="backcopy")
# SKIP_PROBE=1 STEPS=1000 TRAIN_S=560: the variants only, matched in steps (= tokens)
[ -n "${SKIP_PROBE:-}" ] && unset 'RUNS[backcopy]'

for name in "${!RUNS[@]}"; do
  setsid python3 -m experiments.train --config=configs/train.py:${RUNS[$name]},time=$TRAIN_S,steps=$STEPS \
    --config.data.max_bytes=200000000 --workdir=$R/$name > $R/$name.log 2>&1 &
done
wait
for name in "${!RUNS[@]}"; do
  cp $R/$name.log $R/$name/train.log; rm -rf $R/$name/ckpt
done
tar -C $R -cf "$OUT/models_a.tar" softmax sinktoken
tar -C $R -cf "$OUT/models_b.tar" sinklogit offbyone
tar -C $R -cf "$OUT/models_c.tar" softpick sigmoid
if [ -z "${SKIP_PROBE:-}" ]; then
  cp $R/medium/metrics.csv $R/medium_metrics.csv
  tar -C $R -cf "$OUT/models_d.tar" gated backcopy medium_metrics.csv medium.log
else
  tar -C $R -cf "$OUT/models_d.tar" gated
fi
printf "%-10s %6s %10s %10s %12s\n" run steps loss heldout tok/s
for name in ${SKIP_PROBE:-medium} "${!RUNS[@]}"; do
  [ -f "$R/$name/metrics.csv" ] || continue
  python3 - "$R/$name/metrics.csv" "$name" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
last = rows[-1]; ho = [r["heldout_loss"] for r in rows if r["heldout_loss"]]
print(f"{sys.argv[2]:<10} {last['step']:>6} {float(last['loss']):10.4f} {ho[-1][:8] if ho else '-':>10} {float(last['tokens_per_s']):12.0f} mfu={last['mfu'][:6]}")
PY
done
