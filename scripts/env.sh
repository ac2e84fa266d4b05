# Sourced by scripts/main.sh and scripts/test.sh: create or reuse .venv inside the repository,
# install the CPU build of torch first (an unpinned torch would pull a multi-GB CUDA build),
# then the package with its test extras. A second run skips what is already done.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"

if [ ! -x "$PY" ]; then
    echo "[spiffy-triton] creating virtual environment in $VENV"
    python3 -m venv "$VENV"
fi
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "[spiffy-triton] installing torch==$TORCH_VERSION (CPU build)"
    "$PY" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# Re-install the package only when its metadata changed (the stamp holds setup.py's hash).
STAMP="$VENV/.spiffy-install-stamp"
WANT="$(cat "$REPO/setup.py" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! "$PY" -c "import spiffy_triton" 2>/dev/null; then
    echo "[spiffy-triton] installing spiffy-triton (editable) with test extras"
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$REPO[test]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$REPO"
