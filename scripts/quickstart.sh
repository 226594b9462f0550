#!/usr/bin/env bash
# Set up, then run the main job: embed ELPV solar cells, cross-validate pretrained vs random.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh examples
.venv/bin/python examples/quickstart.py "$@"
