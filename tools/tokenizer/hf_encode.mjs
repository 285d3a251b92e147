// Reference ids from @huggingface/tokenizers (an independent implementation of tokenizer.json).
//
// usage: node hf_encode.mjs TOKENIZER_DIR FILE...
//   Prints one JSON line per file: {"file": FILE, "ids": [...]}, encoded without special tokens.
// usage: node hf_encode.mjs --bench TOKENIZER_DIR FILE...
//   Prints one JSON line with the encode throughput over all files (single thread).
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const npmDir = process.env.DSV2_NPM_DIR ?? join(here, "..", "..", "tests", "npm");
const { Tokenizer } = await import(join(npmDir, "node_modules", "@huggingface", "tokenizers", "dist", "tokenizers.mjs"));

let args = process.argv.slice(2);
const bench = args[0] === "--bench";
if (bench) args = args.slice(1);
if (args.length < 2) {
  console.error("usage: node hf_encode.mjs [--bench] TOKENIZER_DIR FILE...");
  process.exit(2);
}
const dir = args[0];
const tj = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8"));
let cfg = {};
try {
  cfg = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
} catch {}
const tok = new Tokenizer(tj, cfg);
const texts = args.slice(1).map((f) => [f, readFileSync(f, "utf8")]);

if (bench) {
  let bytes = 0;
  for (const [, t] of texts) bytes += Buffer.byteLength(t, "utf8");
  for (const [, t] of texts) tok.encode(t, { add_special_tokens: false });  // warm-up
  const reps = 3;
  let best = Infinity;
  let ntok = 0;
  for (let r = 0; r < reps; ++r) {
    const t0 = process.hrtime.bigint();
    ntok = 0;
    for (const [, t] of texts) ntok += tok.encode(t, { add_special_tokens: false }).ids.length;
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    best = Math.min(best, s);
  }
  console.log(JSON.stringify({ impl: "@huggingface/tokenizers", bytes, tokens: ntok, seconds: best, mb_per_s: bytes / 1e6 / best }));
} else {
  for (const [f, t] of texts) {
    const { ids } = tok.encode(t, { add_special_tokens: false });
    process.stdout.write(JSON.stringify({ file: f, ids }) + "\n");
  }
}
