#!/usr/bin/env bash
# The main command: creates the virtualenv if missing, then runs the headline demo on the CPU
# (StreamingLLM on our two reference models: window only vs sinks + window vs recomputation).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/venv.sh
JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} .venv/bin/python -m experiments.demo \
  --config=configs/demo.py --workdir="${1:-runs/demo}"
