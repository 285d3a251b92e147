#!/usr/bin/env python3
"""Serving benchmark client in the Python standard library (for machines without Node): streams
chat completions over http.client at fixed concurrency levels and prints one JSON line per level
with requests/s, output tokens/s, time to first token and inter-token latency (client side).

  python3 bench/serve/bench_serve.py --port 8000 [--concurrency 1,16,64] [--requests-per-client 4]
         [--max-tokens 64]
"""
import argparse
import http.client
import json
import statistics
import threading
import time

TOPICS = ["the sea", "a lighthouse", "winter", "a market town", "old ships", "the harvest", "a long road", "rivers"]


def one(port, i, max_tokens, ttft, itl, lock):
    body = json.dumps({"messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]} (request {i})."}],
                       "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    last, tokens, mine_ttft, mine_itl = None, 0, [], []
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            if not frame.startswith(b"data: ") or frame == b"data: [DONE]":
                continue
            ev = json.loads(frame[6:])
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            if ev["choices"] and ev["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                (mine_ttft.append((now - t0) * 1e3) if last is None else mine_itl.append((now - last) * 1e3))
                last = now
    conn.close()
    with lock:
        ttft.extend(mine_ttft)
        itl.extend(mine_itl)
    return tokens


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


def level(port, conc, per_client, max_tokens):
    ttft, itl, lock = [], [], threading.Lock()
    counter = {"next": 0, "tokens": 0}
    total = conc * per_client

    def worker():
        while True:
            with lock:
                i = counter["next"]
                counter["next"] += 1
            if i >= total:
                return
            n = one(port, i, max_tokens, ttft, itl, lock)
            with lock:
                counter["tokens"] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    return {"concurrency": conc, "requests": total, "seconds": round(secs, 3), "requests_per_s": round(total / secs, 3),
            "output_tokens_per_s": round(counter["tokens"] / secs, 1),
            "ttft_ms_mean": round(statistics.fmean(ttft), 1), "ttft_ms_p50": round(pct(ttft, 50), 1),
            "ttft_ms_p99": round(pct(ttft, 99), 1), "itl_ms_mean": round(statistics.fmean(itl), 2),
            "itl_ms_p50": round(pct(itl, 50), 2), "itl_ms_p99": round(pct(itl, 99), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    one(a.port, 0, a.max_tokens, [], [], threading.Lock())  # warm-up
    for c in (int(x) for x in a.concurrency.split(",")):
        r = level(a.port, c, a.requests_per_client, a.max_tokens)
        print(json.dumps({"max_tokens": a.max_tokens, "client": "bench_serve.py (http.client)", **r}), flush=True)


if __name__ == "__main__":
    main()
