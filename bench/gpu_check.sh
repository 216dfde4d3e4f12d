#!/usr/bin/env bash
# From anywhere: the repository's venv python ($PYTHON overrides) runs scripts/gpu_check.py; output to the terminal and to bench-out/gpu_check_<host>_<time>.txt.
cd "$(dirname "$0")/.." && mkdir -p bench-out && set -o pipefail && "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py "$@" 2>&1 | tee "bench-out/gpu_check_$(hostname -s)_$(date +%Y%m%d-%H%M%S).txt"
