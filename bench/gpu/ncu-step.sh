#!/usr/bin/env bash
# GPU time of every kernel of one decode step, from Nsight Compute (works on the Firecracker H200
# machines with --clock-control none): runs `dsv2 bench` eagerly on a V2-Lite-shaped model with few
# layers, profiles every launch, and sums the durations per kernel over the last decode pass (the
# passes start at embed_kernel). Prints a table, longest first; the raw CSV goes to OUT_DIR.
# Usage: bench/gpu/ncu-step.sh DSV2_BINARY BATCH [LAYERS] [OUT_DIR]
set -euo pipefail
BIN=${1:?dsv2 binary}
BATCH=${2:?batch size}
LAYERS=${3:-4}
DIR=${4:-/tmp}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
[ -n "$NCU" ] || { echo "ncu-step: ncu not found" >&2; exit 1; }
CSV=$DIR/ncu_b${BATCH}_l${LAYERS}.csv
"$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  "$BIN" bench --device cuda --synthetic lite --layers "$LAYERS" --batch "$BATCH" --prompt 16 --gen 2 \
  --no-graphs >"$CSV" 2>"$DIR/ncu_b${BATCH}.err" || { tail -5 "$DIR/ncu_b${BATCH}.err"; exit 1; }
python3 - "$CSV" "$LAYERS" <<'PY'
import csv, sys, collections
# stdout also carries the bench JSON lines: keep the header and the numbered kernel rows
rows = [r for r in csv.reader(open(sys.argv[1])) if r and (r[0] == "ID" or r[0].isdigit())]
head = rows[0]
ki, ni, vi = head.index("ID"), head.index("Kernel Name"), head.index("Metric Value")
launches = []
for r in rows[1:]:
    try:
        launches.append((int(r[ki]), r[ni], float(r[vi].replace(",", ""))))
    except ValueError:
        pass
launches.sort()
starts = [i for i, (_, n, _) in enumerate(launches) if "embed_kernel" in n]
last = launches[starts[-1]:] if starts else launches
per = collections.OrderedDict()
for _, n, ns in last:
    key = n.replace("(anonymous namespace)::", "").split("(")[0]
    c, t = per.get(key, (0, 0.0))
    per[key] = (c + 1, t + ns)
total = sum(t for _, t in per.values())
print(f"last decode pass: {len(last)} kernels, {total / 1e3:.1f} us of kernel time ({sys.argv[2]} layers)")
for k, (c, t) in sorted(per.items(), key=lambda kv: -kv[1][1]):
    print(f"{t / 1e3:9.1f} us {c:5d} x  {k[:100]}")
PY
