#!/usr/bin/env bash
# Prove a triton version of the supported range (setup.py: triton>=3.6,<3.10; default: the
# oldest, 3.6.0) from this checkout on PYTHONPATH, with no install of the package:
#   1. the compile report: every shipped kernel configuration compiled for sm_90 and sm_80
#      (zero spills, shared memory within the device, tensor-core instructions);
#   2. the smoke parity cases in the Triton interpreter (tests/parity_cases.py --small).
# It builds a throwaway venv outside the repository with torch (CPU build) and that triton.
# triton 3.6's interpreter needs numpy < 2.3 (numpy 2.3 made int() of a 1-element array an
# error, which that interpreter relies on); the compile report needs no numpy.
#
#   bash scripts/check_triton_range.sh [TRITON_VERSION] [VENV_DIR]
#   SPIFFY_TRITON_RANGE_PYTHON=VENV_DIR/bin/python pytest tests/test_compile_report.py -k range
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${1:-3.6.0}"
VENV="${2:-${TMPDIR:-/tmp}/spiffy-triton-$VERSION}"
TORCH_VERSION="2.13.0"  # the CPU build; an unpinned torch would pull a multi-GB CUDA build
PY="$VENV/bin/python"
[ -x "$PY" ] || python3 -m venv "$VENV"
if ! "$PY" -c "import torch, triton, numpy, sys; sys.exit(triton.__version__ != '$VERSION')" 2>/dev/null; then
    "$PY" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" "numpy<2.3"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps "triton==$VERSION"
fi
export PYTHONPATH="$REPO"
unset TRITON_INTERPRET
cd "$(mktemp -d)"  # not the checkout: only PYTHONPATH makes the package visible
"$PY" -m spiffy_triton.compile_report --out "compile_report_triton$VERSION.json"
TRITON_INTERPRET=1 "$PY" "$REPO/tests/parity_cases.py" --device cpu --small
echo "triton $VERSION: compile report and smoke parity passed"
