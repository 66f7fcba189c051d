#!/usr/bin/env bash
# Set up (install + build), then run the whole test suite. Extra arguments go to ctest (e.g. -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir "${NEXTSERVE_BUILD_DIR:-build}" --output-on-failure -j 2 "$@"
