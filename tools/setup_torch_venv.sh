#!/usr/bin/env bash
# Create tools/.venv-torch: a throwaway torch/kvpress/transformers environment used
# ONLY to (re)generate the committed test fixtures under tests/fixtures/{kvpress,hf}/
# (tools/make_kvpress_fixtures.py, tools/make_hf_fixtures.py). Our test venv never
# needs torch: the fixtures are read with numpy + safetensors only.
#
# Pins: python3.11, torch==2.13.0 (CPU wheel), kvpress==0.5.5 (resolves transformers
# 5.2.x), safetensors, tokenizers. Idempotent: re-running re-uses the venv and only
# installs what is missing. Usage:  bash tools/setup_torch_venv.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/tools/.venv-torch"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "need python 3.11 (got $("$PY" --version))" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

have() {  # have PKG VERSION  -> true if PKG==VERSION (or any version if VERSION empty)
  "$VPY" - "$1" "${2:-}" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
name, want = sys.argv[1], sys.argv[2]
try:
    got = version(name)
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if (not want or got.split("+")[0] == want) else 1)
PYEOF
}

# 1. torch first, CPU build. torch==2.13.0 resolves to the local 2.13.0+cpu wheel
#    (pip's find-links); refuse anything that brings CUDA.
if ! have torch 2.13.0; then
  "$VPY" -m pip install --quiet "torch==2.13.0"
fi
"$VPY" - <<'PYEOF'
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert torch.version.cuda is None, f"CUDA torch installed ({torch.version.cuda}); want the CPU wheel"
PYEOF

# 2. kvpress (pulls transformers 5.2.x etc.). Constrain torch so pip cannot swap it.
if ! have kvpress 0.5.5 || ! have safetensors || ! have tokenizers; then
  CONSTRAINT="$(mktemp)"; trap 'rm -f "$CONSTRAINT"' EXIT
  echo "torch==$("$VPY" -c 'import torch; print(torch.__version__)')" > "$CONSTRAINT"
  "$VPY" -m pip install --quiet -c "$CONSTRAINT" "kvpress==0.5.5" safetensors tokenizers
fi

"$VPY" - <<'PYEOF'
import torch, transformers, kvpress, safetensors, tokenizers
from importlib.metadata import version
assert torch.version.cuda is None
assert version("kvpress") == "0.5.5", version("kvpress")
assert transformers.__version__.startswith("5.2"), transformers.__version__
print(f"ok: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"kvpress {version('kvpress')}, safetensors {safetensors.__version__}, "
      f"tokenizers {tokenizers.__version__}")
PYEOF
