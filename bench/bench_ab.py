"""A/B of two lutc checkouts, interleaved in separate processes: GEMV and SmolLM2 decode step times.

Usage: python bench/bench_ab.py --a /path/to/old/checkout --b . [--rounds 2] [--out bench/results/ab.json]
Each measurement is a fresh process with PYTHONPATH set to one checkout, alternating A, B (old
tables), B (default tables), so slow drift of the machine hits both sides. `old` tables force
lut_scale_block=group_size, lut_centered=False where the checkout has those knobs.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

CHILD = r'''
import inspect, json, sys, time, dataclasses
import numpy as np, lutc, quant
what, threads, tables = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fields = lutc.Schedule.__dataclass_fields__
knobs = dict(lut_scale_block=128, lut_centered=False) if tables == "old" and "lut_scale_block" in fields else {}
if knobs and "lut_fine_planes" in fields:
    knobs["lut_fine_planes"] = 0
def med(fn, reps):
    fn(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    ts.sort(); return ts[len(ts) // 2], ts[0]
if what.startswith("gemv"):
    bits = int(what[4:])
    make = getattr(lutc.Schedule, "make", None) or __import__("lutc.kernels", fromlist=["x"]).lut_gemm.schedule
    rng = np.random.default_rng(0)
    qw = quant.quantize(rng.standard_normal((4096, 4096)).astype(np.float32), bits, 128, method="rtn")
    k = lutc.compile(make(bits=bits, group_size=128, **knobs))
    packs = [k.pack(qw)]
    packs += [dataclasses.replace(packs[0], w=packs[0].w.copy(), sz=packs[0].sz.copy()) for _ in range(15)]
    x = rng.standard_normal((1, 4096)).astype(np.float32)
    it = iter(range(10**9))
    r = med(lambda: k(x, packs[next(it) % 16], threads=threads), 400)     # weights stream from DRAM
else:
    from runtime import LeanDecoder
    from runtime.models import checkpoint_dir
    qm = quant.load_checkpoint(str(checkpoint_dir("smollm2-135m", progress=False)))
    extra = {"knobs": knobs} if "knobs" in inspect.signature(LeanDecoder.__init__).parameters else {}
    dec = LeanDecoder(qm, threads=threads, **extra)
    dec.reset(); dec.prefill([1, 2, 3, 4])
    def step():
        if dec.pos >= dec.n_ctx - 2:
            dec.reset(); dec.prefill([1, 2])
        dec.decode(5)
    r = med(step, 300)
print(json.dumps({"median_ms": r[0] * 1e3, "min_ms": r[1] * 1e3}))
'''


def run(checkout, what, threads, tables):
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(checkout).resolve()))
    out = subprocess.run([sys.executable, "-c", CHILD, what, str(threads), tables], env=env, cwd="/",
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the baseline checkout")
    ap.add_argument("--b", default=".", help="the checkout compared with it")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    for r in range(a.rounds):
        for what in ("gemv2", "gemv4", "decode"):
            for t in (1, 2):
                for side, ck, tb in (("A", a.a, "old"), ("B-old", a.b, "old"), ("B-default", a.b, "default")):
                    res = dict(round=r, what=what, threads=t, side=side, **run(ck, what, t, tb))
                    rows.append(res)
                    print(f"{what:6s} {t}T {side:9s} median {res['median_ms']:.3f} ms  min {res['min_ms']:.3f} ms",
                          flush=True)
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps({"a": a.a, "b": a.b, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
