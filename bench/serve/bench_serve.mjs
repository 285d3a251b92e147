// Serving benchmark client: streams chat completions through the official `openai` npm client at
// fixed concurrency levels and reports requests/s, output tokens/s, time to first token and
// inter-token latency (gaps between streamed content chunks) as JSON lines and a Markdown table.
//
//   node bench/serve/bench_serve.mjs --url http://127.0.0.1:8000 [--concurrency 1,16,64]
//        [--requests-per-client 4] [--max-tokens 64] [--model NAME]
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(path.join(root, 'tests', 'npm', 'package.json'));
const { OpenAI } = require('openai');

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const url = args.url || 'http://127.0.0.1:8000';
const levels = (args.concurrency || '1,16,64').split(',').map(Number);
const perClient = Number(args['requests-per-client'] || 4);
const maxTokens = Number(args['max-tokens'] || 64);
const api = new OpenAI({ baseURL: `${url}/v1`, apiKey: args['api-key'] || 'none', maxRetries: 0, timeout: 600000 });
const model = args.model || (await api.models.list()).data[0].id;

const topics = ['the sea', 'a lighthouse', 'winter', 'a market town', 'old ships', 'the harvest', 'a long road', 'rivers'];
const prompt = (i) => [{ role: 'user', content: `Tell me about ${topics[i % topics.length]} (request ${i}).` }];

function pct(xs, p) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

async function one(i, ttft, itl) {
  const t0 = performance.now();
  const stream = await api.chat.completions.create({
    model, messages: prompt(i), max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  });
  let last = null;
  let tokens = 0;
  for await (const c of stream) {
    if (c.usage) tokens = c.usage.completion_tokens;
    if (!c.choices.length || !c.choices[0].delta.content) continue;
    const now = performance.now();
    if (last === null) ttft.push(now - t0);
    else itl.push(now - last);
    last = now;
  }
  return tokens;
}

async function level(conc) {
  const ttft = [], itl = [];
  let next = 0, tokens = 0;
  const total = conc * perClient;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: conc }, async () => {
    while (next < total) {
      const n = await one(next++, ttft, itl);
      tokens += n;
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  return {
    concurrency: conc, requests: total, seconds: +secs.toFixed(3), requests_per_s: +(total / secs).toFixed(3),
    output_tokens_per_s: +(tokens / secs).toFixed(1), ttft_ms_mean: +mean(ttft).toFixed(1), ttft_ms_p50: +pct(ttft, 50).toFixed(1),
    ttft_ms_p99: +pct(ttft, 99).toFixed(1), itl_ms_mean: +mean(itl).toFixed(2), itl_ms_p50: +pct(itl, 50).toFixed(2),
    itl_ms_p99: +pct(itl, 99).toFixed(2),
  };
}

await one(0, [], []);  // warm-up
const rows = [];
for (const c of levels) {
  const r = await level(c);
  rows.push(r);
  console.log(JSON.stringify({ model, max_tokens: maxTokens, client: 'openai-node 6.49.0', ...r }));
}
console.log('\n| concurrency | requests | req/s | output tok/s | TTFT mean / p50 / p99 (ms) | ITL mean / p50 / p99 (ms) |');
console.log('|---:|---:|---:|---:|---|---|');
for (const r of rows)
  console.log(`| ${r.concurrency} | ${r.requests} | ${r.requests_per_s} | ${r.output_tokens_per_s} | ${r.ttft_ms_mean} / ${r.ttft_ms_p50} / ${r.ttft_ms_p99} | ${r.itl_ms_mean} / ${r.itl_ms_p50} / ${r.itl_ms_p99} |`);
