#!/usr/bin/env python3
"""Kernel timeline of one pass from a DSV2_CUDA_TRACE_FILE (builds with -DDSV2_CUDA_TRACE=ON).

Each record is one block (first start and last end of thread 0, global timer in ns). Blocks are
grouped into launches by kernel, grid size and time (a new launch when a block starts more than
--split-us after the previous block of the same kernel and grid started). Prints, for the chosen
pass, every launch (start and end relative to the pass, duration, blocks, idle time since the
previous launch ended, when its first PDL wait returned: after its first block started and after the
launch before it ended), the per-kernel totals with the median time from the end of the launch before
(in end order) to the launch's end, and the gap from the previous pass.

--marks: for each kernel, the median over the last 8 passes with T tokens of its blocks' start, PDL wait,
in-kernel stamps m0-m3 (DSV2_TRACE_MARK, thread 0; what each marks is in the kernel's source) and
end, in us after the launch before it ended (launches in start order; the median of each launch's
block median, and of each launch's last end). The H200's global timer moves in steps of ~0.26 us.

Usage: bench/gpu/trace.py TRACE.csv[.gz] [--pass N] [--tokens T] [--launches] [--marks]
  default pass: the median-duration pass among the last 8 passes with T tokens (default 1)
"""
import argparse
import csv
import gzip
import statistics
import sys
from collections import defaultdict


def load(path):
    passes = defaultdict(list)
    tokens = {}
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        for row in csv.DictReader(f):
            p = int(row["pass"])
            tokens[p] = int(row["tokens"])
            passes[p].append((row["kernel"], int(row["sm"]), int(row["block"]), int(row["blocks"]),
                              int(row["t0_ns"]), int(row["t1_ns"]), int(row.get("tw_ns") or 0),
                              tuple(int(row.get(f"m{i}_ns") or 0) for i in range(4))))
    return passes, tokens


def launches(recs, split_ns):
    groups = defaultdict(list)
    for r in recs:
        groups[(r[0], r[3])].append(r)
    out = []
    for (kernel, blocks), rs in groups.items():
        rs.sort(key=lambda r: r[4])
        cur = [rs[0]]
        for r in rs[1:]:
            if r[4] - cur[-1][4] > split_ns:
                out.append((kernel, blocks, cur))
                cur = []
            cur.append(r)
        out.append((kernel, blocks, cur))
    res = []
    for kernel, blocks, rs in out:
        waits = [r[6] for r in rs if r[6] > 0]
        res.append({"kernel": kernel, "grid": blocks, "seen": len(rs), "t0": min(r[4] for r in rs),
                    "t1": max(r[5] for r in rs), "tw": min(waits) if waits else 0, "recs": rs})
    res.sort(key=lambda l: l["t0"])
    return res


