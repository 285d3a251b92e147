#!/usr/bin/env bash
# Peer measurement: llama.cpp's CUDA llama-batched-bench on a synthetic DeepSeek-V2-Lite GGUF.
# Needs the peers folder (shared/peers or a copy: llama-batched-bench-cuda-sm90.xz, gguf-py,
# ggml-vocab-deepseek-llm.gguf, mk_gguf_ds2.py). Writes the 31 GB GGUF to /tmp.
# Usage: bench/gpu/peer_llamacpp.sh PEERS_DIR [LOG_DIR]
set -euo pipefail
P=${1:?peers folder}
LOG=${2:-/tmp}
BIN=/tmp/llama-batched-bench
GGUF=/tmp/ds2-lite.gguf
if [ ! -x "$BIN" ]; then
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
    "$P/llama-batched-bench-cuda-sm90.xz" "$BIN"
  chmod +x "$BIN"
fi
[ -f "$GGUF" ] || python3 "$P/mk_gguf_ds2.py" "$P/gguf-py" "$P/ggml-vocab-deepseek-llm.gguf" "$GGUF" lite
NV=$(python3 -c "import nvidia,os; print(os.path.dirname(nvidia.__path__[0]) if hasattr(nvidia,'__path__') else '')" 2>/dev/null || true)
LIBS=/usr/local/cuda/lib64
if [ -n "$NV" ]; then for d in "$NV"/nvidia/*/lib; do LIBS="$LIBS:$d"; done; fi
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
echo "== llama.cpp prefill 4096 (batch 1)"
"$BIN" -m "$GGUF" -ngl 99 -fa on -c 8192 -b 4096 -ub 4096 -npp 4096 -ntg 128 -npl 1 2>"$LOG/llama_prefill.err" | tee "$LOG/llama_prefill.txt"
echo "== llama.cpp decode 128+64 at batch 1,64,256"
"$BIN" -m "$GGUF" -ngl 99 -fa on -c 65536 -b 2048 -ub 512 -npp 128 -ntg 64 -npl 1,64,256 2>"$LOG/llama_decode.err" | tee "$LOG/llama_decode.txt"
