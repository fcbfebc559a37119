"""Prefill GEMM microbench: the dot path vs the M-blocked LUT path vs torch fp32 matmul, same run.

Usage: python bench/bench_prefill_gemm.py [--shapes smollm2,llama7b] [--m 16,128,512] [--bits 2,4]
       [--threads 1] [--target host|x86-avx2] [--reps 3] [--dot bm,ns[,act_block[,res]] ...]
       [--clock wall|cpu] [--out FILE]

Per (bits, shape, M): the default LUT prefill schedule (lutc.ops.default_schedule with path="lut"),
the dot path with each --dot configuration (dot_bm, dot_ns, act_block, act_residual; default:
lutc.ops.default_dot's), which of the two default_schedule picks (`default`), and torch's float32 x @ W^T, timed round-robin (min of --reps calls per round, best
round), reported as ms and the ratio lut / dot and torch / dot (> 1: dot is faster). --clock cpu
times process CPU seconds instead of wall seconds (less sensitive to other jobs on a shared host).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {"smollm2": [(576, 576), (1536, 576), (576, 1536)],
          "llama7b": [(4096, 4096), (11008, 4096), (4096, 11008)]}


def best(fn, reps, clock="wall"):
    """The fastest of `reps` timed calls after one untimed call (wall or process CPU seconds)."""
    from bench.common import time_calls
    return min(time_calls(fn, reps, warmup=1)[2 if clock == "cpu" else 0])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="smollm2,llama7b")
    p.add_argument("--m", default="16,128,512")
    p.add_argument("--bits", default="2,4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target", default="host")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dot", nargs="*", default=[], help="dot_bm,dot_ns[,act_block[,act_residual 0/1]] configurations")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--out")
    a = p.parse_args()
    import quant
    import torch
    from lutc.ops import default_dot, default_schedule, get_kernel
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    rows = []
    print(f"load average {os.getloadavg()[0]:.2f}, target {a.target}, threads {a.threads}, clock {a.clock}", flush=True)
    for bits in [int(b) for b in a.bits.split(",")]:
        for shp in a.shapes.split(","):
            for N, K in SHAPES[shp]:
                qw = quant.quantize(rng.standard_normal((N, K)).astype(np.float32), bits, 128, method="rtn")
                wt = torch.from_numpy(qw.dequantize())
                for M in [int(m) for m in a.m.split(",")]:
                    x = rng.standard_normal((M, K)).astype(np.float32)
                    xt = torch.from_numpy(x)
                    base = default_schedule(bits, 128, M, a.target)
                    cands = {"lut": base.replace(path="lut")}
                    for c in a.dot or [None]:
                        if c is None:
                            s = default_dot(base, M, a.target)
                        else:
                            v = [int(t) for t in c.split(",")]
                            s = default_dot(base, M, a.target).replace(dot_bm=v[0], dot_ns=v[1], act_block=v[2] if len(v) > 2 else 128,
                                             act_residual=bool(v[3]) if len(v) > 3 else True)
                        cands[f"dot bm{s.dot_bm} ns{s.dot_ns} ab{s.act_block}{'+r' if s.act_residual else ''}"] = s
                    kerns = {n: get_kernel(s, a.target) for n, s in cands.items()}
                    times = {n: [] for n in list(kerns) + ([] if a.no_torch else ["torch"])}
                    for _ in range(a.rounds):
                        for n, k in kerns.items():
                            times[n].append(best(lambda: k(x, qw, threads=a.threads), a.reps, a.clock))
                        if not a.no_torch:
                            times["torch"].append(best(lambda: xt @ wt.T, a.reps, a.clock))
                    t = {n: min(v) for n, v in times.items()}
                    dots = [n for n in t if n.startswith("dot")]
                    fastest = min(dots, key=t.get)
                    row = dict(bits=bits, N=N, K=K, M=M, ms={n: round(v * 1e3, 3) for n, v in t.items()},
                               lut_over_dot=t["lut"] / t[fastest], best_dot=fastest, default=base.path)
                    if "torch" in t:
                        row["torch_over_dot"] = t["torch"] / t[fastest]
                    rows.append(row)
                    print(f"W{bits} {N}x{K} M={M:4d}: " + "  ".join(f"{n} {v * 1e3:.2f}" for n, v in t.items())
                          + f" ms | lut/dot x{row['lut_over_dot']:.2f} default {base.path}"
                          + (f" torch/dot x{row['torch_over_dot']:.2f}" if "torch" in row else ""), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    if a.out:
        from bench.common import conditions, write_json
        write_json(a.out, dict(conditions=conditions(), target=a.target, threads=a.threads, clock=a.clock, rows=rows))


if __name__ == "__main__":
    main()
