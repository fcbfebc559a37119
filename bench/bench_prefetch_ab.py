"""Software prefetch in lut_gemm (Schedule.prefetch) against none, next to a streaming read of the
same bytes: kernel time at M=1, interleaved.

Usage: python bench/bench_prefetch_ab.py [--shapes 2/4096/4096,...] [--threads 1] [--pf 0,1,2,4] [--out f.json]
       python bench/bench_prefetch_ab.py --decode 2:2,4 4:1   (7B-shape decode, 1 thread, instead)
Per (bits, N, K, threads): the default schedule (ops.default_schedule, M=1) with prefetch 0 / 1 /
2 / 4 groups ahead, all reading the same packed copies (cycled: each call reads a copy no recent
call read, so weights stream as in decode), call by call alternating with "stream" (the roofline
probe of bench_e2e.py reading float32 arrays of the packed weights' + scales' bytes, cycled the
same way), order reversed every round; the table launch runs before each GEMM, untimed.
--decode bits:D,..: bench_e2e.py's llama7b model (LLaMA-2-7B shapes, 4 layers, g128) at 1 thread,
prefetch 0 and each D on the same packed weights, 32 steps per decoder per round, interleaved
(order swapped every round); per decoder the median over rounds of per-round median step times,
wall and thread CPU time, as a fraction of bench_e2e.bandwidth (512 MB probe, before and after).
Prints per variant the median over rounds of per-round medians, the 25th percentile and the
minimum of all calls, the median thread CPU time at 1 thread (the GEMM runs on the calling thread),
and each as a fraction of the stream probe's figure of the same kind (bytes / time).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_e2e import _stream_kernel  # noqa: E402
from common import conditions, time_interleaved, write_json  # noqa: E402

import lutc  # noqa: E402
import quant  # noqa: E402
from lutc.ops import default_schedule  # noqa: E402

STREAM_CH = 1 << 12                     # float32 per stream program


def run(bits, N, K, threads, pfs, rounds, calls, stream_mb, gs=None):
    gs = gs or (64 if bits <= 2 else 128)
    rng = np.random.default_rng(0)
    qw = quant.quantize(rng.standard_normal((N, K)).astype(np.float32), bits, gs, method="rtn")
    x = rng.standard_normal((1, K)).astype(np.float32)
    y = np.zeros((1, N), np.float32)
    base = default_schedule(bits, gs, 1)
    kerns = {f"pf{d}": lutc.compile(base.replace(prefetch=d)) for d in pfs}
    packed = next(iter(kerns.values())).pack(qw)       # prefetch does not change the layout
    nbytes = packed.w.nbytes + packed.sz.nbytes
    ncopy = max(4, -(-stream_mb * 2**20 // nbytes))
    copies = [dataclasses.replace(packed, w=packed.w.copy(), sz=packed.sz.copy()) for _ in range(ncopy)]
    ns = -(-nbytes // (4 * STREAM_CH)) * STREAM_CH
    sarr = [np.ones(ns, np.float32) for _ in range(ncopy)]
    sout = np.zeros(ns // STREAM_CH, np.float32)
    skern = _stream_kernel()
    plans = {k: [kern.prepare(c, 1, x=x, y=y) for c in copies] for k, kern in kerns.items()}
    ref = None
    for k, pls in plans.items():
        pls[0].run(threads)
        ref = y.copy() if ref is None else ref
        if not np.array_equal(ref, y):
            raise AssertionError(f"{k} differs from {next(iter(plans))}")
    names = list(plans) + ["stream"]
    timed = {k: (lambda c, pls=pls: pls[c].tables(threads), lambda c, pls=pls: pls[c].gemm(threads))
             for k, pls in plans.items()}
    timed["stream"] = (None, lambda c: skern[(sout.size,)](sarr[c], sout, CH=STREAM_CH, threads=threads))
    per_round, every, cpu = time_interleaved(timed, rounds, calls, ncopy, first_copy=1)  # copy 0 is warm
    sbytes = ns * 4
    stat = {"median": {k: float(np.median(v)) for k, v in per_round.items()},
            "p25": {k: float(np.percentile(v, 25)) for k, v in every.items()},
            "min": {k: float(np.min(v)) for k, v in every.items()}}
    if threads == 1:
        stat["cpu"] = {k: float(np.median(v)) for k, v in cpu.items()}
    frac = {s: {k: (nbytes / v[k]) / (sbytes / v["stream"]) for k in names} for s, v in stat.items()}
    return {"bits": bits, "group_size": gs, "N": N, "K": K, "threads": threads, "copies": ncopy,
            "schedule": base.to_json() if hasattr(base, "to_json") else repr(base), "bytes": nbytes,
            "ms": {s: {k: t * 1e3 for k, t in v.items()} for s, v in stat.items()},
            "frac_of_stream": frac, "stream_GBs": {s: sbytes / v["stream"] / 1e9 for s, v in stat.items()},
            "loadavg": os.getloadavg()}


def decode(bits, pfs, rounds, steps=32):
    from bench_e2e import bandwidth, decode_steps, lutc_model
    from runtime import LeanDecoder
    base = LeanDecoder(lutc_model("llama7b", bits), n_ctx=64, threads=1)
    decs = {"pf0": base}
    for d in pfs:
        decs[f"pf{d}"] = LeanDecoder(base.to_packed_model(), n_ctx=64, threads=1, knobs={"prefetch": d})
    for d in decs.values():
        decode_steps(d, [1, 2, 3, 4], 4)
    bw_cpu = {}
    bw = bandwidth([1], 5, cpu_out=bw_cpu)[1]
    wall, cpu = ({k: [] for k in decs} for _ in range(2))
    for r in range(rounds):
        for k in (list(decs) if r % 2 == 0 else list(decs)[::-1]):
            w, c = decode_steps(decs[k], [1, 2, 3, 4], steps)
            wall[k].append(w)
            cpu[k].append(c)
    bw = max(bw, bandwidth([1], 5, cpu_out=bw_cpu)[1])
    wb = base.weight_bytes
    w = {k: float(np.median(v)) for k, v in wall.items()}
    c = {k: float(np.median(v)) for k, v in cpu.items()}
    return {"model": "llama7b (4 layers)", "bits": bits, "group_size": 128, "threads": 1, "weight_bytes": wb,
            "bandwidth_GBs": bw, "bandwidth_cpu_GBs": bw_cpu[1], "wall_ms": {k: v * 1e3 for k, v in w.items()},
            "cpu_ms": {k: v * 1e3 for k, v in c.items()},
            "roofline_frac": {k: wb / v / (bw * 1e9) for k, v in w.items()},
            "roofline_frac_cpu": {k: wb / v / (bw_cpu[1] * 1e9) for k, v in c.items()},
            "loadavg": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="2/4096/4096,2/11008/4096,2/4096/11008,4/4096/4096,4/11008/4096,4/4096/11008",
                    help="bits/N/K[/group_size],... (group size default: 64 for W1-W2, 128 for W3-W4)")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--pf", default="0,1,2,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--stream-mb", type=int, default=96, help="bytes of packed copies to rotate through")
    ap.add_argument("--decode", nargs="*", default=None, help="bits:D,D ... : 7B-shape decode A/B instead")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = {"conditions": conditions(), "target": os.environ.get("LUTC_HOST_TARGET", "host"), "runs": []}
    if a.decode:
        for spec in a.decode:
            bits, ds = spec.split(":")
            r = decode(int(bits), [int(v) for v in ds.split(",")], a.rounds)
            out["runs"].append(r)
            print(f"W{bits} g128 7B-shape decode t=1 load {r['loadavg'][0]:.1f} probe {r['bandwidth_GBs']:.1f} GB/s "
                  f"(cpu {r['bandwidth_cpu_GBs']:.1f})", flush=True)
            for k in r["wall_ms"]:
                print(f"  {k:5s} wall {r['wall_ms'][k]:.2f} ms ({100 * r['roofline_frac'][k]:.0f}%, "
                      f"x{r['wall_ms']['pf0'] / r['wall_ms'][k]:.3f})  cpu {r['cpu_ms'][k]:.2f} ms "
                      f"({100 * r['roofline_frac_cpu'][k]:.0f}%, x{r['cpu_ms']['pf0'] / r['cpu_ms'][k]:.3f})", flush=True)
        if a.out:
            write_json(a.out, out)
        return
    pfs = [int(v) for v in a.pf.split(",")]
    for shape in a.shapes.split(","):
        bits, N, K, *g = (int(v) for v in shape.split("/"))
        for t in (int(v) for v in a.threads.split(",")):
            r = run(bits, N, K, t, pfs, a.rounds, a.calls, a.stream_mb, *g)
            out["runs"].append(r)
            la = r["loadavg"]
            print(f"W{bits} g{r['group_size']} {N}x{K} t={t} load {la[0]:.1f}/{la[1]:.1f} stream "
                  + " ".join(f"{s} {v:.1f}" for s, v in r["stream_GBs"].items()) + " GB/s", flush=True)
            for k in r["ms"]["median"]:
                print(f"  {k:7s} " + "  ".join(f"{s} {r['ms'][s][k]:.3f} ms ({100 * r['frac_of_stream'][s][k]:.0f}%)"
                                             for s in r["ms"]), flush=True)
    if a.out:
        write_json(a.out, out)


if __name__ == "__main__":
    main()
