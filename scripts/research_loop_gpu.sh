#!/usr/bin/env bash
# The research loop's GPU measurements on the reference models (RESULTS.md "Wave 2"), one call:
# the RULER-style grid (configs/ruler.py:gpu, cut at RULER_S seconds: a cut run keeps the cells
# it finished and can go on with --config.resume), the sink analysis of both models and
# streaming perplexity at caches 64 and 128 (window only vs sinks vs recompute, common targets).
# MODELS_DIR holds softmax/ and sinktoken/: saved models (models/) or training workdirs
# (scripts/train_reference.sh's OUT_DIR, whose models are softmax/model, sinktoken/model).
#   usage: scripts/research_loop_gpu.sh OUT_DIR [MODELS_DIR]
set -uo pipefail
out=${1:?output directory}; root=${2:-models}; python=${PYTHON:-python3}
model_dir() { [ -f "$root/$1/model/config.json" ] && echo "$root/$1/model" || echo "$root/$1"; }
softmax=$(model_dir softmax); sinktoken=$(model_dir sinktoken)
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"  # autotuning: 25% of compile time
mkdir -p "$out"
SECONDS=0
timeout "${RULER_S:-330}" $python -m experiments.ruler \
  --config="configs/ruler.py:gpu,model=$softmax" --workdir="$out/ruler" >"$out/ruler.log" 2>&1
echo "ruler: rc $?, ${SECONDS} s"
$python -m experiments.sinks --config=configs/sinks.py:committed \
  --config.checkpoints="softmax=$softmax,sinktoken=$sinktoken" \
  --workdir="$out/sinks" >"$out/sinks.log" 2>&1
echo "sinks: rc $?, ${SECONDS} s"
for run in softmax:64 sinktoken:64 softmax:128; do
  model=${run%:*}; cache=${run#*:}
  $python -m experiments.stream_ppl \
    --config="configs/stream_ppl.py:reduced,model=$(model_dir "$model"),tokens=6144,cache=$cache" \
    --config.dense_tokens=4096 --config.recompute_stride=16 \
    --workdir="$out/sppl_${model}_$cache" >"$out/sppl_${model}_$cache.log" 2>&1
  echo "stream_ppl $model cache $cache: rc $?, ${SECONDS} s"
done
