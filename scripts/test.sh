#!/usr/bin/env bash
# The whole test suite: Triton kernels run in the interpreter on CPU tensors, the compile
# report compiles every shipped kernel configuration for sm_90 and sm_80, lint runs with ruff.
source "$(dirname "$0")/env.sh"
ruff check .
ruff format --check .
python -m pytest -n 2 --dist loadgroup "$@"
