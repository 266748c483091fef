#!/usr/bin/env bash
# The test command: installs what it needs (.venv), then runs the whole suite on the CPU.
# Extra arguments go to pytest, e.g. ./run_tests.sh tests/test_engine.py -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
ruff check .
exec python -m pytest -q --durations=15 "$@"
