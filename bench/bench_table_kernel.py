"""Kernel time of int8 table configurations (issue 10): build_tables and lut_gemm timed apart,
M = 1, all configurations on the same packed weights (8 copies, cycled, so they stream from
DRAM), round-robin in a shuffled order per round. Statistic: the 25th percentile of all calls
(on a loaded machine low quantiles estimate the uncontended time). Prints times and the ratio
(tables + gemm) to the old int8 path (one scale per group, uncentered) of the same run.

Usage: python bench/bench_table_kernel.py [THREADS] [ROUNDS] [SHAPES] [CONFIGS]
SHAPES: comma-separated bits/group/N/K (default 2/64/4096/4096,4/128/4096/4096).
CONFIGS ('label=knob:value,...;label2=...', as bench_table_accuracy.py): instead of the fixed
set below, these knobs on the host's untuned M=1 default (lutc.ops.default_schedule: its tile
rows, pair-sum lookups and prefetch), with "old" (old tables in that layout) added as the base."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time

import numpy as np

CONFIGS = {"old": dict(lut_scale_block=1 << 30, lut_centered=False, lut_fine_planes=0),
           "c32 float": dict(lut_scale_block=32, lut_scale_ratio=0),
           "c32 int": dict(lut_scale_block=32, lut_scale_ratio=64),
           "c16 float": dict(lut_scale_block=16, lut_scale_ratio=0, unroll=2),
           "c16 int": dict(lut_scale_block=16, lut_scale_ratio=64, unroll=2),
           "c8 int": dict(lut_scale_block=8, lut_scale_ratio=64, unroll=1)}


def main():
    import lutc
    import quant
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    shapes = sys.argv[3] if len(sys.argv) > 3 else "2/64/4096/4096,4/128/4096/4096"
    configs = CONFIGS
    if len(sys.argv) > 4:
        from bench_table_accuracy import parse_configs
        configs = {"old": CONFIGS["old"], **dict(parse_configs(sys.argv[4]))}
    rng = np.random.default_rng(0)
    random.seed(1)
    out = {"threads": threads, "rounds": rounds, "loadavg_start": list(os.getloadavg()), "rows": []}
    for shape in shapes.split(","):
        bits, gs, N, K = (int(v) for v in shape.split("/"))
        qw = quant.quantize(rng.standard_normal((N, K)).astype(np.float32), bits, gs, method="rtn")
        x = rng.standard_normal((1, K)).astype(np.float32)
        y = np.empty((1, N), np.float32)
        preps, packs = {}, None
        for name, knobs in configs.items():
            if configs is CONFIGS:
                sched = lutc.Schedule.make(bits=bits, group_size=gs, **knobs)
            else:
                from lutc.ops import default_schedule
                sched = default_schedule(bits, gs, 1).replace(**knobs)
            k = lutc.compile(sched)
            if packs is None:          # every configuration has the same packed layout
                p0 = k.pack(qw)
                packs = [p0] + [dataclasses.replace(p0, w=p0.w.copy(), sz=p0.sz.copy()) for _ in range(7)]
            preps[name] = [k.prepare(p, 1, x=x, y=y) for p in packs]
        tt = {n: [] for n in configs}
        tg = {n: [] for n in configs}
        names = list(configs)
        for _ in range(rounds):
            random.shuffle(names)
            for n in names:
                for i in range(16):
                    p = preps[n][i % 8]
                    t0 = time.perf_counter()
                    p.tables(threads)
                    t1 = time.perf_counter()
                    p.gemm(threads)
                    tt[n].append(t1 - t0)
                    tg[n].append(time.perf_counter() - t1)
        q = lambda v: float(np.percentile(v, 25))  # noqa: E731
        base = q(tt["old"]) + q(tg["old"])
        for n in configs:
            row = dict(shape=shape, config=n, tables_us=q(tt[n]) * 1e6, gemm_us=q(tg[n]) * 1e6,
                       vs_old=(q(tt[n]) + q(tg[n])) / base)
            out["rows"].append(row)
        print(f"W{bits} g{gs} {N}x{K} t{threads}: " + "  ".join(
            f"{r['config']} {r['tables_us']:.0f}+{r['gemm_us']:.0f}us ({r['vs_old']:.3f}x)"
            for r in out["rows"] if r["shape"] == shape), flush=True)
    out["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
