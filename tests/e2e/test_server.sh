#!/usr/bin/env bash
# End-to-end tests of `dsv2 serve` with real clients on loopback: the official `openai` npm client,
# raw HTTP (malformed and huge requests, slow and vanishing clients) and 64 concurrent streams, on
# the byte-level test model (tests/data/server/model). A second server with a cache of only ten
# blocks runs the concurrent clients again, so that requests must wait and be preempted.
set -euo pipefail
: "${DSV2:?path of the dsv2 binary}" "${DSV2_SOURCE_DIR:?}" "${DSV2_TEST_DATA:?}"
HERE="$DSV2_SOURCE_DIR/tests/e2e/server"
MODEL="$DSV2_TEST_DATA/server/model"
if ! command -v node >/dev/null || [ ! -d "$DSV2_SOURCE_DIR/tests/npm/node_modules/openai" ]; then
  echo "node or tests/npm/node_modules/openai missing (run npm ci in tests/npm)" >&2
  exit 1
fi
WORK=$(mktemp -d)
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Starts the server on a free port (random pick, retried on conflict); sets PORT and PID.
start_server() {
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    PORT=$((20000 + RANDOM % 40000))
    "$DSV2" serve --model "$MODEL" --host 127.0.0.1 --port "$PORT" --no-progress "$@" 2>"$WORK/server.log" &
    PID=$!
    for _ in $(seq 1 200); do
      if ! kill -0 "$PID" 2>/dev/null; then break; fi
      if grep -q "listening on" "$WORK/server.log" &&
        node -e "fetch('http://127.0.0.1:$PORT/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"; then
        return 0
      fi
      sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then kill "$PID"; wait "$PID" 2>/dev/null || true; fi
    PID=""
    if ! grep -q "cannot listen" "$WORK/server.log"; then
      cat "$WORK/server.log" >&2
      echo "the server did not start" >&2
      return 1
    fi
    echo "port $PORT taken, retrying ($attempt)" >&2
  done
  return 1
}

stop_server() {
  kill -TERM "$PID"
  local rc=0
  wait "$PID" || rc=$?
  PID=""
  if [ "$rc" -ne 0 ]; then
    cat "$WORK/server.log" >&2
    echo "the server exited with status $rc after SIGTERM" >&2
    return 1
  fi
  grep -q "stopped" "$WORK/server.log"
}

run_node() {
  DSV2_PORT=$PORT DSV2_SOURCE_DIR="$DSV2_SOURCE_DIR" timeout 300 node "$HERE/$1" || {
    echo "---- server log ----" >&2
    tail -50 "$WORK/server.log" >&2
    return 1
  }
}

export DSV2_API_KEY="test-key-$RANDOM"
start_server --api-key "$DSV2_API_KEY" --max-body-bytes 1048576 --cache-tokens 65536
run_node openai_client.mjs
run_node raw_http.mjs
run_node concurrency.mjs
stop_server

# Cache pressure: 10 blocks of 64 tokens for 64 clients.
start_server --api-key "$DSV2_API_KEY" --cache-tokens 640 --max-batch-size 16 --max-batch-tokens 128
run_node concurrency.mjs
stop_server
echo "server e2e: all passed"
