#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs lcache (editable, with test extras) if missing.
# Idempotent: re-running only reinstalls when pyproject.toml changed. Source or run it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
find_python() {
  for c in python3.12 "$HOME/.pyenv/versions/3.12."*/bin/python3.12 /usr/bin/python3.12; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  echo "error: Python 3.12 not found (install it, e.g. 'pyenv install 3.12')" >&2
  return 1
}
if [ ! -x "$venv/bin/python" ]; then
  py=$(find_python)
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  touch "$stamp"
fi
