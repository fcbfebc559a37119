"""Where a decode step goes: the step program of LeanDecoder taken apart, all variants interleaved.

Usage: python bench/bench_step.py [--models smollm2:4,smollm2:2,llama7b:2] [--threads 1,2] [--rounds 7]
Per model and thread count, the medians (ms) of:
  full            the step program as the runtime runs it (thread-pool program entry: one publish)
  per_launch      the same launches, each parallel one its own pool job (the pre-program path)
  tables_par      table builds as parallel phases too (default: on the caller, walkers waiting)
  gemm / tables / attention / other
                  only that category's launches (other: embedding, norms, RoPE, SiLU, gathers)
  dispatch        the same launches (grids, thread counts) with a no-op task: publish, claims, barriers
  dispatch_per_launch   that, each parallel launch its own pool job
The roofline: packed weight bytes over the stream probe's bandwidth (bench_e2e.bandwidth), same run.
At 1 thread also in thread CPU time (step and probe), which a loaded machine's preemption does not inflate.
Writes bench/results/step.json.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, conditions, write_json  # noqa: E402
from bench.bench_e2e import bandwidth, lutc_model  # noqa: E402

CATEGORIES = ("gemm", "tables", "attention", "other")


def _category(name: str) -> str:
    return name if name in ("gemm", "tables", "attention") else "other"


def _noop_launch(ntasks, sink):
    """A launch of a kernel that does nothing but one store per task, over `ntasks` tasks."""
    import lutc
    import lutc.language as tl
    from lutc.ir import types as T

    @lutc.jit
    def step_noop(x):
        tl.store(x + tl.program_id(0) * 0, 0.0)
    return step_noop.compile({"x": T.PointerType(T.float32)}).bind((ntasks,), [sink], "noop")


def variants(dec, threads, context=32):
    """{variant: run()} for one decoder's decode-step program at `threads` (position fixed after
    a `context`-token prompt), the number of launches and of parallel launches."""
    from lutc.launcher import LaunchProgram
    dec.set_threads(threads)
    dec.reset()
    dec.prefill(list(range(1, context + 1)))
    dec.decode(5)
    prog = dec._programs[(1, 1, threads)]
    steps = [(launch, int(r[3])) for launch, r in zip([x for x in prog.launches if x.ntasks], prog.records)]
    sink = np.zeros(1, np.float32)
    keep = [LaunchProgram([s for s in steps if _category(s[0].name) == c]) for c in CATEGORIES]
    keep.append(LaunchProgram([(x, threads if x.name == "tables" else t) for x, t in steps]))
    keep.append(LaunchProgram([(_noop_launch(x.ntasks, sink), t) for x, t in steps]))
    runs = {"full": prog.run, "per_launch": prog.run_per_launch, "tables_par": keep[4].run,
            "dispatch": keep[5].run, "dispatch_per_launch": keep[5].run_per_launch,
            **{c: p.run for c, p in zip(CATEGORIES, keep)}}
    return runs, keep, len(steps), sum(t > 1 for _, t in steps)


def measure(runs, rounds, reps):
    """Medians (ms) over `rounds` interleaved rounds of the median of `reps` calls each: wall time,
    and the calling thread's CPU time (the whole step at 1 thread; robust to preemption)."""
    samples = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for _ in range(rounds):
        for k, fn in runs.items():
            ts, cs = [], []
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.thread_time()
                fn()
                ts.append(time.perf_counter() - t0)
                cs.append(time.thread_time() - c0)
            samples[k].append(float(np.median(ts)))
            cpu[k].append(float(np.median(cs)))
    med = lambda d: {k: 1e3 * float(np.median(v)) for k, v in d.items()}  # noqa: E731
    return med(samples), med(cpu)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2:4,smollm2:2,llama7b:2")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", default=str(RESULTS / "step.json"))
    args = p.parse_args(argv)
    from runtime import LeanDecoder
    out = dict(benchmark="step", conditions=conditions(), rows=[])
    for spec in args.models.split(","):
        family, bits = spec.split(":")
        dec = LeanDecoder(lutc_model(family, int(bits)), n_ctx=64, threads=1)
        for t in (int(x) for x in args.threads.split(",")):
            runs, keep, n, npar = variants(dec, t)
            res, cpu = measure(runs, args.rounds, args.reps)
            bw_cpu = {}
            bw = bandwidth([t], 3, cpu_out=bw_cpu)[t]
            roof_ms = dec.weight_bytes / (bw * 1e9) * 1e3
            row = dict(model=family, bits=int(bits), threads=t, launches=n, parallel_launches=npar,
                       weight_bytes=dec.weight_bytes, bandwidth_GBs=bw, roofline_ms=roof_ms,
                       roofline_frac=roof_ms / res["full"], gemm_roofline_frac=roof_ms / res["gemm"],
                       loadavg=list(os.getloadavg()), ms=res)
            if t == 1:
                row.update(cpu_ms=cpu, bandwidth_cpu_GBs=bw_cpu[1],
                           roofline_frac_cpu=dec.weight_bytes / (bw_cpu[1] * 1e6) / cpu["full"],
                           gemm_roofline_frac_cpu=dec.weight_bytes / (bw_cpu[1] * 1e6) / cpu["gemm"])
            out["rows"].append(row)
            print(f"{family} W{bits} t={t} ({n} launches, {npar} parallel; load {row['loadavg'][0]:.1f}): " +
                  "  ".join(f"{k} {v:.3f}" for k, v in res.items()) +
                  f"  | roofline {roof_ms:.3f} ms ({bw:.1f} GB/s): step {100 * row['roofline_frac']:.0f}%, "
                  f"GEMMs alone {100 * row['gemm_roofline_frac']:.0f}%", flush=True)
            if t == 1:
                print("    CPU time: " + "  ".join(f"{k} {v:.3f}" for k, v in cpu.items()) +
                      f"  | roofline ({bw_cpu[1]:.1f} GB/s per CPU s): step {100 * row['roofline_frac_cpu']:.0f}%, "
                      f"GEMMs alone {100 * row['gemm_roofline_frac_cpu']:.0f}%", flush=True)
            del runs, keep
        del dec
    out["conditions"]["loadavg_end"] = list(os.getloadavg())
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
