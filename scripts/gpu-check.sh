#!/usr/bin/env bash
# Builds dsv2 with the CUDA backend on a GPU machine, runs the CUDA tests (kernels against CPU
# references, whole-model parity with the CPU backend) and the V2-Lite-shaped benchmark, then prints
# a short summary. Logs go to $OUT when set (the device runner), else build-gpu/logs.
#
# Usage: scripts/gpu-check.sh [--prebuilt DIR] [--no-tests] [--no-bench] [--transformers] [--peers PEERS_DIR]
#        scripts/gpu-check.sh --pack DIR      (on a build machine: see below)
#   --prebuilt DIR   use DIR/dsv2 and DIR/test_cuda instead of building (DIR/lib is added to the
#                    library path); by default builds build-gpu with -DCMAKE_CUDA_ARCHITECTURES=90a
#   --pack DIR       build dsv2 and test_cuda for sm_90a here (build-gpu-pack) and copy them with the
#                    shared libraries they need beyond glibc/libstdc++/CUDA into DIR and DIR/lib, then
#                    exit: for GPU machines whose image lacks the Debian -dev packages (fmt, PCRE2,
#                    nlohmann-json, CLI11, cpp-httplib, GoogleTest). Copy DIR there and use --prebuilt.
#   --transformers   also measure transformers (bench/gpu/peer_transformers.py)
#   --peers DIR      also measure transformers and llama.cpp (bench/gpu/peer_*.{py,sh}); DIR holds
#                    llama-batched-bench-cuda-sm90.xz, gguf-py, the vocab GGUF and mk_gguf_ds2.py
#   BENCH_ARGS       environment: replaces the default benchmark arguments
#   PROFILE_ARGS     environment: when set, also runs `dsv2 bench --device cuda $PROFILE_ARGS` with
#                    DSV2_CUDA_PROFILE=1 and prints the GPU time per stage of each timed phase
#   GPU_CHECK_CMAKE_ARGS  environment, with --pack: more CMake options, built in build-gpu-pack-custom
#                    (-DDSV2_CUDA_TRACE=ON: the kernel-timeline build; see bench/gpu/trace.py)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREBUILT="" TESTS=1 BENCH=1 PEERS="" HF=0 PACK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) PREBUILT=$(cd "$2" && pwd); shift 2 ;;
    --pack) PACK=$2; shift 2 ;;
    --no-tests) TESTS=0; shift ;;
    --no-bench) BENCH=0; shift ;;
    --peers) PEERS=$(cd "$2" && pwd); HF=1; shift 2 ;;
    --transformers) HF=1; shift ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -n "$PACK" ]; then
  # GPU_CHECK_CMAKE_ARGS: more CMake options (e.g. -DDSV2_CUDA_TRACE=ON), built in a directory of their own
  B=$ROOT/build-gpu-pack${GPU_CHECK_CMAKE_ARGS:+-custom}
  # shellcheck disable=SC2086  # the options are meant to be split into words
  cmake -S "$ROOT" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV2_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
    ${GPU_CHECK_CMAKE_ARGS:-} >/dev/null || exit 1
  ninja -C "$B" -j"$(nproc)" dsv2 test_cuda || exit 1
  mkdir -p "$PACK/lib"
  cp "$B/src/dsv2" "$B/tests/test_cuda" "$PACK/"
  for l in $(ldd "$B/src/dsv2" "$B/tests/test_cuda" | awk '/=>/ {print $3}' | sort -u |
             grep -vE 'libc\.so|libm\.so|libgcc_s|libstdc|ld-linux|libdl|libpthread|librt|libcudart|libcublas'); do
    cp -L "$l" "$PACK/lib/"
  done
  echo "packed into $PACK: $(ls "$PACK" "$PACK/lib" | tr '\n' ' ')"
  exit 0
