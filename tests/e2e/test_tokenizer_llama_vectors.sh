#!/usr/bin/env bash
# The DeepSeek-LLM/V2 vocabulary (llama.cpp's ggml-vocab-deepseek-llm.gguf, shipped inside the
# node-llama-cpp npm package's llama.cpp source bundle) must pass every one of llama.cpp's test
# vectors for it (made with the real Hugging Face tokenizer).
set -euo pipefail
: "${DSV2:?}" "${DSV2_SOURCE_DIR:?}"
bundle="$DSV2_SOURCE_DIR/tests/npm/node_modules/node-llama-cpp/llama/gitRelease.bundle"
if [[ ! -f "$bundle" ]]; then
  echo "missing $bundle: run 'npm ci --ignore-scripts' in tests/npm" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git init -q "$tmp/repo"
git -C "$tmp/repo" fetch -q "$bundle" HEAD
v=models/ggml-vocab-deepseek-llm.gguf
git -C "$tmp/repo" archive FETCH_HEAD "$v" "$v.inp" "$v.out" | tar -x -C "$tmp"
/usr/bin/python3 "$DSV2_SOURCE_DIR/tools/tokenizer/gguf_to_tokenizer_json.py" "$tmp/$v" "$tmp/deepseek-llm"

# The vocabulary as the reference describes it.
/usr/bin/python3 - "$tmp/deepseek-llm" <<'PY'
import json, sys
d = sys.argv[1]
tj = json.load(open(d + "/tokenizer.json"))
cfg = json.load(open(d + "/tokenizer_config.json"))
ids = {t["content"]: t["id"] for t in tj["added_tokens"]}
assert len(tj["model"]["vocab"]) + len(tj["added_tokens"]) == 102400, "expected 102400 tokens"
assert len(tj["model"]["merges"]) == 99757, len(tj["model"]["merges"])
assert ids[cfg["bos_token"]] == 100000 and ids[cfg["eos_token"]] == 100001
assert cfg["add_bos_token"] is True
PY

/usr/bin/python3 "$DSV2_SOURCE_DIR/tools/tokenizer/check_llama_vectors.py" "$DSV2" "$tmp/deepseek-llm" "$tmp/$v"

# BOS per add_bos_token, none with --no-special.
printf 'Hello world' > "$tmp/h.txt"
got=$("$DSV2" tokenize --model "$tmp/deepseek-llm" --file "$tmp/h.txt")
nos=$("$DSV2" tokenize --model "$tmp/deepseek-llm" --file "$tmp/h.txt" --no-special)
[[ "$got" == "[100000,${nos#[}" ]] || { echo "BOS not prepended: $got vs $nos" >&2; exit 1; }
echo "BOS check passed"
