"""Knob A/B of the M=1 LUT GEMM (lut_gemm alone): the host's default schedule against variants of it,
interleaved, streamed from DRAM next to a streaming read of the same bytes, or hot (weights cached).

Usage: python bench/bench_knob_ab.py [--shapes 2/4096/4096/128,...] --var base= --var bn64=bn:64,prefetch:1 ...
       python bench/bench_knob_ab.py --hot --shapes 2/4096/4096/128 --var base= --var pf0=prefetch:0
A variant is NAME=knob:value,... applied to ops.default_schedule(bits, group_size, 1) (the first is
the reference; layouts that differ get their own packed copies). Stream mode (default): every call
reads a copy no recent call read (bench/common.time_interleaved), the order reversed every round,
alternating with "stream" (bench_e2e's roofline probe over float32 copies of the packed bytes);
per variant the median (and 25th percentile) of thread CPU time at 1 thread (the GEMM runs on the
calling thread, so preemption by other processes is excluded; memory contention is not), wall time
at 2+, its ratio to the first variant and its packed bytes/s as a fraction of the probe's. Hot mode:
`--reps` back-to-back calls on one copy per timing, thread CPU time, 20th percentile over rounds, per
32-row tile and weight group (compute cost: weights in cache). Outputs are checked against the first
variant's (a variant of other table precision differs, and is flagged).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_e2e import _stream_kernel  # noqa: E402
from common import conditions, time_interleaved, write_json  # noqa: E402

import lutc  # noqa: E402
import quant  # noqa: E402
from lutc.ops import default_schedule  # noqa: E402

STREAM_CH = 1 << 12                     # float32 per stream program


def parse_var(spec):
    """'name=knob:value,...' -> (name, {knob: value}) with ints and booleans parsed."""
    name, _, rest = spec.partition("=")
    knobs = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition(":")
        knobs[k] = v == "True" if v in ("True", "False") else int(v) if v.lstrip("-").isdigit() else v
    return name, knobs


def setup(bits, N, K, gs, variants):
    rng = np.random.default_rng(0)
    qw = quant.quantize(rng.standard_normal((N, K)).astype(np.float32), bits, gs, method="rtn")
    x = rng.standard_normal((1, K)).astype(np.float32)
    kerns = {n: lutc.compile(default_schedule(bits, gs, 1).replace(**kn)) for n, kn in variants}
    packed = {}
    for kern in kerns.values():
        packed.setdefault(kern.schedule.layout_key, kern.pack(qw))
    return x, kerns, packed


def check(plans, y):
    """Run each variant once; name -> max |difference| from the first variant's output (0: same bits)."""
    ref, diff = None, {}
    for k, pl in plans.items():
        pl.run(1)
        ref = y.copy() if ref is None else ref
        diff[k] = float(np.abs(ref - y).max())
    return diff


