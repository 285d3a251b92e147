// The shipped demo model (real tokenizer and chat template) through the official client: the greedy
// continuation of the golden prompt must be the one in tests/data/demo/golden.json, alone, streamed,
// from token ids and among concurrent requests; chat with the checkpoint's sampling defaults and a
// seed is reproducible.
import fs from 'node:fs';
import path from 'node:path';
import { client, check, eq, done, metrics, until, MODEL } from './common.mjs';

const golden = JSON.parse(fs.readFileSync(path.join(process.env.DSV2_TEST_DATA, 'demo', 'golden.json'), 'utf8'));
const api = client();
const want = golden.greedy.text;
const n = golden.greedy.n;
const base = { model: MODEL, max_tokens: n, temperature: 0, ignore_eos: true };

const r = await api.completions.create({ ...base, prompt: golden.prompt });
eq(r.choices[0].text, want, 'greedy continuation of the golden prompt');
eq(r.usage.prompt_tokens, golden.prompt_ids.length, 'prompt tokens (with BOS) as the golden ids');
eq(r.usage.completion_tokens, n, 'completion tokens');
const byIds = await api.completions.create({ ...base, prompt: golden.prompt_ids });
eq(byIds.choices[0].text, want, 'the same from token ids');

const streams = await Promise.all(Array.from({ length: 16 }, async () => {
  let text = '';
  for await (const c of await api.completions.create({ ...base, prompt: golden.prompt, stream: true })) text += c.choices[0]?.text ?? '';
  return text;
}));
check(streams.every((t) => t === want), '16 concurrent streams give the golden text', streams.filter((t) => t !== want)[0]);

const chat = (seed) => api.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Who went out into the city?' }], max_tokens: 24, seed });
const c1 = await chat(11), c2 = await chat(11);
eq(c1.choices[0].message.content, c2.choices[0].message.content, 'chat with generation_config defaults and a seed is reproducible');
check(/[A-Za-z]{2,}/.test(c1.choices[0].message.content), 'chat answers in words', c1.choices[0].message.content);
check(await until(async () => (await metrics())['dsv2_cache_blocks_used'] === 0, 5000), 'no blocks held afterwards');
done('demo_model');
