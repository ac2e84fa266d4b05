#!/usr/bin/env bash
# One command that proves the package on a real NVIDIA GPU (about 7.5 minutes on an H100/H200):
# the CUDA parity cases of every kernel and the end-to-end decode, then the studies
# benchmarks.graph_attention, .marginals and .verify_cost (each run as `python -m`); results
# in benchmarks/results/gpu/.
#
#   bash scripts/gpu_check.sh                 # on the GPU box
#   bash scripts/gpu_check.sh --small         # smoke sizes on any machine (CPU: interpreter)
#   PYTHON=/path/to/python bash scripts/gpu_check.sh --out DIR --steps parity,verify_cost
#
# Needs: Python >= 3.10 with torch (CUDA build) and triton. Nothing else: no pip, no network,
# no pytest; the checkout is put on PYTHONPATH (no install). Without CUDA it says so in one
# line and exits 2. Options: python -m benchmarks.gpu_check --help.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$PY' (set PYTHON=/path/to/python)"
    exit 2
fi
# The checkout on PYTHONPATH makes `benchmarks` importable from any working directory, so that
# a relative --out stays relative to where the command was typed.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu_check "$@"
