// Shared helpers of the server end-to-end tests: the server's address, the official client, a
// bounded poll, raw HTTP over a socket, and a tiny assertion counter.
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';

const root = process.env.DSV2_SOURCE_DIR;
if (!root) throw new Error('DSV2_SOURCE_DIR is not set');
const require = createRequire(path.join(root, 'tests', 'npm', 'package.json'));
export const OpenAI = require('openai');

export const PORT = Number(process.env.DSV2_PORT);
export const HOST = '127.0.0.1';
export const BASE = `http://${HOST}:${PORT}`;
export const API_KEY = process.env.DSV2_API_KEY || '';
export const MODEL = process.env.DSV2_MODEL_NAME || 'model';

export function client(opts = {}) {
  return new OpenAI.OpenAI({ baseURL: `${BASE}/v1`, apiKey: API_KEY || 'none', maxRetries: 0, timeout: 60000, ...opts });
}

let failures = 0;
let checks = 0;
export function check(cond, what, detail) {
  checks++;
  if (!cond) {
    failures++;
    console.error(`FAIL: ${what}${detail !== undefined ? ' :: ' + JSON.stringify(detail) : ''}`);
  }
}
export function eq(a, b, what) {
  check(JSON.stringify(a) === JSON.stringify(b), what, { got: a, want: b });
}
export function done(name) {
  console.log(`${name}: ${checks - failures}/${checks} checks passed`);
  // Exit now: pending timers and keep-alive sockets must not hold the process open.
  process.exit(failures > 0 || checks === 0 ? 1 : 0);
}

export async function metrics() {
  const r = await fetch(`${BASE}/metrics`);
  const text = await r.text();
  const m = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

// Polls fn() until it returns true: at most `ms` milliseconds.
export async function until(fn, ms = 10000, step = 50) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (await fn()) return true;
    await new Promise((r) => setTimeout(r, step));
  }
  return false;
}

// One raw HTTP/1.1 exchange: writes `chunks` (strings or Buffers) with `delayMs` between them and
// returns {status, headers, body} once the server closes or the response is complete.
export function rawRequest(chunks, { delayMs = 0, timeoutMs = 20000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(PORT, HOST);
    let data = Buffer.alloc(0);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('raw request timed out'));
    }, timeoutMs);
    const finish = () => {
      clearTimeout(timer);
      const sep = data.indexOf('\r\n\r\n');
      if (sep < 0) return resolve({ status: 0, headers: '', body: data.toString('utf8') });
      const head = data.subarray(0, sep).toString('latin1');
      let body = data.subarray(sep + 4);
      if (/transfer-encoding: chunked/i.test(head)) body = dechunk(body);
      resolve({ status: Number(head.split(' ')[1]), headers: head, body: body.toString('utf8') });
    };
    sock.on('data', (d) => {
      data = Buffer.concat([data, d]);
      const text = data.toString('utf8');
      const sep = text.indexOf('\r\n\r\n');
      if (sep >= 0) {
        const head = text.slice(0, sep);
        const cl = /content-length: (\d+)/i.exec(head);
        if (cl && Buffer.byteLength(text.slice(sep + 4)) >= Number(cl[1])) sock.end();
        if (/transfer-encoding: chunked/i.test(head) && text.endsWith('\r\n0\r\n\r\n')) sock.end();
      }
    });
    sock.on('close', finish);
    sock.on('error', () => {}); // a server that answers early may reset the rest of a large upload
    sock.on('connect', async () => {
      for (let i = 0; i < chunks.length; i++) {
        if (sock.destroyed) break;
        sock.write(chunks[i]);
        if (delayMs && i + 1 < chunks.length) await new Promise((r) => setTimeout(r, delayMs));
      }
    });
  });
}

// Removes chunked transfer framing, on bytes (a chunk may end inside a character).
function dechunk(buf) {
  const parts = [];
  let i = 0;
  while (i < buf.length) {
    const nl = buf.indexOf('\r\n', i);
    if (nl < 0) break;
    const n = parseInt(buf.subarray(i, nl).toString('latin1'), 16);
    if (!n) break;
    parts.push(buf.subarray(nl + 2, nl + 2 + n));
    i = nl + 2 + n + 2;
  }
  return Buffer.concat(parts);
}

export function post(pathname, obj, extraHeaders = {}) {
  const body = typeof obj === 'string' ? obj : JSON.stringify(obj);
  const auth = API_KEY ? `Authorization: Bearer ${API_KEY}\r\n` : '';
  const extra = Object.entries(extraHeaders).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return `POST ${pathname} HTTP/1.1\r\nHost: ${HOST}\r\nContent-Type: application/json\r\n${auth}${extra}` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
