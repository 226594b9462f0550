#!/usr/bin/env bash
# Set up, lint, build the docs strictly (once, into build/site, gallery pictures
# included), then run the test suite (with docstring examples) against that site.
# Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tests,docs

# Chromium opens the built gallery page in tests/test_gallery.py (skipped without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
        || true
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "chromium: not installed and could not be installed; tests/test_gallery.py will skip"
fi

export HF_HUB_OFFLINE=1
.venv/bin/ruff check sktransfer tests examples benchmarks scripts
rm -rf build/site
unset SKTRANSFER_GALLERY_DIR  # the gallery is drawn afresh, never taken from an old folder
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir build/site
echo "docs: built with --strict"
SKTRANSFER_BUILT_SITE="$PWD/build/site" .venv/bin/python -m pytest "$@"
