#!/usr/bin/env bash
# Create .venv (once) and install sktransfer with the extras named in $1 (default: examples).
# torch comes first, pinned by TORCH_SPEC; override it for another platform or CUDA build,
# e.g. TORCH_SPEC="torch torchvision" bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-examples}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $TORCH_SPEC
.venv/bin/python -m pip install --quiet -e ".[$extras]"
