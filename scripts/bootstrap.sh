#!/usr/bin/env bash
# Creates .venv (if absent) with the locked versions of the dependencies, then exports PATH so
# that `python` is the venv's. Sourced by run_all.sh and run_tests.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSL_LAB_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.ssl-lab-installed"
want="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | cksum)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "ssl-lab needs Python >= 3.10")'
  echo "[bootstrap] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing dependencies into $VENV (first run: a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
  if ! "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.lock" >&2; then
    echo "[bootstrap] the lock file does not install on this platform; using the ranges in pyproject.toml" >&2
    "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" >&2
  fi
  # The project runs in place (each script puts its checkout first on sys.path); this records its
  # metadata and replaces an older install that put `common`, `eval`, ... into site-packages.
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" >&2
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
# glibc: no mmap'd allocations and no trimming — ends the page-fault storms of CPU training (~1.4x).
export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}" MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-100000000000}"
