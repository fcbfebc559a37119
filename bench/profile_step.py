"""Where a batched decode step's time goes: every launch of the step program at M rows, timed
one by one, grouped (table builds, LUT GEMMs, attention, norms/RoPE/glue, lm_head), next to the
whole program's time and the Python overhead of `forward_batch` and of a scheduler step.

Usage: python bench/profile_step.py [--models smollm2,llama7b] [--rows 1,2,4,8] [--threads 1,2] [--reps 15]
                                   [--out bench/results/profile_step.json]
Wall and process CPU time per group. Rows are decode rows of distinct sequences at position 32.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, conditions, write_json  # noqa: E402


def group_of(launch) -> str:
    n = launch.name
    if n in ("tables", "gemm", "attention"):
        return n
    if n in ("add_rmsnorm", "rope_kv"):
        return "norm_rope"   # RMSNorm (+ residual add), RoPE + KV-cache write
    return "glue"            # embed/gather, silu_mul, bias_add


def profile(dec, m, reps):
    """Median ms per group over reps, each launch timed alone (ctypes call included), the lm_head
    separately; and the whole program's native time and forward_batch's wall time. The same in
    process CPU time under "cpu" (at 1 thread the work itself, which preemption on a loaded
    machine does not inflate; at 2 threads it includes the pool's spinning waits)."""
    rows = (list(range(m)), [32] * m, [5] * m, list(range(m)))
    dec.forward_batch(*rows)
    prog = dec._programs[(m, m, dec.threads)]
    recs = list(zip(prog.launches, prog.records[:, 3]))
    n_lm = 2                                                  # the last two launches are lm_head's
    groups, cpus = {}, {}
    for _ in range(reps):
        tot, ctot = {}, {}
        for i, (launch, thr) in enumerate(recs):
            t, c = time.perf_counter(), time.process_time()
            launch(int(thr))
            dt, dc = time.perf_counter() - t, time.process_time() - c
            g = "lm_head" if i >= len(recs) - n_lm else group_of(launch)
            tot[g] = tot.get(g, 0.0) + dt
            ctot[g] = ctot.get(g, 0.0) + dc
        for g in tot:
            groups.setdefault(g, []).append(tot[g])
            cpus.setdefault(g, []).append(ctot[g])
    for name, fn in (("program", prog.run), ("forward_batch", lambda: dec.forward_batch(*rows))):
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            fn()
            groups.setdefault(name, []).append(time.perf_counter() - t)
            cpus.setdefault(name, []).append(time.process_time() - c)
    med = lambda d: {g: 1e3 * statistics.median(v) for g, v in d.items()}  # noqa: E731
    out, cpu = med(groups), med(cpus)
    for d in (out, cpu):
        d["sum_of_launches"] = sum(v for g, v in d.items() if g not in ("program", "forward_batch"))
    out["cpu"] = cpu
    out["launches"] = len(recs)
    return out


def scheduler_overhead(dec, tok, m, steps=20):
    """A scheduler step with m decoding sequences minus the forward_batch it runs (sampling, bookkeeping)."""
    from runtime.sampling import SamplingParams
    from runtime.scheduler import BatchScheduler
    sched = BatchScheduler(dec, tok, max_batch=dec.slots, prefill_chunk=32, eos_ids=[])
    reqs = [sched.submit([1, 100 + i, 200 + i], SamplingParams(max_tokens=10_000)) for i in range(m)]
    while any(r.next_token is None for r in reqs):
        sched.step()
    fb_time = []
    orig = dec.forward_batch

    def timed(*a):
        t = time.perf_counter()
        r = orig(*a)
        fb_time.append(time.perf_counter() - t)
        return r
    dec.forward_batch = timed
    tot = []
    for _ in range(steps):
        t = time.perf_counter()
        sched.step()
        tot.append(time.perf_counter() - t)
    del dec.forward_batch
    for r in reqs:
        sched.cancel(r)
    sched.step()
    over = [a - b for a, b in zip(tot, fb_time[-steps:])]
    return 1e3 * statistics.median(over)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,llama7b")
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS / "profile_step.json"))
    args = ap.parse_args()
    from bench.bench_serve import load
    rows = [int(r) for r in args.rows.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    res = dict(conditions=conditions(), models={})
    for model in args.models.split(","):
        dec, tok = load(model, threads[0], max(rows), 512)
        res["models"][model] = {}
        for thr in threads:
            dec.set_threads(thr)
            res["models"][model][thr] = per = {}
            for m in rows:
                p = profile(dec, m, args.reps)
                p["scheduler_python"] = scheduler_overhead(dec, tok, m)
                per[m] = p
                print(model, f"{thr}T", f"M={m}", "wall:", " ".join(f"{k}={v:.2f}" if isinstance(v, float) else
                                                                    f"{k}={v}" for k, v in p.items() if k != "cpu"),
                      "| cpu:", " ".join(f"{k}={v:.2f}" for k, v in p["cpu"].items()), flush=True)
        del dec
    res["conditions_end"] = conditions()
    write_json(pathlib.Path(args.out), res)


if __name__ == "__main__":
    main()
