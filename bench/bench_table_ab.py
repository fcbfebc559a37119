"""Interleaved A/B of int8 table settings, end-to-end decode (SmolLM2 W2 g128 RTN, 1 thread): the default
tables (as the host's default, and with single and with pair-sum lookups forced), block 32 / block 16 with float scales, and the
pre-issue-10 tables on the pre-pair kernel ("old"), as tok/s (in thread CPU time, which a loaded
machine's preemption does not inflate) and ratios to the old ones. On AVX-512 hosts the default
is single lookups, on AVX2 pairs (lutc.ops.default_schedule).

Usage: python bench/bench_table_ab.py
"""
import time

import numpy as np

ROUNDS = 9

from runtime.models import load_quantized
from runtime import LeanDecoder
qm = load_quantized("smollm2-135m", bits=2, group_size=128, method="rtn", progress=False)
cfgs = {"default(16,r64)": None, "default, single": dict(lut_pair=False), "default, pair": dict(lut_pair=True),
        "block32 float": dict(lut_scale_block=32, lut_scale_ratio=0),
        "block16 float": dict(lut_scale_block=16, lut_scale_ratio=0),
        "old": dict(lut_scale_block=1 << 30, lut_centered=False, lut_pair=False),
        "old tables, pair": dict(lut_scale_block=1 << 30, lut_centered=False, lut_pair=True)}
decs = {k: LeanDecoder(qm, n_ctx=128, threads=1, knobs=v) for k, v in cfgs.items()}
for d in decs.values():
    d.reset(); d.prefill([1, 2, 3]); [d.decode(5) for _ in range(5)]
res = {k: [] for k in decs}
for r in range(ROUNDS):
    for k, d in decs.items():
        d.reset(); d.prefill([1, 2, 3])
        t = time.thread_time()        # 1 thread: decoding runs on this thread; CPU time excludes preemption
        for _ in range(32): d.decode(7)
        res[k].append((time.thread_time() - t) / 32)
old = np.median(res["old"])
for k, v in res.items():
    print(f"{k:18s} {1/np.median(v):7.1f} tok/s  vs old x{old/np.median(v):.3f}")
