// The official `openai` npm client against a running dsv2 server on the byte-level test model
// (tests/data/server/model: one token per byte, BOS 0, EOS 1, the DeepSeek-V2 chat template).
import { OpenAI, client, check, eq, done, MODEL } from './common.mjs';

const api = client();
const BOS = '<｜begin▁of▁sentence｜>';
const enc = (s) => Buffer.byteLength(s, 'utf8');
const REPL = '\uFFFD';

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

// Models.
const models = await api.models.list();
eq(models.data.map((m) => m.id), [MODEL], 'models.list returns the served model');

// Chat, greedy (the fixture's generation_config says do_sample false).
const user = 'Hello there, how are you?';
const msgs = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: user }];
const chat = await api.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 24, temperature: 0 });
eq(chat.object, 'chat.completion', 'chat object');
check(chat.id.startsWith('chatcmpl-'), 'chat id prefix', chat.id);
eq(chat.choices.length, 1, 'one choice');
eq(chat.choices[0].message.role, 'assistant', 'assistant role');
check(typeof chat.choices[0].message.content === 'string', 'content is a string');
// The template renders BOS + "{system}\n\nUser: {u}\n\nAssistant:"; the fixture tokenizer is one token per byte.
const promptTokens = 1 + enc('Be brief.\n\nUser: ' + user + '\n\nAssistant:');
eq(chat.usage.prompt_tokens, promptTokens, 'usage.prompt_tokens = templated prompt length');
eq(chat.usage.total_tokens, chat.usage.prompt_tokens + chat.usage.completion_tokens, 'usage.total_tokens');
const reason = chat.choices[0].finish_reason;
check(reason === 'length' ? chat.usage.completion_tokens === 24 : reason === 'stop' && chat.usage.completion_tokens <= 24,
  'finish_reason agrees with completion_tokens', { reason, n: chat.usage.completion_tokens });

// The same request again gives the same text; max_completion_tokens is the newer name of max_tokens.
const chat2 = await api.chat.completions.create({ model: MODEL, messages: msgs, max_completion_tokens: 24, temperature: 0 });
eq(chat2.choices[0].message.content, chat.choices[0].message.content, 'greedy chat is deterministic (max_completion_tokens)');

// Streaming: role chunk, content deltas, finish chunk, usage chunk; the text equals the non-streamed one.
const chunks = await collect(await api.chat.completions.create({
  model: MODEL, messages: msgs, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
}));
check(chunks.length >= 3, 'several chunks', chunks.length);
eq(chunks[0].choices[0].delta.role, 'assistant', 'first chunk carries the role');
eq(chunks[0].object, 'chat.completion.chunk', 'chunk object');
check(chunks.every((c) => c.id === chunks[0].id), 'one id for all chunks');
const streamed = chunks.flatMap((c) => c.choices.map((x) => x.delta.content ?? '')).join('');
eq(streamed, chat.choices[0].message.content, 'streamed text = non-streamed text');
const finishChunks = chunks.filter((c) => c.choices.length && c.choices[0].finish_reason);
eq(finishChunks.length, 1, 'exactly one chunk with a finish_reason');
eq(finishChunks[0].choices[0].finish_reason, reason, 'streamed finish_reason');
const last = chunks[chunks.length - 1];
eq(last.choices, [], 'usage chunk has no choices');
eq(last.usage, chat.usage, 'usage chunk = non-streamed usage');
check(chunks.slice(0, -1).every((c) => c.usage === null), 'other chunks have usage null');
// Without include_usage there is no usage chunk.
const plain = await collect(await api.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 5, stream: true }));
check(plain.every((c) => c.usage === undefined && c.choices.length === 1), 'no usage without include_usage');

