#!/usr/bin/env bash
# The main command: creates the virtualenv if missing, then runs the headline demo on the CPU
# (StreamingLLM on our two reference models: window only vs sinks + window vs recomputation vs
# dense past the training context; then passkey retrieval: full cache vs streaming_llm vs snapkv
# at 20%). A progress bar replaces absl's INFO log (--verbosity=-1; drop it to see compile and
# throughput lines).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/venv.sh
JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} .venv/bin/python -m experiments.demo \
  --config=configs/demo.py --workdir="${1:-runs/demo}" --verbosity=-1
