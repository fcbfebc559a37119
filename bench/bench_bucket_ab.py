"""A/B of per-M-bucket schedule choices on whole batched decode steps, interleaved in one process.

Usage: python bench/bench_bucket_ab.py [--models smollm2,llama7b] [--threads 1,2] [--rows 1,4]
           [--rounds 15] [--b-knobs '{"lut_pair": false}'] [--buckets 2,4,8] [--bits B] [--out FILE]
Two decoders of one model (as bench_serve builds it, 4 slots) sharing one copy of the packed weights
(B is built from A's PackedModel; two copies measured up to 1.15x apart at identical schedules): A runs
the schedules lutc chooses now, B the same with --b-knobs applied to the listed buckets, so only those
buckets' code differs. --b-knobs '{}' is the A/A control. Decode steps of N rows (N sequences at position 32), A and B
alternating in every round; median wall and process CPU time per step, and each side's step-ratio
("x single": N x the 1-row step over the N-row step). Also checks that A's and B's logits agree bit
for bit when B's knobs claim to be exact (lut_pair, mb, unroll, prefetch). Writes
bench/results/bucket_ab.json unless --out says otherwise.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, conditions, write_json  # noqa: E402

EXACT = {"lut_pair", "mb", "unroll", "prefetch"}       # knobs that never change a row's result


def rebucket(dec, knobs: dict, buckets, bits=None) -> None:
    """Apply knobs to the schedules of `buckets` of every linear of dec (before its first step),
    or only of the linears with `bits`-bit weights."""
    from lutc.kernels.compiled import Scratch
    for lw in [m for L in dec.layers for m in (L.qkv, L.o, L.gu, L.down)] + [dec.lm_head]:
        for b in buckets:
            if b in lw.by_bucket and lw.by_bucket[b].path == "lut" and bits in (None, lw.bits):
                lw.by_bucket[b] = lw.by_bucket[b].replace(**knobs)
        lw._kernels = {1: lw.k_decode}
        lw.scratch = Scratch.for_schedules(lw.by_bucket.values(), lw.max_m, lw.packed.num_groups)


def run(model, threads, rows, rounds, knobs, buckets, bits=None):
    from bench.bench_serve import load, step_stats
    from runtime import LeanDecoder
    slots = max(4, max(rows))
    a, _ = load(model, threads[0], slots, 512)
    b = LeanDecoder(a.to_packed_model(), n_ctx=512, threads=threads[0], slots=slots)   # A's packed weights
    rebucket(b, knobs, buckets, bits)
    decs = {"A": a, "B": b}
    args = {n: (list(range(n)), [32] * n, [5] * n, list(range(n))) for n in rows}
    out = {}
    for thr in threads:
        for d in decs.values():
            d.set_threads(thr)
            for n in rows:
                d.forward_batch(*args[n])                     # builds the step programs
        wall = {(s, n): [] for s in decs for n in rows}
        cpu = {k: [] for k in wall}
        logits = {}
        for _ in range(rounds):
            for s, d in decs.items():
                for n in rows:
                    t, c = time.perf_counter(), time.process_time()
                    lg = d.forward_batch(*args[n])
                    wall[s, n].append(time.perf_counter() - t)
                    cpu[s, n].append(time.process_time() - c)
                    logits[s, n] = lg.copy()
        res = out[thr] = {}
        for s in decs:
            res[s] = step_stats(rows, {n: wall[s, n] for n in rows}, {n: cpu[s, n] for n in rows}, "rows")
        res["b_over_a"] = [dict(rows=n, wall=b["step_ms"] / a["step_ms"], cpu=b["cpu_ms"] / a["cpu_ms"])
                           for n, a, b in zip(rows, res["A"], res["B"])]
        res["logits_equal"] = all(np.array_equal(logits["A", n], logits["B", n]) for n in rows)
        for s in ("A", "B"):
            print(f"{model} {thr}T {s}: " + " | ".join(
                f"M={r['rows']} {r['step_ms']:.2f} ms wall {r['cpu_ms']:.2f} CPU (x{r['x_single']:.2f}/"
                f"x{r['x_single_cpu']:.2f})" for r in res[s]), flush=True)
        print(f"{model} {thr}T B/A: " + " | ".join(f"M={r['rows']} wall {r['wall']:.3f} CPU {r['cpu']:.3f}"
                                                    for r in res["b_over_a"])
              + f"; logits equal: {res['logits_equal']}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2,llama7b")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rows", default="1,4")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--b-knobs", default='{"lut_pair": false}', help="JSON knobs for side B's buckets")
    ap.add_argument("--buckets", default="2,4,8")
    ap.add_argument("--bits", type=int, default=None, help="only the linears of this weight width (e.g. 4: the 7B shapes' lm_head)")
    ap.add_argument("--out", default=str(RESULTS / "bucket_ab.json"))
    a = ap.parse_args()
    knobs, buckets = json.loads(a.b_knobs), [int(b) for b in a.buckets.split(",")]
    rows, threads = [int(r) for r in a.rows.split(",")], [int(t) for t in a.threads.split(",")]
    if rows[0] != 1:
        raise SystemExit("--rows must start with 1 (the single-stream step)")
    res = dict(conditions=conditions(), b_knobs=knobs, buckets=buckets, bits=a.bits, models={})
    for model in a.models.split(","):
        res["models"][model] = run(model, threads, rows, a.rounds, knobs, buckets, a.bits)
        if set(knobs) <= EXACT and not all(v["logits_equal"] for v in res["models"][model].values()):
            print(f"WARNING {model}: exact knobs changed the logits", flush=True)
    res["conditions_end"] = conditions()
    write_json(pathlib.Path(a.out), res)


if __name__ == "__main__":
    main()
