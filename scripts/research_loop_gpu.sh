#!/usr/bin/env bash
# The research loop's GPU measurements on the reference models (RESULTS.md "Wave 2"), one call:
# the RULER-style grid (configs/ruler.py:gpu, cut at RULER_S seconds: a cut run keeps the cells
# it finished and can go on with --config.resume), the sink analysis of both models and
# streaming perplexity at caches 64 and 128 (window only vs sinks vs recompute, common targets).
#   usage: scripts/research_loop_gpu.sh OUT_DIR [MODELS_DIR]
set -uo pipefail
out=${1:?output directory}; models=${2:-models}; python=${PYTHON:-python3}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"  # autotuning: 25% of compile time
mkdir -p "$out"
SECONDS=0
timeout "${RULER_S:-330}" $python -m experiments.ruler \
  --config="configs/ruler.py:gpu,model=$models/softmax" --workdir="$out/ruler" >"$out/ruler.log" 2>&1
echo "ruler: rc $?, ${SECONDS} s"
$python -m experiments.sinks --config=configs/sinks.py:committed \
  --config.checkpoints="softmax=$models/softmax,sinktoken=$models/sinktoken" \
  --workdir="$out/sinks" >"$out/sinks.log" 2>&1
echo "sinks: rc $?, ${SECONDS} s"
for run in softmax:64 sinktoken:64 softmax:128; do
  model=${run%:*}; cache=${run#*:}
  $python -m experiments.stream_ppl \
    --config="configs/stream_ppl.py:reduced,model=$models/$model,tokens=6144,cache=$cache" \
    --config.dense_tokens=4096 --config.recompute_stride=16 \
    --workdir="$out/sppl_${model}_$cache" >"$out/sppl_${model}_$cache.log" 2>&1
  echo "stream_ppl $model cache $cache: rc $?, ${SECONDS} s"
done
