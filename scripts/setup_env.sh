#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install mega-fairseq
# into it in editable mode with its test extras.  Idempotent: a second run only checks.
#
#  * pip is pinned below 24.1: fairseq 0.12.2 requires omegaconf<2.1, whose metadata
#    newer pip rejects.
#  * torch is installed first and pinned to 2.13.0 (on this machine a CPU build on local
#    disk); every later requirement that mentions torch is then already satisfied, so no
#    other (multi-GB CUDA) torch build is ever pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${MEGA_FAIRSEQ_VENV:-.venv}
STAMP="$VENV/.mega-fairseq-installed"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ setup.py -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "[setup] installing pip<24.1, torch==2.13.0 and mega-fairseq (editable) into $VENV"
    "$VENV/bin/python" -m pip install -q "pip<24.1"
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    "$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"expected torch 2.13.0, found {torch.__version__}"
import fairseq, mega_fairseq  # the compatibility hook makes fairseq importable
print(f"[setup] ok: torch {torch.__version__}, fairseq {fairseq.__version__}, mega_fairseq {mega_fairseq.__version__}")
PY
    touch "$STAMP"
fi
