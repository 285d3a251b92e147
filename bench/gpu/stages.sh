#!/usr/bin/env bash
# What each stage of a decode step costs inside the CUDA graph: dsv2 bench with DSV2_CUDA_SKIP=stage
# (that stage's launches left out of every pass; the results are wrong, the timing is the point)
# against the full step, one row per stage, on the V2-Lite shape.
# On the grouped MoE path (batch >= 2) the router, dispatch and lm_head rows do not time those stages:
# leaving them out changes which experts the later layers read (without lm_head every token is the
# same, so 8 experts run instead of 64). The expert, attention and projection rows are sound.
# At batch 1 the MoE layers route inside the gate/up kernel (no router launch): the router row then
# times nothing, and skipping o_proj also leaves the routing partials stale.
# Usage: bench/gpu/stages.sh DSV2_BINARY [BATCH] [BENCH ARGS...]
#   e.g. bench/gpu/stages.sh .gpu3/dsv2 1; STAGES="router gate_up" limits the rows (dispatch and
#   combine exist on the grouped MoE path only, batch >= 2)
set -uo pipefail
BIN=${1:?dsv2 binary}
BATCH=${2:-1}
shift $(( $# >= 2 ? 2 : 1 ))
ARGS=${*:-"--synthetic lite --prompt 128 --gen 64"}
step_ms() {
  # shellcheck disable=SC2086
  env DSV2_CUDA_SKIP="$1" "$BIN" bench --device cuda $ARGS --batch "$BATCH" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r.get("bench") == "decode":
        print("%.4f" % r["ms_per_step"])'
}
full=$(step_ms "")
[ -n "$full" ] || { echo "stages: dsv2 bench did not run" >&2; exit 1; }
echo "batch $BATCH: full step $full ms"
STAGES=${STAGES:-"qkv absorb attention uv o_proj router dispatch gate_up down combine lm_head"}
for st in $STAGES; do
  t=$(step_ms "$st")
  python3 -c 'import sys; f, t = float(sys.argv[1]), float(sys.argv[2]); print("%-10s %8.3f ms without it, %7.3f ms (%4.1f%%) for the stage" % (sys.argv[3], t, f - t, 100 * (f - t) / f))' "$full" "$t" "$st"
done
