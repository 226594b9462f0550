#!/usr/bin/env bash
# Set up, then lint, run the test suite (with docstring examples) and build the docs strictly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tests,docs
export HF_HUB_OFFLINE=1
.venv/bin/ruff check sktransfer tests examples benchmarks
.venv/bin/python -m pytest "$@"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
echo "docs: built with --strict"