def stream(bits, N, K, gs, variants, threads, rounds, calls, stream_mb):
    x, kerns, packed = setup(bits, N, K, gs, variants)
    y = np.zeros((1, N), np.float32)
    nbytes = {lk: p.w.nbytes + p.sz.nbytes for lk, p in packed.items()}
    ncopy = max(4, -(-stream_mb * 2**20 // max(nbytes.values())))
    copies = {lk: [] for lk in packed}
    for _ in range(ncopy):              # allocated interleaved, so no layout gets the better placement
        for lk, p in packed.items():
            copies[lk].append(dataclasses.replace(p, w=p.w.copy(), sz=p.sz.copy()))
    ns = -(-max(nbytes.values()) // (4 * STREAM_CH)) * STREAM_CH
    sarr = [np.ones(ns, np.float32) for _ in range(ncopy)]
    sout = np.zeros(ns // STREAM_CH, np.float32)
    skern = _stream_kernel()
    plans = {k: [kern.prepare(c, 1, x=x, y=y) for c in copies[kern.schedule.layout_key]] for k, kern in kerns.items()}
    diff = check({k: v[0] for k, v in plans.items()}, y)
    timed = {k: (lambda c, pls=pls: pls[c].tables(threads), lambda c, pls=pls: pls[c].gemm(threads))
             for k, pls in plans.items()}
    timed["stream"] = (None, lambda c: skern[(sout.size,)](sarr[c], sout, CH=STREAM_CH, threads=threads))
    _, every, cpu = time_interleaved(timed, rounds, calls, ncopy, first_copy=1)      # copy 0 is warm
    clock = cpu if threads == 1 else every
    med = {k: float(np.median(v)) for k, v in clock.items()}
    p25 = {k: float(np.percentile(v, 25)) for k, v in clock.items()}
    first = next(iter(kerns))
    probe = ns * 4 / med["stream"]
    return {"mode": "stream", "bits": bits, "N": N, "K": K, "group_size": gs, "threads": threads,
            "clock": "thread CPU" if threads == 1 else "wall", "copies": ncopy, "stream_GBs": probe / 1e9,
            "variants": {k: {"knobs": dict(variants)[k], "ms": med[k] * 1e3, "p25_ms": p25[k] * 1e3,
                             "ratio": med[first] / med[k], "p25_ratio": p25[first] / p25[k],
                             "frac_of_stream": nbytes[kerns[k].schedule.layout_key] / med[k] / probe,
                             "max_diff": diff[k]} for k in kerns},
            "loadavg": os.getloadavg()}


def hot(bits, N, K, gs, variants, reps, rounds):
    x, kerns, packed = setup(bits, N, K, gs, variants)
    y = np.zeros((1, N), np.float32)
    plans = {k: kern.prepare(packed[kern.schedule.layout_key], 1, x=x, y=y) for k, kern in kerns.items()}
    diff = check(plans, y)
    ts = {k: [] for k in plans}
    for r in range(rounds):
        for k, pl in (list(plans.items()) if r % 2 == 0 else list(plans.items())[::-1]):
            pl.tables(1)
            c = time.thread_time()
            for _ in range(reps):
                pl.gemm(1)
            ts[k].append((time.thread_time() - c) / reps)
    p20 = {k: float(np.percentile(v, 20)) for k, v in ts.items()}
    first = next(iter(kerns))
    return {"mode": "hot", "bits": bits, "N": N, "K": K, "group_size": gs, "threads": 1, "clock": "thread CPU",
            "variants": {k: {"knobs": dict(variants)[k], "us": p20[k] * 1e6, "ratio": p20[first] / p20[k],
                             "ns_per_tile_group": p20[k] / (-(-N // kerns[k].schedule.bn) * (K // gs)) * 1e9,
                             "max_diff": diff[k]} for k in kerns},
            "loadavg": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="2/4096/4096/128,2/11008/4096/128,2/4096/11008/128",
                    help="bits/N/K/group_size,...")
    ap.add_argument("--var", action="append", default=None, help="NAME=knob:value,... (repeat; first = reference)")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--stream-mb", type=int, default=128, help="bytes of packed copies to rotate through")
    ap.add_argument("--hot", action="store_true", help="weights cached: back-to-back calls on one copy")
    ap.add_argument("--reps", type=int, default=30, help="--hot: calls per timing")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    variants = [parse_var(v) for v in (a.var or ["default="])]
    out = {"conditions": conditions(), "runs": []}
    for shape in a.shapes.split(","):
        bits, N, K, gs = (int(v) for v in shape.split("/"))
        for t in ([1] if a.hot else [int(v) for v in a.threads.split(",")]):
            r = (hot(bits, N, K, gs, variants, a.reps, a.rounds) if a.hot
                 else stream(bits, N, K, gs, variants, t, a.rounds, a.calls, a.stream_mb))
            out["runs"].append(r)
            head = f"W{bits} g{gs} {N}x{K} t={t} {r['mode']} ({r['clock']}) load {r['loadavg'][0]:.1f}"
            print(head + (f" stream probe {r['stream_GBs']:.1f} GB/s" if a.hot is False else ""), flush=True)
            for k, v in r["variants"].items():
                flag = "" if v["max_diff"] == 0 else f"  (output differs: max {v['max_diff']:.3g})"
                if a.hot:
                    print(f"  {k:12s} {v['us']:9.1f} us  {v['ns_per_tile_group']:6.1f} ns per tile-group  x{v['ratio']:.3f}{flag}")
                else:
                    print(f"  {k:12s} {v['ms']:8.3f} ms  x{v['ratio']:.3f} (p25 x{v['p25_ratio']:.3f})  "
                          f"{100 * v['frac_of_stream']:.0f}% of the probe{flag}", flush=True)
    if a.out:
        write_json(a.out, out)


if __name__ == "__main__":
    main()