def marks(passes, tokens, t, split_ns):
    cols = ["start", "wait", "m0", "m1", "m2", "m3", "end", "last end"]
    agg = defaultdict(lambda: defaultdict(list))
    for p in [q for q in sorted(passes) if tokens[q] == t][-8:]:
        ls = launches(passes[p], split_ns)
        for prev, l in zip(ls, ls[1:]):
            rs, base = l["recs"], prev["t1"]
            vals = {"start": [r[4] for r in rs], "wait": [r[6] for r in rs if r[6]], "end": [r[5] for r in rs]}
            for i in range(4):
                vals[f"m{i}"] = [r[7][i] for r in rs if r[7][i]]
            for c, v in vals.items():
                if v:
                    agg[l["kernel"]][c].append((statistics.median(v) - base) / 1000)
            agg[l["kernel"]]["last end"].append((l["t1"] - base) / 1000)
    print(f"{'kernel':>12} " + " ".join(f"{c:>8}" for c in cols) + "   (us after the launch before ended)")
    for k, d in agg.items():
        print(f"{k:>12} " + " ".join(f"{statistics.median(d[c]):8.2f}" if d[c] else f"{'-':>8}" for c in cols))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--pass", dest="pass_", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--split-us", type=float, default=3.0)
    ap.add_argument("--launches", action="store_true", help="print every launch")
    ap.add_argument("--marks", action="store_true", help="per kernel: median block stamps (see above)")
    a = ap.parse_args()
    passes, tokens = load(a.trace)
    if not passes:
        sys.exit("trace: no records")
    if a.marks:
        marks(passes, tokens, a.tokens, int(a.split_us * 1000))
        return
    span = {p: (min(r[4] for r in rs), max(r[5] for r in rs)) for p, rs in passes.items()}
    if a.pass_ is None:
        cand = [p for p in sorted(passes) if tokens[p] == a.tokens][-8:]
        if not cand:
            sys.exit(f"trace: no pass with {a.tokens} tokens")
        cand.sort(key=lambda p: span[p][1] - span[p][0])
        a.pass_ = cand[len(cand) // 2]
    p = a.pass_
    ls = launches(passes[p], int(a.split_us * 1000))
    t_begin, t_end = span[p]
    prev = [q for q in passes if q < p]
    gap = f"{(t_begin - span[max(prev)][1]) / 1000:.1f} us after the previous pass ended" if prev else "first pass"
    print(f"pass {p} ({tokens[p]} tokens): {(t_end - t_begin) / 1000:.1f} us from the first block start to the "
          f"last block end, {len(ls)} launches; {gap}")
    busy_end = t_begin
    idle = 0
    per = defaultdict(lambda: [0, 0.0, 0.0])
    if a.launches:
        print(f"{'start':>9} {'end':>9} {'us':>7} {'idle':>6} {'wait':>6} {'w-prev':>6}  kernel (grid, blocks seen)")
    prev_end = None
    for l in ls:
        # wait: the first PDL wait of the launch returned this long after its first block started;
        # w-prev: ... this long after the launch before it ended
        w = f"{(l['tw'] - l['t0']) / 1000:6.1f}" if l["tw"] else f"{'-':>6}"
        wp = f"{(l['tw'] - prev_end) / 1000:6.1f}" if l["tw"] and prev_end else f"{'-':>6}"
        prev_end = l["t1"]
        gap_ns = max(0, l["t0"] - busy_end)
        idle += gap_ns
        busy_end = max(busy_end, l["t1"])
        d = (l["t1"] - l["t0"]) / 1000
        s = per[l["kernel"]]
        s[0] += 1
        s[1] += d
        s[2] += gap_ns / 1000
        if a.launches:
            print(f"{(l['t0'] - t_begin) / 1000:9.1f} {(l['t1'] - t_begin) / 1000:9.1f} {d:7.1f} {gap_ns / 1000:6.1f} {w} {wp}  "
                  f"{l['kernel']} ({l['grid']}, {l['seen']})")
    print(f"no kernel running for {idle / 1000:.1f} us of the pass")
    # The chain's share of each kernel: with launches ordered by their last block's end, how much later
    # each ends than the launch before it (the kernels of a decode step depend on each other in turn).
    steps = defaultdict(list)
    by_end = sorted(ls, key=lambda l: l["t1"])
    for prev, l in zip(by_end, by_end[1:]):
        steps[l["kernel"]].append((l["t1"] - prev["t1"]) / 1000)
    print(f"{'kernel':>12} {'launches':>8} {'us each':>8} {'us total':>9} {'idle before, us':>16} {'end step, median us':>20}")
    for k, (n, tot, gaps) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        st = f"{statistics.median(steps[k]):20.2f}" if steps[k] else f"{'-':>20}"
        print(f"{k:>12} {n:8d} {tot / n:8.2f} {tot:9.1f} {gaps:16.1f} {st}")
    durs = [span[q][1] - span[q][0] for q in passes if tokens[q] == tokens[p]]
    print(f"passes with {tokens[p]} tokens: {len(durs)}, median span {statistics.median(durs) / 1000:.1f} us")


if __name__ == "__main__":
    main()