// Completions: BOS is added to a raw prompt; streamed and non-streamed agree; echo prepends the prompt.
const prompt = 'The quick brown fox';
const comp = await api.completions.create({ model: MODEL, prompt, max_tokens: 20, temperature: 0 });
eq(comp.object, 'text_completion', 'completion object');
eq(comp.usage.prompt_tokens, 1 + enc(prompt), 'completion prompt tokens include BOS');
const compChunks = await collect(await api.completions.create({ model: MODEL, prompt, max_tokens: 20, temperature: 0, stream: true }));
eq(compChunks.map((c) => c.choices[0]?.text ?? '').join(''), comp.choices[0].text, 'streamed completion text');
const echo = await api.completions.create({ model: MODEL, prompt, max_tokens: 20, temperature: 0, echo: true });
eq(echo.choices[0].text, prompt + comp.choices[0].text, 'echo prepends the prompt');
// Token ids as the prompt: BOS plus the fixture's byte ids give the same completion as the text.
const byteId = (b) => (b < 0xC0 ? b + 2 : b);
const byIds = await api.completions.create({ model: MODEL, prompt: [0, ...Buffer.from(prompt)].map((b, i) => (i === 0 ? 0 : byteId(b))), max_tokens: 20, temperature: 0 });
eq(byIds.choices[0].text, comp.choices[0].text, 'token-id prompt = text prompt');
eq(byIds.usage.prompt_tokens, comp.usage.prompt_tokens, 'token-id prompt length');

// Stop strings: one character and a multi-token string taken from the greedy output, as a string and in a list.
const long = await api.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 40, temperature: 0 });
const T = long.choices[0].text;
function pickStop(len) {
  for (let k = 4; k + len <= T.length; k++) {
    const s = T.slice(k, k + len);
    if (!s.includes(REPL) && !/[\uD800-\uDFFF]/.test(s) && s.trim() === s && s.length === len) return s;
  }
  return null;
}
for (const len of [1, 3]) {
  const S = pickStop(len);
  if (!S) {
    check(false, `found a stop string of ${len} characters in the output`, T);
    continue;
  }
  const want = T.slice(0, T.indexOf(S));
  const r = await api.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, stop: S });
  eq(r.choices[0].text, want, `stop "${S}" cuts the text before it`);
  eq(r.choices[0].finish_reason, 'stop', `stop "${S}" gives finish_reason stop`);
  check(r.usage.completion_tokens < 40, 'stop ends generation early', r.usage.completion_tokens);
  const rs = await collect(await api.completions.create({
    model: MODEL, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, stop: ['\u0000never', S], stream: true,
  }));
  eq(rs.map((c) => c.choices[0]?.text ?? '').join(''), want, `streamed stop list with "${S}"`);
  eq(rs.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0].finish_reason), ['stop'], 'streamed stop reason');
}

// Seeds: the same seed gives the same sample; n choices are distinct streams, reproducible together.
const sampled = (seed, n = 1) => api.chat.completions.create({
  model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 16, temperature: 1.0, top_p: 0.9, seed, n,
});
const s1 = await sampled(1234);
const s2 = await sampled(1234);
const s3 = await sampled(99);
eq(s1.choices[0].message.content, s2.choices[0].message.content, 'same seed, same text');
check(s1.choices[0].message.content !== s3.choices[0].message.content, 'another seed, another text');
const n3 = await sampled(7, 3);
eq(n3.choices.map((c) => c.index), [0, 1, 2], 'n=3 gives choices 0..2');
const texts = n3.choices.map((c) => c.message.content);
check(new Set(texts).size === 3, 'n=3 choices differ', texts);
eq((await sampled(7, 3)).choices.map((c) => c.message.content), texts, 'n=3 with a seed is reproducible');
check(n3.usage.completion_tokens >= 3 && n3.usage.completion_tokens <= 48, 'usage counts the tokens of all choices', n3.usage);
const n2stream = await collect(await api.chat.completions.create({
  model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 16, temperature: 1.0, top_p: 0.9, seed: 7, n: 3, stream: true,
}));
for (let i = 0; i < 3; i++) {
  const t = n2stream.flatMap((c) => c.choices.filter((x) => x.index === i).map((x) => x.delta.content ?? '')).join('');
  eq(t, texts[i], `streamed choice ${i} equals the non-streamed one`);
}
// Penalties change a greedy continuation of a repetitive prompt (and are accepted).
const pen = await api.completions.create({ model: MODEL, prompt: 'aaaa', max_tokens: 30, temperature: 0, frequency_penalty: 2, presence_penalty: 2 });
const nopen = await api.completions.create({ model: MODEL, prompt: 'aaaa', max_tokens: 30, temperature: 0 });
check(pen.choices[0].text !== nopen.choices[0].text, 'penalties change the greedy output');

