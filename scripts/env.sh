# Sourced by scripts/main.sh and scripts/test.sh: create or reuse .venv inside the repository,
# install the CPU build of torch first (an unpinned torch would pull a multi-GB CUDA build),
# then the package with its test extras. A second run skips what is already done.
#
# Both installs take the pinned set in requirements/constraints.txt (pip -c), so a fresh machine
# gets the versions CI ran. SPIFFY_UNPINNED=1 instead upgrades every dependency to its newest
# release that setup.py's ranges allow (torch stays at TORCH_VERSION, the CPU build), on every
# run; the next pinned run puts the pinned set back.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"
CONSTRAINTS="$REPO/requirements/constraints.txt"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

case "${SPIFFY_UNPINNED:-0}" in
    0 | "") UNPINNED=0 ;;
    1) UNPINNED=1 ;;
    *)
        echo "[spiffy-triton] SPIFFY_UNPINNED must be 0 or 1, got '${SPIFFY_UNPINNED}'" >&2
        exit 2
        ;;
esac
if [ ! -f "$CONSTRAINTS" ]; then
    echo "[spiffy-triton] missing $CONSTRAINTS (the pinned versions the installs use)" >&2
    exit 2
fi
if ! grep -qx "torch==$TORCH_VERSION" "$CONSTRAINTS"; then
    echo "[spiffy-triton] $CONSTRAINTS must pin torch==$TORCH_VERSION (TORCH_VERSION here)" >&2
    exit 2
fi

if [ ! -x "$PY" ]; then
    echo "[spiffy-triton] creating virtual environment in $VENV"
    python3 -m venv "$VENV"
fi
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "[spiffy-triton] installing torch==$TORCH_VERSION (CPU build)"
    "${PIP[@]}" -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
fi
# Re-install the package only when its metadata or the pinned set changed: the stamp holds the
# hash of setup.py, pyproject.toml and the constraints file. An unpinned run always upgrades.
STAMP="$VENV/.spiffy-install-stamp"
WANT="$(cat "$REPO/setup.py" "$REPO/pyproject.toml" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)"
if [ "$UNPINNED" = 1 ]; then
    echo "[spiffy-triton] SPIFFY_UNPINNED=1: upgrading the test extras to their newest releases"
    TORCH_PIN="$VENV/.spiffy-torch-pin.txt"
    echo "torch==$TORCH_VERSION" > "$TORCH_PIN"
    "${PIP[@]}" --upgrade --upgrade-strategy eager -c "$TORCH_PIN" -e "$REPO[test]"
    echo "unpinned" > "$STAMP"
elif [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! "$PY" -c "import spiffy_triton" 2>/dev/null; then
    echo "[spiffy-triton] installing spiffy-triton (editable) with test extras, pinned"
    "${PIP[@]}" -c "$CONSTRAINTS" -e "$REPO[test]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$REPO"
