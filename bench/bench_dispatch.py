"""Dispatch overhead of the native thread pool (lutc_pool_run): Python/ctypes and native-only, hot and cold.

Usage: python bench/bench_dispatch.py [--quick]
Writes bench/results/dispatch.json.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import platform
import statistics
import time

import llvmlite
import llvmlite.binding as llvm
import llvmlite.ir as ir

ROOT = pathlib.Path(__file__).resolve().parents[1]
from lutc.backend import threadpool as tp
from lutc.backend.irutil import repeat_call_function
from lutc.backend.toolchain import host_cpu, mcjit

I64 = ir.IntType(64)
PTR = ir.PointerType()
RUN_CT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
LOOP_CT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                           ctypes.c_int64)


def build_helpers(pool):
    """JIT: an empty task, and bench_loop(task, ctx, ntasks, nthreads, reps) calling lutc_pool_run."""
    m = ir.Module(name="bench_dispatch")
    m.triple = host_cpu().triple
    run = tp.declare_pool_run(m)
    empty = ir.Function(m, tp.TASK_FNTY, "bench_empty_task")
    ir.IRBuilder(empty.append_basic_block()).ret_void()
    repeat_call_function(m, "bench_loop", run)
    pool.register_symbol()
    engine = mcjit(m)
    return engine, engine.get_function_address("bench_empty_task"), engine.get_function_address("bench_loop")


def per_call_hot(fn, args, reps):
    for _ in range(min(reps // 10, 1000)):          # warm up (creates workers, spins them up)
        fn(*args)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(reps):
            fn(*args)
        best = min(best, (time.perf_counter_ns() - t0) / reps)
    return best / 1000.0                              # us


def per_call_cold(fn, args, reps, idle_s=0.005):
    """Pool idle for idle_s (10x the spin budget: workers are asleep) before each timed call.
    The caller busy-waits instead of sleeping so that only the pool is cold, not the caller's
    own wake-up from time.sleep (which costs ~10-20 us on its own in a VM)."""
    fn(*args)
    samples = []
    for _ in range(reps):
        t_end = time.perf_counter() + idle_s
        while time.perf_counter() < t_end:
            pass
        t0 = time.perf_counter_ns()
        fn(*args)
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000.0, statistics.mean(samples) / 1000.0


def native_hot(loop, task, ntasks, nthreads, reps):
    loop(task, None, ntasks, nthreads, reps // 10)    # warm up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        loop(task, None, ntasks, nthreads, reps)
        best = min(best, (time.perf_counter_ns() - t0) / reps)
    return best / 1000.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dispatch.json"))
    args = ap.parse_args()
    hot_reps, cold_reps, native_reps = (2000, 40, 2000) if args.quick else (20000, 200, 10000)

    pool = tp.get_pool()
    engine, empty, loop_addr = build_helpers(pool)
    loop = LOOP_CT(loop_addr)
    raw = RUN_CT(pool.run_address)                    # argtypes set by the prototype
    noop = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(empty)

    rows = []
    base = per_call_hot(noop, (None, 0), hot_reps)
    base_cold = per_call_cold(noop, (None, 0), cold_reps)[0]
    print(f"ctypes call of an empty native function (baseline): hot {base:.3f} us, "
          f"cold median {base_cold:.2f} us")
    for nthreads in (1, 2):
        for ntasks in (2, 64):
            a = (empty, None, ntasks, nthreads)
            row = {
                "nthreads": nthreads, "ntasks": ntasks,
                "py_run_hot_us": per_call_hot(pool.run, a, hot_reps),
                "ctypes_hot_us": per_call_hot(raw, a, hot_reps),
                "native_hot_us": native_hot(loop, empty, ntasks, nthreads, native_reps),
            }
            row["ctypes_cold_median_us"], row["ctypes_cold_mean_us"] = per_call_cold(raw, a, cold_reps)
            rows.append(row)

    hdr = (f"{'nthreads':>8} {'ntasks':>6} | {'pool.run hot':>12} {'ctypes hot':>10} "
           f"{'cold median':>11} {'cold mean':>9} | {'native hot':>10}   (us per call)")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['nthreads']:>8} {r['ntasks']:>6} | {r['py_run_hot_us']:>12.3f} "
              f"{r['ctypes_hot_us']:>10.3f} {r['ctypes_cold_median_us']:>11.2f} "
              f"{r['ctypes_cold_mean_us']:>9.2f} | {r['native_hot_us']:>10.3f}")

    result = {
        "benchmark": "threadpool_dispatch",
        "units": "microseconds per lutc_pool_run call (empty task)",
        "cold_idle_ms": 5, "cold_idle_mode": "caller busy-waits, pool workers asleep",
        "ctypes_empty_call_us": base,
        "ctypes_empty_call_cold_median_us": base_cold,
        "spin_iters": pool.spin_iters,
        "rows": rows,
        "machine": {
            "platform": platform.platform(), "cpu": host_cpu().cpu,
            "ncpu": os.cpu_count(), "python": platform.python_version(),
            "llvmlite": llvmlite.__version__, "llvm": ".".join(map(str, llvm.llvm_version_info)),
        },
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    _KEEP.append(engine)                              # JIT code must outlive every pool call


_KEEP = []


if __name__ == "__main__":
    main()
