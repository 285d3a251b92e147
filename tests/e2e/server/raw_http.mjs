// Raw HTTP against the server: malformed JSON, wrong types, huge bodies, slow senders, a stalled
// reader, a client that disconnects mid-stream (its blocks must be freed), unknown routes, auth.
import net from 'node:net';
import { check, eq, done, rawRequest, post, metrics, until, PORT, HOST, API_KEY, BASE } from './common.mjs';

const MSGS = [{ role: 'user', content: 'Hello' }];
const errOf = (r) => {
  try {
    return JSON.parse(r.body).error;
  } catch {
    return null;
  }
};

// Malformed JSON and non-object bodies.
for (const body of ['{"messages": [', 'not json', '', '[1,2]', '"text"', '{"messages":[{"role":"user","content":"x"}]']) {
  const r = await rawRequest([post('/v1/chat/completions', body)]);
  eq(r.status, 400, `malformed body ${JSON.stringify(body)} -> 400`);
  const e = errOf(r);
  check(e && typeof e.message === 'string' && e.type === 'invalid_request_error', 'OpenAI error object', r.body);
}

// Wrong types name the parameter.
const wrong = [
  [{ messages: 'hi' }, 'messages'],
  [{ messages: [{ role: 'user' }] }, 'messages[0].content'],
  [{ messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
  [{ messages: [{ role: 'user', content: [{ type: 'image_url' }] }] }, 'messages[0].content[0].type'],
  [{ messages: MSGS, n: '2' }, 'n'],
  [{ messages: MSGS, n: 1.5 }, 'n'],
  [{ messages: MSGS, stream: 'yes' }, 'stream'],
  [{ messages: MSGS, stop: 5 }, 'stop'],
  [{ messages: MSGS, stop: ['a', 3] }, 'stop'],
  [{ messages: MSGS, temperature: 'hot' }, 'temperature'],
  [{ messages: MSGS, seed: 'x' }, 'seed'],
  [{ messages: MSGS, logprobs: 1 }, 'logprobs'],
  [{ messages: MSGS, top_logprobs: 30, logprobs: true }, 'top_logprobs'],
  [{ messages: MSGS, presence_penalty: 3 }, 'presence_penalty'],
  [{ messages: MSGS, frequency_penalty: [] }, 'frequency_penalty'],
  [{ messages: MSGS, max_tokens: -5 }, 'max_tokens'],
  [{ messages: MSGS, stream_options: { include_usage: true } }, 'stream_options'],
  [{ messages: MSGS, model: 7 }, 'model'],
];
for (const [body, param] of wrong) {
  const r = await rawRequest([post('/v1/chat/completions', body)]);
  eq(r.status, 400, `${JSON.stringify(body)} -> 400`);
  eq(errOf(r)?.param, param, `error names ${param}`);
}
for (const [body, param] of [[{}, 'prompt'], [{ prompt: 5 }, 'prompt'], [{ prompt: [] }, 'prompt'], [{ prompt: [1, 'a'] }, 'prompt[1]'],
  [{ prompt: 'x', logprobs: true }, 'logprobs'], [{ prompt: 'x', echo: 1 }, 'echo'], [{ prompt: [5, 300] }, 'prompt']]) {
  const r = await rawRequest([post('/v1/completions', body)]);
  eq(r.status, 400, `completions ${JSON.stringify(body)} -> 400`);
  eq(errOf(r)?.param, param, `completions error names ${param}`);
}

// A body over the limit (1 MiB here) gets 413, announced or chunked, and the server keeps serving.
const huge = JSON.stringify({ prompt: 'x'.repeat(3 << 20) });
const r413 = await rawRequest([post('/v1/completions', huge)]);
eq(r413.status, 413, 'huge body -> 413');
check(errOf(r413)?.message?.includes('limit'), '413 has an error object', r413.body.slice(0, 200));
const auth = API_KEY ? `Authorization: Bearer ${API_KEY}\r\n` : '';
const chunkedHead = `POST /v1/completions HTTP/1.1\r\nHost: x\r\n${auth}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n`;
const piece = 'y'.repeat(1 << 20);
const r413c = await rawRequest([chunkedHead, `${(piece.length).toString(16)}\r\n${piece}\r\n`, `${(piece.length).toString(16)}\r\n${piece}\r\n`, '0\r\n\r\n']);
check([400, 413].includes(r413c.status) && errOf(r413c)?.message, 'huge chunked body refused with an error object', r413c.status);

// A slow sender: the request arrives in pieces over ~1.5 s and is answered normally.
const slowBody = post('/v1/completions', { prompt: 'Slow and steady', max_tokens: 5, temperature: 0 });
const parts = [];
for (let i = 0; i < slowBody.length; i += 16) parts.push(slowBody.slice(i, i + 16));
const step = Math.max(1, Math.floor(1500 / parts.length));
const slow = await rawRequest(parts, { delayMs: step });
eq(slow.status, 200, 'slow sender served');
const slowJson = JSON.parse(slow.body);
eq(slowJson.usage.prompt_tokens, 16, 'slow sender prompt intact');

// Unknown route and method; auth on /v1 but not on /health.
eq((await rawRequest([`GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`])).status, 404, 'unknown route 404');
if (API_KEY) {
  const noKey = await rawRequest([`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`]);
  eq(noKey.status, 401, 'no key -> 401');
  eq(errOf(noKey)?.code, 'invalid_api_key', '401 error code');
  eq((await fetch(`${BASE}/health`)).status, 200, '/health needs no key');
}

// Streams one request on a raw socket; calls onData(text so far, socket) until it returns true.
function openStream(body, onData) {
  return new Promise((resolve) => {
    const sock = net.connect(PORT, HOST, () => sock.write(post('/v1/chat/completions', body)));
    // Bytes, decoded only as a whole: a character may be split between two reads.
    let raw = Buffer.alloc(0);
    let settled = false;
    sock.on('data', (d) => {
      raw = Buffer.concat([raw, d]);
      if (!settled && onData(raw.toString('utf8'), sock)) {
        settled = true;
        resolve({ sock, raw });
      }
    });
    sock.on('close', () => {
      if (!settled) resolve({ sock, raw });
    });
    sock.on('error', () => {});
  });
}

// A client that disconnects mid-stream: its sequences leave the batch and their blocks are freed.
// (64 choices of 600 tokens keep the engine busy long enough to disconnect in the middle; the
// server runs with a cache large enough for all of them.)
const longReq = { messages: [{ role: 'user', content: 'A long story.' }], max_tokens: 600, n: 64, stream: true, ignore_eos: true };
const { sock } = await openStream(longReq, (t) => t.includes('"role"'));
let mid = {};
const running = await until(async () => {
  mid = await metrics();
  return mid['dsv2_running_batch_size'] >= 1 && mid['dsv2_cache_blocks_used'] >= 1;
}, 5000, 5);
check(running, 'the stream holds blocks while running', mid);
sock.destroy();
const freed = await until(async () => {
  const m = await metrics();
  return m['dsv2_running_batch_size'] === 0 && m['dsv2_cache_blocks_used'] === 0;
}, 5000, 20);
check(freed, 'a disconnected stream frees its blocks');
const m1 = await metrics();
check((m1['dsv2_requests_total{endpoint="/v1/chat/completions",status="499"}'] ?? 0) >= 1, 'the disconnect is counted', m1);
check(m1['dsv2_generation_tokens_total'] < mid['dsv2_generation_tokens_total'] + 64 * 600, 'generation stopped early');

// The same for a non-streaming request, which writes nothing before it ends.
const quiet = net.connect(PORT, HOST, () => quiet.write(post('/v1/chat/completions', { ...longReq, stream: false })));
quiet.on('error', () => {});
check(await until(async () => (await metrics())['dsv2_running_batch_size'] >= 1, 5000, 10), 'the non-streaming request runs');
quiet.destroy();
check(await until(async () => {
  const m = await metrics();
  return m['dsv2_running_batch_size'] === 0 && m['dsv2_cache_blocks_used'] === 0;
}, 5000, 20), 'a vanished non-streaming client frees its blocks');
const m2 = await metrics();
eq(m2['dsv2_requests_total{endpoint="/v1/chat/completions",status="499"}'], m1['dsv2_requests_total{endpoint="/v1/chat/completions",status="499"}'] + 1, 'the second disconnect is counted');

// A stalled reader: the server keeps serving others while one client does not read (its output,
// 8 x 500 tokens of JSON chunks, is larger than the socket buffers); then it reads everything.
const stallReq = { messages: [{ role: 'user', content: 'Another long story, please.' }], max_tokens: 500, n: 8, ignore_eos: true, temperature: 0 };
const ref = JSON.parse((await rawRequest([post('/v1/chat/completions', stallReq)])).body);
const stalled = await openStream({ ...stallReq, stream: true }, (t, s) => {
  if (t.includes('"role"')) {
    s.pause();
    return true;
  }
  return false;
});
const h = await fetch(`${BASE}/health`);
eq(h.status, 200, 'health answers while a client stalls');
const quick = await rawRequest([post('/v1/completions', { prompt: 'quick', max_tokens: 3, temperature: 0 })]);
eq(quick.status, 200, 'other requests are served while a client stalls');
await new Promise((r) => setTimeout(r, 1000));
let restRaw = stalled.raw;
const finished = await new Promise((resolve) => {
  const timer = setTimeout(() => resolve(false), 20000);
  stalled.sock.on('data', (d) => {
    restRaw = Buffer.concat([restRaw, d]);
    if (restRaw.includes('data: [DONE]')) {
      clearTimeout(timer);
      resolve(true);
    }
  });
  stalled.sock.resume();
});
check(finished, 'the stalled client receives the whole stream once it reads');
const rest = restRaw.toString('utf8');
const body = rest.slice(rest.indexOf('\r\n\r\n') + 4);
const texts = Array(8).fill('');
// Chunked transfer framing may split an event: join the SSE payloads after removing chunk-size lines.
for (const line of body.replace(/\r\n[0-9a-f]+\r\n/g, '').split('\n')) {
  if (!line.startsWith('data: {')) continue;
  const ev = JSON.parse(line.slice(6));
  for (const c of ev.choices) texts[c.index] += c.delta.content ?? '';
}
for (let i = 0; i < 8; i++) eq(texts[i], ref.choices[i].message.content, `stalled stream choice ${i} complete`);
stalled.sock.destroy();
check(await until(async () => (await metrics())['dsv2_cache_blocks_used'] === 0, 5000), 'no blocks left after the raw tests');

done('raw_http');