// Logprobs (chat): one entry per token, top alternatives sorted, the greedy token is the best one.
const lp = await api.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3 });
const content = lp.choices[0].logprobs.content;
eq(content.length, lp.usage.completion_tokens, 'one logprob entry per generated token');
eq(content.map((e) => e.token).join('').length > 0, true, 'tokens are strings');
check(content.every((e) => e.logprob <= 0 && e.top_logprobs.length === 3), 'logprobs <= 0, 3 alternatives each');
check(content.every((e) => e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob && e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob), 'alternatives sorted');
check(content.every((e) => Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6), 'greedy token has the best logprob');
check(content.every((e) => Array.isArray(e.bytes) && e.bytes.length >= 1), 'bytes given');
// Completions logprobs: four parallel lists.
const clp = await api.completions.create({ model: MODEL, prompt, max_tokens: 6, temperature: 0, logprobs: 2 });
const L = clp.choices[0].logprobs;
eq([L.tokens.length, L.token_logprobs.length, L.top_logprobs.length, L.text_offset.length], [6, 6, 6, 6], 'completion logprobs lists');
check(L.top_logprobs.every((o) => Object.keys(o).length >= 1 && Object.keys(o).length <= 2), 'top_logprobs dicts of up to 2');
eq(L.text_offset[0], 0, 'text_offset starts at 0');

// Errors: 400 with the parameter named; context overflow; unknown fields ignored.
async function expectError(p, status, param, code) {
  try {
    await p;
    check(false, `expected HTTP ${status} for ${param}`);
  } catch (e) {
    check(e instanceof OpenAI.APIError, 'an APIError', String(e));
    eq(e.status, status, `status for ${param}`);
    if (param !== undefined) eq(e.param ?? e.error?.param ?? null, param, `error names ${param}`);
    if (code) eq(e.code, code, `error code for ${param}`);
  }
}
await expectError(api.chat.completions.create({ model: MODEL, messages: msgs, temperature: 5 }), 400, 'temperature');
await expectError(api.chat.completions.create({ model: MODEL, messages: msgs, top_p: -1 }), 400, 'top_p');
await expectError(api.chat.completions.create({ model: MODEL, messages: msgs, n: 0 }), 400, 'n');
await expectError(api.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 0 }), 400, 'max_tokens');
await expectError(api.chat.completions.create({ model: MODEL, messages: [] }), 400, 'messages');
await expectError(api.chat.completions.create({ model: MODEL, messages: [{ role: 'wizard', content: 'x' }] }), 400, 'messages[0].role');
await expectError(api.chat.completions.create({ model: MODEL, messages: msgs, top_logprobs: 2 }), 400, 'top_logprobs');
await expectError(api.completions.create({ model: MODEL, prompt: 'x'.repeat(700) }), 400, 'prompt', 'context_length_exceeded');
await expectError(api.completions.create({ model: MODEL, prompt: 'hi', max_tokens: 1000 }), 400, 'max_tokens', 'context_length_exceeded');
const extra = await api.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 3, temperature: 0, some_future_field: { x: 1 }, user: 'u1' });
eq(extra.usage.completion_tokens <= 3, true, 'unknown fields ignored: request served');
const ex = extra.choices[0].message.content;
check(chat.choices[0].message.content.startsWith(ex.endsWith(REPL) ? ex.slice(0, -1) : ex), 'unknown fields ignored: same greedy text', ex);

// Authentication.
if (process.env.DSV2_API_KEY) {
  await expectError(client({ apiKey: 'wrong-key' }).models.list(), 401);
  await expectError(client({ apiKey: 'wrong-key' }).chat.completions.create({ model: MODEL, messages: msgs }), 401);
}

done('openai_client');
