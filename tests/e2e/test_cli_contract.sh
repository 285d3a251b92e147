#!/usr/bin/env bash
# The command-line contract other checks rely on: dsv2 logits / dsv2 generate --json on the golden
# checkpoints, stopping at EOS, and clear errors (non-zero exit, the file/key named) on bad input.
set -euo pipefail
: "${DSV2:?}" "${DSV2_TEST_DATA:?}"
PY=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi; }

for c in lite v2 norope f16; do
  g="$DSV2_TEST_DATA/golden/$c"
  ids=$($PY -c "import json;print(','.join(map(str,json.load(open('$g/golden.json'))['prompt_ids'])))")
  "$DSV2" logits --model "$g/model" --ids "$ids" --out "$tmp/$c.npy" --threads 2 --no-progress 2>"$tmp/log"
  check "$c logits shape and values" "$PY - <<PYEOF
import numpy as np, json
a = np.load('$tmp/$c.npy'); b = np.load('$g/logits.npy')
assert a.dtype == np.float32 and a.shape == b.shape, (a.dtype, a.shape, b.shape)
err = np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b)
assert err <= 1e-4, err
PYEOF"
  gids=$($PY -c "import json;g=json.load(open('$g/golden.json'))['greedy'];print(','.join(map(str,g['prompt_ids'])), g['max_tokens'], ','.join(map(str,g['generated_ids'])))")
  read -r pids n expect <<<"$gids"
  "$DSV2" generate --model "$g/model" --ids "$pids" --max-tokens "$n" --temperature 0 --ignore-eos --json --no-progress >"$tmp/out.json" 2>/dev/null
  check "$c greedy continuation" "$PY -c \"import json; j=json.load(open('$tmp/out.json')); assert ','.join(map(str,j['generated_ids']))=='$expect', j; assert j['finish_reason']=='length'\""
done

# Without --ignore-eos generation stops at the config's eos id: make the 3rd greedy token the EOS.
g="$DSV2_TEST_DATA/golden/lite"
cp -r "$g/model" "$tmp/eos"
read -r pids third <<<"$($PY -c "import json;g=json.load(open('$g/golden.json'))['greedy'];print(','.join(map(str,g['prompt_ids'])), g['generated_ids'][2])")"
$PY -c "import json;p='$tmp/eos/config.json';c=json.load(open(p));c['eos_token_id']=$third;json.dump(c,open(p,'w'))"
"$DSV2" generate --model "$tmp/eos" --ids "$pids" --max-tokens 10 --temperature 0 --json --no-progress >"$tmp/out.json" 2>/dev/null
check "stops at eos" "$PY -c \"import json; j=json.load(open('$tmp/out.json')); assert len(j['generated_ids'])==3 and j['generated_ids'][-1]==$third and j['finish_reason']=='stop', j\""

# Bad input: non-zero exit and a message naming the problem.
expect_error() {  # name, pattern, command...
  local name=$1 pat=$2; shift 2
  if "$@" >"$tmp/out" 2>"$tmp/err"; then echo "FAIL: $name (exit 0)"; fails=$((fails + 1)); return; fi
  local rc=$?
  if [[ $rc -ge 128 ]]; then echo "FAIL: $name (crashed, rc $rc)"; fails=$((fails + 1)); return; fi
  if grep -q -- "$pat" "$tmp/err"; then echo "ok: $name"; else echo "FAIL: $name: $(cat "$tmp/err")"; fails=$((fails + 1)); fi
}
cp -r "$g/model" "$tmp/trunc"
size=$(stat -c %s "$tmp/trunc/model.safetensors")
truncate -s $((size / 2)) "$tmp/trunc/model.safetensors"
expect_error "truncated safetensors" "model.safetensors" "$DSV2" logits --model "$tmp/trunc" --ids 1,2 --out "$tmp/x.npy" --no-progress
expect_error "missing model folder" "not found" "$DSV2" logits --model "$tmp/none" --ids 1 --out "$tmp/x.npy"
cp -r "$g/model" "$tmp/badcfg"
$PY -c "import json;p='$tmp/badcfg/config.json';c=json.load(open(p));c['scoring_func']='sigmoid';json.dump(c,open(p,'w'))"
expect_error "unsupported scoring_func" 'scoring_func.*sigmoid' "$DSV2" generate --model "$tmp/badcfg" --ids 1 --json
expect_error "id outside vocabulary" "outside the vocabulary" "$DSV2" logits --model "$g/model" --ids 1,999999 --out "$tmp/x.npy" --no-progress
expect_error "malformed ids" "not a non-negative integer" "$DSV2" generate --model "$g/model" --ids 1,x --json
expect_error "bad device" "device" "$DSV2" generate --model "$g/model" --ids 1 --device tpu --json

[[ $fails -eq 0 ]]
