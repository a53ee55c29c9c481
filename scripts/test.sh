#!/usr/bin/env bash
# The test command: creates the Python 3.12 virtualenv if missing, then lint + the test suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/venv.sh
.venv/bin/ruff check .
# two workers: CI and laptops have >= 2 cores; each test file is independent
.venv/bin/python -m pytest -n 2 --dist loadfile tests "$@"
