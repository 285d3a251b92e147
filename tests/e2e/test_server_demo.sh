#!/usr/bin/env bash
# `dsv2 serve` on the shipped demo model (models/dsv2-demo): golden greedy text through the official
# client, also streamed and concurrent (tests/e2e/server/demo_model.mjs).
set -euo pipefail
: "${DSV2:?}" "${DSV2_SOURCE_DIR:?}" "${DSV2_TEST_DATA:?}"
MODEL="$DSV2_SOURCE_DIR/models/dsv2-demo"
[ -f "$MODEL/tokenizer.json" ] || { echo "models/dsv2-demo is missing" >&2; exit 1; }
LOG=$(mktemp)
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; [ -n "$PID" ] && wait $PID 2>/dev/null; rm -f "$LOG"' EXIT
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  PORT=$((20000 + RANDOM % 40000))
  "$DSV2" serve --model "$MODEL" --port "$PORT" --no-progress 2>"$LOG" &
  PID=$!
  for _ in $(seq 1 300); do
    grep -q "listening on" "$LOG" && break
    kill -0 $PID 2>/dev/null || break
    sleep 0.1
  done
  grep -q "listening on" "$LOG" && break
  wait $PID 2>/dev/null || true
  PID=""
  grep -q "cannot listen" "$LOG" || { cat "$LOG" >&2; exit 1; }
done
[ -n "$PID" ] || { echo "no free port found" >&2; exit 1; }
DSV2_PORT=$PORT DSV2_MODEL_NAME=dsv2-demo timeout 300 node "$DSV2_SOURCE_DIR/tests/e2e/server/demo_model.mjs"
