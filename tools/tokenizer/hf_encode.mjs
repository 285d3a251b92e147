// Reference ids from @huggingface/tokenizers (an independent implementation of tokenizer.json).
//
// usage: node hf_encode.mjs TOKENIZER_DIR FILE...
//   Prints one JSON line per file: {"file": FILE, "ids": [...]}, encoded without special tokens.
// usage: node hf_encode.mjs --bench TOKENIZER_DIR FILE...
//   Prints one JSON line with the encode throughput over all files (single thread): the first
//   pass (cold caches) and the best of three more.
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
  const run = () => {
    let n = 0;
    const t0 = process.hrtime.bigint();
    for (const [, t] of texts) n += tok.encode(t, { add_special_tokens: false }).ids.length;
    return [n, Number(process.hrtime.bigint() - t0) / 1e9];
  };
  const [ntok, first] = run();
  let best = first;
  for (let r = 0; r < 3; ++r) best = Math.min(best, run()[1]);
  console.log(JSON.stringify({ impl: "@huggingface/tokenizers", bytes, tokens: ntok, first_s: first, seconds: best,
                               first_mb_per_s: bytes / 1e6 / first, mb_per_s: bytes / 1e6 / best }));
} else {
  for (const [f, t] of texts) {
    const { ids } = tok.encode(t, { add_special_tokens: false });
    process.stdout.write(JSON.stringify({ file: f, ids }) + "\n");
  }
}
