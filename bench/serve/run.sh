#!/usr/bin/env bash
# Starts `dsv2 serve` on a free loopback port, runs bench_serve.mjs against it, stops the server.
#   bench/serve/run.sh [path/to/dsv2] [model folder] [extra bench_serve.mjs arguments...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DSV2=${1:-$ROOT/build/src/dsv2}
MODEL=${2:-$ROOT/models/dsv2-demo}
shift 2 || true
LOG=$(mktemp)
PORT=$((20000 + RANDOM % 40000))
"$DSV2" serve --model "$MODEL" --port "$PORT" --no-progress 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 300); do
  grep -q "listening on" "$LOG" && break
  kill -0 $PID || { cat "$LOG"; exit 1; }
  sleep 0.1
done
grep -E "load|serve" "$LOG" >&2
node "$ROOT/bench/serve/bench_serve.mjs" --url "http://127.0.0.1:$PORT" "$@"
