"""Pair-sum lookups (Schedule.lut_pair) against single lookups: lut_gemm kernel time, interleaved.

Usage: python bench/bench_pair_ab.py [--shapes 2/4096/4096,...] [--m 1,4] [--threads 1,2] [--out f.json]
       python bench/bench_pair_ab.py --decode 2,4 [--threads 1] [--decode-rounds 40]   (SmolLM2 g128 RTN decode)
Per (bits, N, K, M, threads): the kernels of one tile width read the same packed copies, call by
call alternating, each call on a copy no recent call read (weights stream as in decode), the
order reversed every round; the table launch is run before each GEMM but only the GEMM is timed.
Variants: 32-row tiles (the default bn) and 64-row tiles, single and pair lookups; at W1-W2 also
"oldtables" (one scale per group, raw: the pre-issue-10 tables) with and without pairs.
Prints the median over rounds of per-round medians, its ratio to the unpaired kernel ("single")
and the same ratio of the 25th percentiles and of the minima of all calls, and at 1 thread of
the median thread CPU time (time.thread_time(): the GEMM runs on the calling thread, so this
excludes preemption by other processes; on a loaded machine it and the minimum are the least
disturbed figures).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import conditions, decode_interleaved, time_interleaved, write_json  # noqa: E402

import lutc  # noqa: E402
import quant  # noqa: E402
from lutc import Schedule  # noqa: E402
from lutc.ops import default_mb, default_prefetch  # noqa: E402

OLD_TABLES = dict(lut_scale_block=1 << 30, lut_centered=False, lut_fine_planes=0)


def variants(bits):
    v = {"single": dict(lut_pair=False), "pair": dict(lut_pair=True),
         "single bn64": dict(lut_pair=False, bn=64), "pair bn64": dict(lut_pair=True, bn=64)}
    if bits <= 2:
        v.update({"oldtables": dict(OLD_TABLES, lut_pair=False), "oldtables+pair": dict(OLD_TABLES, lut_pair=True)})
    return v


def run(bits, N, K, M, threads, rounds, calls, stream_mb, gs=None):
    gs = gs or (64 if bits <= 2 else 128)
    rng = np.random.default_rng(0)
    qw = quant.quantize(rng.standard_normal((N, K)).astype(np.float32), bits, gs, method="rtn")
    x = rng.standard_normal((M, K)).astype(np.float32)
    y = np.zeros((M, N), np.float32)
    kerns = {k: lutc.compile(Schedule.make(bits, gs, mb=default_mb(M), **v)) for k, v in variants(bits).items()}
    first = {}                          # one packed layout per bn, shared by the variants of that bn
    for kern in kerns.values():
        first.setdefault(kern.schedule.layout_key, kern.pack(qw))
    ncopy = max(2 * len(kerns), -(-stream_mb * 2**20 // next(iter(first.values())).nbytes))
    copies = {lk: [] for lk in first}
    for _ in range(ncopy):              # allocated interleaved, so no layout gets the better placement
        for lk, p in first.items():
            copies[lk].append(dataclasses.replace(p, w=p.w.copy(), sz=p.sz.copy()))
    plans = {k: [kern.prepare(c, M, x=x, y=y) for c in copies[kern.schedule.layout_key]] for k, kern in kerns.items()}
    for pls in plans.values():
        for pl in pls:
            pl.run(threads)
    per_round, every, cpu = time_interleaved(
        {k: (lambda c, pls=pls: pls[c].tables(threads), lambda c, pls=pls: pls[c].gemm(threads))
         for k, pls in plans.items()}, rounds, calls, ncopy)
    med = {k: float(np.median(v)) for k, v in per_round.items()}
    p25 = {k: float(np.percentile(v, 25)) for k, v in every.items()}
    best = {k: float(np.min(v)) for k, v in every.items()}
    cpu_med = {k: float(np.median(v)) for k, v in cpu.items()}
    return {"bits": bits, "group_size": gs, "N": N, "K": K, "M": M, "threads": threads, "copies": ncopy,
            "median_ms": {k: v * 1e3 for k, v in med.items()},
            "vs_single": {k: med["single"] / v for k, v in med.items()},
            "p25_ms": {k: v * 1e3 for k, v in p25.items()},
            "p25_vs_single": {k: p25["single"] / v for k, v in p25.items()},
            "min_ms": {k: v * 1e3 for k, v in best.items()},
            "min_vs_single": {k: best["single"] / v for k, v in best.items()},
            "cpu_ms": {k: v * 1e3 for k, v in cpu_med.items()} if threads == 1 else None,
            "cpu_vs_single": {k: cpu_med["single"] / v for k, v in cpu_med.items()} if threads == 1 else None,
            "loadavg": os.getloadavg()[0]}


def decode(bits, threads, rounds):
    """SmolLM2-135M W`bits` g128 RTN decode steps, single vs pair lookups at bn 32 and 64 (every
    linear; each with the default prefetch distance of its bn), interleaved a few steps at a time
    (common.decode_interleaved); the median over all steps (at 1 thread in thread CPU time, which
    excludes preemption)."""
    from runtime import LeanDecoder
    from runtime.models import load_quantized
    qm = load_quantized("smollm2-135m", bits=bits, group_size=128, method="rtn", progress=False)
    cfgs = {f"{k} bn{bn}": dict(lut_pair=k == "pair", bn=bn, prefetch=default_prefetch(Schedule.make(bits, 128, bn=bn)))
            for bn in (32, 64) for k in ("single", "pair")}
    decs = {k: LeanDecoder(qm, n_ctx=256, threads=threads, knobs=v) for k, v in cfgs.items()}
    res = decode_interleaved(decs, rounds, threads)
    med = {k: float(np.median(v)) for k, v in res.items()}
    return {"model": "smollm2-135m", "bits": bits, "group_size": 128, "threads": threads,
            "clock": "thread CPU time" if threads == 1 else "wall", "steps": len(res["single bn32"]),
            "tok_s": {k: 1 / v for k, v in med.items()},
            "vs_single_bn32": {k: med["single bn32"] / v for k, v in med.items()}, "loadavg": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="2/4096/4096,4/4096/4096,2/4096/11008,2/11008/4096,4/4096/11008,4/11008/4096",
                    help="bits/N/K[/group_size],... (group size default: 64 for W1-W2, 128 for W3-W4)")
    ap.add_argument("--m", default="1,4")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=24)
    ap.add_argument("--stream-mb", type=int, default=96, help="bytes of packed copies to rotate through")
    ap.add_argument("--decode", default=None, help="bits,... : SmolLM2 decode A/B instead of GEMMs")
    ap.add_argument("--decode-rounds", type=int, default=40, help="--decode: rounds of 4 steps per configuration")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = {"conditions": conditions(), "target": os.environ.get("LUTC_HOST_TARGET", "host"), "runs": []}
    if a.decode:
        for bits in (int(v) for v in a.decode.split(",")):
            for t in (int(v) for v in a.threads.split(",")):
                r = decode(bits, t, a.decode_rounds)
                out["runs"].append(r)
                print(f"SmolLM2 W{bits} g128 decode t={t} load={r['loadavg']:.1f}  " + "  ".join(
                    f"{k} {v:.1f} tok/s (x{r['vs_single_bn32'][k]:.3f})" for k, v in r["tok_s"].items()), flush=True)
        if a.out:
            write_json(a.out, out)
        return
    for shape in a.shapes.split(","):
        bits, N, K, *g = (int(v) for v in shape.split("/"))
        for M in (int(v) for v in a.m.split(",")):
            for t in (int(v) for v in a.threads.split(",")):
                r = run(bits, N, K, M, t, a.rounds, a.calls, a.stream_mb, *g)
                out["runs"].append(r)
                print(f"W{bits} g{r['group_size']} {N}x{K} M={M} t={t} load={r['loadavg']:.1f}  " + "  ".join(
                    f"{k} {v:.3f} ms (x{r['vs_single'][k]:.3f}, p25 x{r['p25_vs_single'][k]:.3f}, "
                    f"min x{r['min_vs_single'][k]:.3f}"
                    + (f", cpu x{r['cpu_vs_single'][k]:.3f})" if r["cpu_vs_single"] else ")")
                    for k, v in r["median_ms"].items()), flush=True)
    if a.out:
        write_json(a.out, out)


if __name__ == "__main__":
    main()
