// 64 concurrent streaming clients (the official client): every output equals the same request run
// alone, and afterwards no cache block is held by a request (checked through /metrics).
import { client, check, eq, done, metrics, until, MODEL } from './common.mjs';

const api = client();
const N = Number(process.env.DSV2_CLIENTS || 64);
// A shared system prompt of more than two 64-token blocks: later requests reuse its blocks.
const system = 'You are a helpful assistant who answers questions about the sea, ships and sailing. '.repeat(2);
const req = (i) => ({
  model: MODEL,
  messages: [{ role: 'system', content: system }, { role: 'user', content: `Question number ${i}: ${'why '.repeat(i % 7)}?` }],
  max_tokens: 16 + (i % 5) * 8,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});

async function run(i) {
  const stream = await api.chat.completions.create(req(i));
  let text = '';
  let finish = null;
  let usage = null;
  for await (const c of stream) {
    for (const ch of c.choices) {
      text += ch.delta.content ?? '';
      if (ch.finish_reason) finish = ch.finish_reason;
    }
    if (c.usage) usage = c.usage;
  }
  return { text, finish, tokens: usage?.completion_tokens };
}

// Requests are counted when their response has been written, just after the client saw its end.
const count200 = (m) => m['dsv2_requests_total{endpoint="/v1/chat/completions",status="200"}'] ?? 0;
await new Promise((r) => setTimeout(r, 300));
const start = count200(await metrics());

// References: one at a time.
const alone = [];
for (let i = 0; i < N; i++) alone.push(await run(i));

// All together, bounded in time.
const t0 = Date.now();
const together = await Promise.race([
  Promise.all(Array.from({ length: N }, (_, i) => run(i))),
  new Promise((_, rej) => setTimeout(() => rej(new Error('concurrent clients did not finish in 120 s')), 120000)),
]);
const seconds = (Date.now() - t0) / 1000;
for (let i = 0; i < N; i++) {
  eq(together[i].text, alone[i].text, `client ${i}: same text as alone`);
  eq(together[i].finish, alone[i].finish, `client ${i}: same finish_reason`);
  eq(together[i].tokens, alone[i].tokens, `client ${i}: same token count`);
  check(together[i].finish === 'length' || together[i].finish === 'stop', `client ${i} finished`, together[i]);
}

const idle = await until(async () => {
  const m = await metrics();
  return m['dsv2_cache_blocks_used'] === 0 && m['dsv2_running_batch_size'] === 0 && m['dsv2_queue_length'] === 0;
}, 5000);
check(idle, 'no blocks held, nothing running or queued after all clients finished');
const m = await metrics();
eq(m['dsv2_cache_blocks_used'], 0, 'dsv2_cache_blocks_used is 0');
eq(m['dsv2_cache_blocks_used'] + m['dsv2_cache_blocks_cached'] + m['dsv2_cache_blocks_free'], m['dsv2_cache_blocks_total'], 'block accounting adds up');
check(m['dsv2_prefix_cache_hit_rate'] > 0, 'the shared system prompt hit the prefix cache', m['dsv2_prefix_cache_hit_rate']);
await until(async () => count200(await metrics()) - start >= 2 * N, 5000);
eq(count200(await metrics()) - start, 2 * N, 'every request counted once as 200');
check(m['dsv2_time_to_first_token_seconds_count'] >= 2 * N, 'time-to-first-token observed per request', m['dsv2_time_to_first_token_seconds_count']);
console.log(`concurrency: ${N} clients in ${seconds.toFixed(2)} s, preemptions ${m['dsv2_preemptions_total']}, prefix hit rate ${m['dsv2_prefix_cache_hit_rate'].toFixed(3)}`);
done('concurrency');
