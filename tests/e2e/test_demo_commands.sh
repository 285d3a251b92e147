#!/usr/bin/env bash
# The user's commands on the embedded default model (no --model): perplexity within 1% of the
# trainer's figure, generate --prompt reproducing the trainer's greedy text, chat over stdin.
set -euo pipefail
: "${DSV2:?}" "${DSV2_TEST_DATA:?}"
PY=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
d="$DSV2_TEST_DATA/demo"

"$DSV2" perplexity --file "$d/val.txt" --no-progress >"$tmp/ppl.json" 2>"$tmp/ppl.log"
grep -q "embedded default model" "$tmp/ppl.log"
$PY - "$tmp/ppl.json" "$d/golden.json" <<'PYEOF'
import json, sys
got = json.load(open(sys.argv[1])); ref = json.load(open(sys.argv[2]))["perplexity"]
assert got["predicted_tokens"] == ref["n_predicted"] and got["windows"] == ref["n_windows"], (got, ref["n_predicted"])
rel = abs(got["perplexity"] - ref["ppl"]) / ref["ppl"]
print(f"perplexity {got['perplexity']:.4f} vs trainer {ref['ppl']:.4f}: {rel:.2e} relative")
assert rel <= 0.01, rel
PYEOF

prompt=$($PY -c "import json;print(json.load(open('$d/golden.json'))['prompt'])")
n=$($PY -c "import json;print(json.load(open('$d/golden.json'))['greedy']['n'])")
"$DSV2" generate --prompt "$prompt" --max-tokens "$n" --temperature 0 --ignore-eos --json --no-progress >"$tmp/gen.json" 2>"$tmp/gen.log"
$PY - "$tmp/gen.json" "$d/golden.json" <<'PYEOF'
import json, sys
got = json.load(open(sys.argv[1])); ref = json.load(open(sys.argv[2]))
assert got["prompt_ids"] == ref["prompt_ids"], got["prompt_ids"]
assert got["generated_ids"] == ref["greedy"]["ids"], got["generated_ids"]
assert got["text"] == ref["greedy"]["text"], got["text"]
print("generate --prompt reproduces the trainer's greedy text")
PYEOF
grep -q "tok/s" "$tmp/gen.log"

# Streaming text mode prints the prompt and its continuation.
"$DSV2" generate --prompt "$prompt" --max-tokens "$n" --temperature 0 --ignore-eos --no-progress >"$tmp/gen.txt" 2>/dev/null
expect=$($PY -c "import json;g=json.load(open('$d/golden.json'));print(g['prompt']+g['greedy']['text'])")
[[ "$(cat "$tmp/gen.txt")" == "$expect" ]] || { echo "streamed text differs:"; cat "$tmp/gen.txt"; exit 1; }

# Sampling with a seed is reproducible; a stop string ends the text before it.
for i in 1 2; do
  "$DSV2" generate --prompt "$prompt" --max-tokens 24 --temperature 0.8 --seed 7 --json --no-progress >"$tmp/s$i.json" 2>/dev/null
done
$PY -c "import json;a,b=(json.load(open('$tmp/s%d.json'%i)) for i in (1,2));assert a['generated_ids']==b['generated_ids'] and a['text']==b['text'], (a,b);print('seeded sampling reproducible')"
"$DSV2" generate --prompt "$prompt" --max-tokens "$n" --temperature 0 --stop "said" --json --no-progress >"$tmp/stop.json" 2>/dev/null
$PY -c "import json;j=json.load(open('$tmp/stop.json'));assert j['finish_reason']=='stop' and 'said' not in j['text'], j; print('stop string ok:', repr(j['text']))"

# Chat reads turns from stdin and answers each one with the chat template.
printf 'Who are you?\nWhat is a hacker?\n' | "$DSV2" chat --temperature 0 --max-tokens 40 --no-progress >"$tmp/chat.txt" 2>"$tmp/chat.log"
[[ $(grep -c "reply" "$tmp/chat.log") -eq 2 ]] || { cat "$tmp/chat.log"; exit 1; }
[[ -s "$tmp/chat.txt" ]]
echo "chat answered two turns:"; cat "$tmp/chat.txt"

# bench also defaults to the embedded model.
"$DSV2" bench --batch 1 --prompt 8 --gen 4 --no-progress >"$tmp/bench.jsonl" 2>"$tmp/bench.log"
grep -q "embedded default model" "$tmp/bench.log"
$PY -c "import json;rows=[json.loads(l) for l in open('$tmp/bench.jsonl')];assert rows[0]['bench']=='env' and any(r['bench']=='decode' and r['decode_tok_s']>0 for r in rows), rows;print('bench on the default model ok')"
