#!/usr/bin/env bash
# Installs the Debian dependencies, builds dsv2 (Release), and generates text with the embedded
# default model (models/dsv2-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH=/usr/local/cuda/bin:$PATH
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target dsv2
./build/src/dsv2 generate --prompt "${1:-The old man looked at the sea and said}" --max-tokens 64 --repetition-penalty 1.1
