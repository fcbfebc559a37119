"""Interleaved A/B of int8 table settings, end-to-end decode (SmolLM2 W2 g128 RTN, or --model llama7b): the host's default
schedule, the default tables (W2: block 16, integer ratios) with single and pair-sum lookups in 32- and
64-row tiles, block 32 / block 16 with float scales, and the pre-issue-10 tables (one scale per
group, not centered) on the pre-pair kernel in 32-row tiles ("old", the reference: pinned, so a new
default layout cannot move it), as tok/s and ratios to "old". At 1 thread in thread CPU time (which
a loaded machine's preemption does not inflate), at 2+ threads in wall time; configurations
interleaved a few steps at a time (common.decode_interleaved), medians and 25th percentiles over
all steps. Each configuration keeps the default prefetch distance of its tile height.

Usage: python bench/bench_table_ab.py [--threads 1,2] [--rounds 60] [--bits 2] [--model smollm2|llama7b] [--out f.json]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import conditions, decode_interleaved, write_json  # noqa: E402

from lutc import Schedule  # noqa: E402
from lutc.ops import default_layout, default_prefetch, default_schedule  # noqa: E402
from lutc.tuning.space import describe  # noqa: E402
from runtime import LeanDecoder  # noqa: E402
from bench_e2e import lutc_model  # noqa: E402

OLD = dict(lut_scale_block=1 << 30, lut_centered=False, lut_pair=False, bn=32, lut_fine_planes=0)
CFGS = {"default": None,
        "single bn32": dict(lut_pair=False, bn=32), "pair bn32": dict(lut_pair=True, bn=32),
        "single bn64": dict(lut_pair=False, bn=64), "pair bn64": dict(lut_pair=True, bn=64),
        "pair bn64 pf0": dict(lut_pair=True, bn=64, prefetch=0), "pair bn64 pf1": dict(lut_pair=True, bn=64, prefetch=1),
        "pair bn64 pf2": dict(lut_pair=True, bn=64, prefetch=2), "pair bn64 pf4": dict(lut_pair=True, bn=64, prefetch=4),
        "pair bn64 u2": dict(lut_pair=True, bn=64, unroll=2), "pair bn64 u8": dict(lut_pair=True, bn=64, unroll=8),
        "pair bn64 block64 float": dict(lut_pair=True, bn=64, lut_scale_block=64, lut_scale_ratio=0, lut_fine_planes=0),
        "pair bn64 block32 r64": dict(lut_pair=True, bn=64, lut_scale_block=32, lut_scale_ratio=64, lut_fine_planes=0),
        "block32 float": dict(lut_scale_block=32, lut_scale_ratio=0, unroll=4, lut_fine_planes=0),
        "block8 r64": dict(lut_scale_block=8, lut_scale_ratio=64, unroll=1, lut_fine_planes=0),
        "block32 float fine1": dict(lut_scale_block=32, lut_scale_ratio=0, unroll=4, lut_fine_planes=1),
        "block32 float fine2": dict(lut_scale_block=32, lut_scale_ratio=0, unroll=4, lut_fine_planes=2),
        "block8 r64 fine1": dict(lut_scale_block=8, lut_scale_ratio=64, unroll=1, lut_fine_planes=1),
        "block8 r64 fine2": dict(lut_scale_block=8, lut_scale_ratio=64, unroll=1, lut_fine_planes=2),
        "block16 float": dict(lut_scale_block=16, lut_scale_ratio=0, unroll=2, lut_fine_planes=0),
        "old": OLD, "old pair bn64": dict(OLD, lut_pair=True, bn=64)}


def knobs_for(name, bits):
    """CFGS[name] with the default prefetch distance of its tile height (lutc.ops.default_prefetch: a
    distance in groups, ~2 KB ahead at W1-W2; unless it names one), so configurations of two bn compare fairly."""
    k = CFGS[name]
    if k is None:
        return None
    bn = k.get("bn", default_layout("host")["bn"])
    return dict({"prefetch": default_prefetch(Schedule.make(bits, 128, bn=bn))}, **k)


def run(qm, bits, threads, rounds, names):
    decs = {k: LeanDecoder(qm, n_ctx=256, threads=threads, knobs=knobs_for(k, bits)) for k in names}
    res = decode_interleaved(decs, rounds, threads)
    med = {k: float(np.median(v)) for k, v in res.items()}
    p25 = {k: float(np.percentile(v, 25)) for k, v in res.items()}
    return {"threads": threads, "clock": "thread CPU time" if threads == 1 else "wall", "steps": len(res["old"]),
            "tok_s": {k: 1 / v for k, v in med.items()}, "vs_old": {k: med["old"] / v for k, v in med.items()},
            "p25_vs_old": {k: p25["old"] / v for k, v in p25.items()},
            "default": describe(default_schedule(bits, 128, 1)), "loadavg": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "llama7b"),
                    help="llama7b: bench_e2e's LLaMA-2-7B-shaped random model (4 layers)")
    ap.add_argument("--configs", default=",".join(CFGS), help="names of CFGS to run ('old' always runs)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    names = [n for n in a.configs.split(",") if n]
    unknown = set(names) - set(CFGS)
    if unknown:
        ap.error(f"unknown config(s) {sorted(unknown)}; known: {list(CFGS)}")
    names += [] if "old" in names else ["old"]
    qm = lutc_model(a.model, a.bits)
    out = {"conditions": conditions(), "target": os.environ.get("LUTC_HOST_TARGET", "host"), "bits": a.bits, "model": a.model,
           "runs": []}
    for t in (int(v) for v in a.threads.split(",")):
        r = run(qm, a.bits, t, a.rounds, names)
        out["runs"].append(r)
        print(f"{a.model} W{a.bits} g128 RTN, {t} thread(s), {r['clock']}, load {r['loadavg'][0]:.2f}")
        for k in names:
            print(f"  {k:22s} {r['tok_s'][k]:7.1f} tok/s  vs old x{r['vs_old'][k]:.3f}  (p25 x{r['p25_vs_old'][k]:.3f})",
                  flush=True)
    if a.out:
        write_json(a.out, out)


if __name__ == "__main__":
    main()
