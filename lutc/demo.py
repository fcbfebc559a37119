"""`lutc demo`: quantize a random matrix, run the LUT-GEMM kernel, check and time it."""
from __future__ import annotations

import sys
import time

import numpy as np
import quant

from .launcher import resolve_threads
from .ops import choose_schedule, get_kernel


def _median_ms(fn, reps=30):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def run_demo(bits=2, n=4096, k=4096, threads=None) -> int:
    """Returns 0, or 1 when the kernel's output is outside the error bound of its tables."""
    from .tuning.accuracy import ErrorBound      # the tuner is an optional part of lutc
    threads = resolve_threads(threads)
    if n < 1 or k < 1:
        raise ValueError(f"run_demo: n and k must be >= 1, got {n}, {k}")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k)).astype(np.float32)
    t0 = time.perf_counter()
    qw = quant.quantize(w, bits, 128, method="hlq")
    tq = time.perf_counter() - t0
    x = rng.standard_normal((1, k)).astype(np.float32)
    sched = choose_schedule(bits, 128, 1, n, k)
    t0 = time.perf_counter()
    kern = get_kernel(sched)
    tc = time.perf_counter() - t0
    y = kern(x, qw, threads=threads)
    ref = x @ qw.dequantize().T
    rel = float(np.abs(y - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    acc = ErrorBound(qw, x).check(y, sched)
    if not acc["ok"]:
        print(f"lutc demo: error: the kernel's output is wrong: {acc['reason'] or 'outside the error bound'}",
              file=sys.stderr)
        return 1
    t_lut = _median_ms(lambda: kern(x, qw, threads=threads))
    t_np = _median_ms(lambda: x @ w.T, reps=10)
    print(f"W{bits} g128 HLQ, {n}x{k}, threads={threads}")
    print(f"  quantize (hlq): {tq:.2f} s   compile: {tc:.2f} s   schedule: {sched.to_json()}")
    print(f"  max |lut - numpy(dequantized)| / max|y| = {rel:.2e}  ({sched.lut_dtype} tables, within the "
          f"error bound: {acc['ratio']:.2f} of it)")
    print(f"  lutc {t_lut:.3f} ms   numpy f32 {t_np:.3f} ms   speedup x{t_np / t_lut:.1f}")
    try:
        import torch
        torch.set_num_threads(threads)
        wt, xt = torch.from_numpy(w), torch.from_numpy(x)
        t_t = _median_ms(lambda: torch.nn.functional.linear(xt, wt), reps=10)
        print(f"  torch F.linear f32 {t_t:.3f} ms   speedup x{t_t / t_lut:.1f}")
    except ImportError:
        pass
    return 0
