#!/usr/bin/env bash
# Decode and prefill tok/s of one build under several environment switches, in one table, so that
# one device call compares them on the same card.
# Usage: bench/gpu/switches.sh DSV2_BINARY "BENCH ARGS" [VAR=VALUE ...]
#   e.g. bench/gpu/switches.sh .gpu3/dsv2 "--synthetic lite --batch 1,8,64,256 --prompt 128 --gen 32" \
#          DSV2_CUDA_MOE_GATHER=1 DSV2_CUDA_ATTN_SPLIT_MIN=32
# The first row is the defaults; each further row sets one VAR=VALUE (or several, space-separated).
set -uo pipefail
BIN=${1:?dsv2 binary}
ARGS=${2:?bench arguments}
shift 2
for sw in "(defaults)" "$@"; do
  # shellcheck disable=SC2086  # a row may set several variables: "A=1 B=2"
  if [ "$sw" = "(defaults)" ]; then set -- ; else set -- $sw; fi
  # shellcheck disable=SC2086
  env "$@" "$BIN" bench --device cuda $ARGS 2>/dev/null | python3 -c '
import json, sys
label = sys.argv[1]
cells = []
for line in sys.stdin:
    r = json.loads(line)
    if r.get("bench") == "decode":
        cells.append("b%d %.0f" % (r["batch"], r["decode_tok_s"]))
    elif r.get("bench") == "prefill":
        cells.append("prefill %.0f" % r["prefill_tok_s"])
    elif r.get("bench") == "long_context":
        cells.append("ctx%d %.0f" % (r["context"], r["decode_tok_s"]))
print("%-34s " % label + "  ".join(cells))
' "$sw"
done