fi
LOG=${OUT:-$ROOT/build-gpu/logs}
mkdir -p "$LOG"
export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export DSV2_TEST_DATA=$ROOT/tests/data
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$LOG/gpu.txt"
COMMIT=${DSV2_COMMIT:-$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "commit $COMMIT" | tee -a "$LOG/gpu.txt"

if [ -n "$PREBUILT" ]; then
  BIN=$PREBUILT
  [ -d "$PREBUILT/lib" ] && export LD_LIBRARY_PATH=$PREBUILT/lib:$LD_LIBRARY_PATH
else
  BUILD=$ROOT/build-gpu
  t0=$(date +%s)
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV2_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a >"$LOG/cmake.log" 2>&1 || { tail -30 "$LOG/cmake.log"; exit 1; }
  ninja -C "$BUILD" -j"$(nproc)" dsv2 test_cuda >"$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
  mkdir -p "$BUILD/bin"
  ln -sf "$BUILD/src/dsv2" "$BUILD/bin/dsv2"
  ln -sf "$BUILD/tests/test_cuda" "$BUILD/bin/test_cuda"
  BIN=$BUILD/bin
fi

status=0
if [ $TESTS = 1 ]; then
  DSV2="$BIN/dsv2" timeout 300 "$BIN/test_cuda" --gtest_output=json:"$LOG/test_cuda.json" >"$LOG/test_cuda.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[parity\]|Failure|Expected|Which is|actual" "$LOG/test_cuda.log" | head -60
  tail -3 "$LOG/test_cuda.log"
fi

if [ $BENCH = 1 ]; then
  ARGS=${BENCH_ARGS:-"--synthetic lite --batch 1,8,32,64,128,256 --prompt 128 --gen 64 --prefill 4096 --context 32768,131072 --engine"}
  echo "bench: dsv2 bench --device cuda $ARGS"
  # shellcheck disable=SC2086
  timeout 300 "$BIN/dsv2" bench --device cuda $ARGS >"$LOG/bench.jsonl" 2>"$LOG/bench.err" || { status=1; tail -20 "$LOG/bench.err"; }
  grep -E "cuda|cache" "$LOG/bench.err" | head -5
fi

if [ -n "${PROFILE_ARGS:-}" ]; then
  echo "profile: dsv2 bench --device cuda $PROFILE_ARGS"
  # shellcheck disable=SC2086
  DSV2_CUDA_PROFILE=1 timeout 300 "$BIN/dsv2" bench --device cuda $PROFILE_ARGS >"$LOG/profile.jsonl" \
    2>"$LOG/profile.err" || { status=1; tail -20 "$LOG/profile.err"; }
  grep "cuda-profile" "$LOG/profile.err" | sed 's/^.*cuda-profile[^ ]* //'
fi

if [ $HF = 1 ]; then
  echo "peers: transformers"
  PYTHONUNBUFFERED=1 timeout 300 python3 "$ROOT/bench/gpu/peer_transformers.py" >"$LOG/peer_transformers.jsonl" \
    2>"$LOG/peer_transformers.err" || tail -5 "$LOG/peer_transformers.err"
  cat "$LOG/peer_transformers.jsonl"
fi
if [ -n "$PEERS" ]; then
  echo "peers: llama.cpp"
  timeout 400 bash "$ROOT/bench/gpu/peer_llamacpp.sh" "$PEERS" "$LOG" >"$LOG/peer_llamacpp.txt" 2>&1 || tail -5 "$LOG/peer_llamacpp.txt"
  grep -E "^\|" "$LOG/peer_llamacpp.txt" || true
fi

if [ $BENCH = 1 ] && [ -s "$LOG/bench.jsonl" ]; then
  python3 - "$LOG/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
env = next((r for r in rows if r.get("bench") == "env"), {})
print(f"== dsv2 bench summary: {env.get('device')} {env.get('model')}, copy {env.get('copy_GBps', 0):.0f} GB/s")
for r in rows:
    b = r.get("bench")
    if b == "decode":
        print(f"decode  batch {r['batch']:4d}: {r['decode_tok_s']:10.0f} tok/s  {r['ms_per_step']:7.2f} ms/step  "
              f"{r['achieved_GBps']:6.0f} GB/s = {r['pct_roofline']:5.1f}% roofline  (prefill {r['prefill_tok_s']:.0f} tok/s)")
    elif b == "prefill":
        print(f"prefill {r['prompt']} tokens: {r['prefill_tok_s']:.0f} tok/s ({r['ms']:.1f} ms, median of "
              f"{len(r.get('runs_ms', [0]))}; cold run {r.get('cold_prefill_tok_s', 0):.0f} tok/s)")
    elif b == "long_context":
        print(f"decode at context {r['context']}: {r['decode_tok_s']:.0f} tok/s  {r['ms_per_step']:.2f} ms/step  "
              f"{r['pct_roofline']:.1f}% roofline")
    elif b == "engine_decode":
        print(f"engine  batch {r['batch']:4d}: {r['decode_tok_s']:10.0f} tok/s  {r['ms_per_step']:7.2f} ms/step  "
              f"(greedy requests through the serving engine)")
PY
fi
exit $status
