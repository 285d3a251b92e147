#!/usr/bin/env bash
# Runs the whole test suite: installs the test-only npm peers (once), builds Release with tests,
# runs ctest. Dependencies come from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -d tests/npm/node_modules ]]; then
  (cd tests/npm && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
export PATH=/usr/local/cuda/bin:$PATH
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
ctest --preset release -j "$(nproc)" "$@"
