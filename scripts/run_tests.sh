#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (including the slow end-to-end
# tests through fairseq's console scripts).  Extra arguments go to pytest, e.g.
# `bash scripts/run_tests.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${MEGA_FAIRSEQ_VENV:-.venv}
exec "$VENV/bin/python" -m pytest tests -v --durations=15 "$@"
