#!/usr/bin/env bash
# The float64 oracle's self-check: golden data regenerates byte-identically, and the absorbed
# (latent-cache) attention path equals the decompressed one. Needs Debian's python3 with numpy.
set -euo pipefail
src="${DSV2_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
py=/usr/bin/python3
if ! "$py" -c "import numpy" 2>/dev/null; then
  echo "FAIL: $py with numpy is required (Debian package python3-numpy)" >&2
  exit 1
fi
exec "$py" -B "$src/tools/reference/selfcheck.py"
