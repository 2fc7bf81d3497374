#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (including the slow end-to-end
# tests through fairseq's console scripts).  Extra arguments go to pytest, e.g.
# `bash scripts/run_tests.sh -m "not slow"` for the quick subset.
#
# The tests run in one pytest-xdist worker per core (at most 4; MEGA_FAIRSEQ_TEST_WORKERS
# overrides, 0 runs them in this process), each worker single-threaded (tests/conftest.py),
# with every test file kept on one worker so its module fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${MEGA_FAIRSEQ_VENV:-.venv}
CORES=$(nproc 2>/dev/null || echo 1)
WORKERS=${MEGA_FAIRSEQ_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}
exec "$VENV/bin/python" -m pytest tests -v --durations=15 -n "$WORKERS" --dist loadfile "$@"
