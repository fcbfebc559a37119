"""Timing on a shared CPU: warm-up, median of repeats, spread, thread pinning, cold caches, contention guard,
and measure_kernel, the one measurement of a compiled kernel (the tuner's worker and `lutc runner` both call it)."""
from __future__ import annotations

import functools
import itertools
import math
import os
import time

import numpy as np


@functools.lru_cache(maxsize=None)
def last_level_cache_bytes(default=32 << 20) -> int:
    """Size of the largest CPU cache (Linux sysfs), else `default`."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in os.listdir(base):
            try:
                with open(f"{base}/{d}/size") as f:
                    text = f.read().strip().upper()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or default


def _jiffies() -> tuple:
    """(busy jiffies of the whole machine, jiffies of this process), Linux only."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    busy = sum(vals) - vals[3] - vals[4]                  # minus idle and iowait
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return busy, int(fields[11]) + int(fields[12])        # utime + stime of all our threads


class ContentionMeter:
    """CPU time other processes used while we measured, in cores (0.0 = the machine was ours)."""

    def __init__(self):
        try:
            self._hz = os.sysconf("SC_CLK_TCK")
            self._start = _jiffies()
        except (OSError, ValueError, AttributeError, IndexError):
            self._start = None
        self._t0 = time.perf_counter()

    def cores(self) -> float:
        if self._start is None:
            return 0.0
        busy, mine = _jiffies()
        wall = time.perf_counter() - self._t0
        other = (busy - self._start[0]) - (mine - self._start[1])
        return max(0.0, other / self._hz / max(wall, 1e-3))


STATS = ("median", "min")


def time_call(fn, repeats=7, warmup_s=0.05, min_repeat_s=0.01, cutoff_s=None, stat="median") -> dict:
    """Warm up (>= 2 calls and >= warmup_s), then `repeats` repeats of `inner` calls each, where
    `inner` makes a repeat last >= min_repeat_s. Returns the median and min per-call times, the
    spread ((q75 - q25) / median), the CPU other processes used meanwhile ('contention', in cores)
    and value_s, the statistic `stat` the tuner optimizes (the median unless asked otherwise).
    A candidate whose warm-up is slower than cutoff_s gets one repeat only (it cannot win)."""
    meter = ContentionMeter()
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < warmup_s:
        fn()
        n += 1
    per_call = (time.perf_counter() - t0) / n
    coarse = cutoff_s is not None and per_call > cutoff_s
    inner = max(1, math.ceil(min_repeat_s / max(per_call, 1e-9)))
    samples = []
    for _ in range(1 if coarse else repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t) / inner)
    a = np.asarray(samples)
    med = float(np.median(a))
    q25, q75 = np.percentile(a, [25, 75])
    return {"value_s": med if stat == "median" else float(a.min()), "stat": stat,
            "median_s": med, "min_s": float(a.min()), "max_s": float(a.max()),
            "spread": float((q75 - q25) / med) if med > 0 else 0.0,
            "repeats": len(samples), "inner": inner, "coarse": bool(coarse), "contention": meter.cores()}


def time_guarded(fn, max_contention=0.25, retries=2, backoff_s=1.0, **kw) -> dict:
    """time_call, retried (after a pause) while other processes used more than `max_contention`
    cores; returns the least contended attempt, with the number of attempts."""
    best = None
    for attempt in range(retries + 1):
        r = time_call(fn, **kw)
        if best is None or r["contention"] < best["contention"]:
            best = r
        if r["contention"] <= max_contention or attempt == retries:
            break
        time.sleep(backoff_s * (attempt + 1))
    return dict(best, attempts=attempt + 1)


def pin_threads(cpus: list, threads: int):
    """Restrict every thread of this process to the first `threads` of `cpus` (Linux only)."""
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), cpus[:threads])
            except OSError:
                pass
    except (AttributeError, OSError):
        pass


def weight_copies(packed, flush_bytes: int, limit: int = 64) -> list:
    """Enough copies of the packed weights that cycling through them streams from DRAM, as in
    LLM decoding, where a layer's weights are never still cached when it runs again."""
    import dataclasses
    n = min(limit, max(1, math.ceil(flush_bytes / max(packed.nbytes, 1)))) if flush_bytes else 1
    return [packed] + [dataclasses.replace(packed, w=packed.w.copy(), sz=packed.sz.copy()) for _ in range(n - 1)]


class WeightCopyCache:
    """weight_copies() of packed weights for the `keep` most recent keys (a key names a layout).
    `keep` bounds memory only; the copies themselves are the same wherever measure_kernel runs."""

    def __init__(self, keep: int):
        self.keep, self._copies = keep, {}

    def get(self, key, packed, flush_bytes: int) -> list:
        copies = self._copies.get(key)
        if copies is None:
            while len(self._copies) >= self.keep:
                self._copies.pop(next(iter(self._copies)))
            copies = self._copies[key] = weight_copies(packed, flush_bytes)
        return copies


def measure_kernel(kern, qw, x, y, bound, sched, *, threads: int, cpus: list, timing: dict,
                   copies: WeightCopyCache, compile_s: float, tag=None) -> dict:
    """Verify, then time a compiled kernel: the one measurement the tuner's worker and `lutc runner`
    both make, so local and remote timings are comparable by construction.

    Pins this process to `threads` of `cpus`, packs `qw` and runs the kernel once into `y`
    (NaN-filled first); a result outside `bound` comes back 'inaccurate', untimed. Otherwise
    time_guarded(**timing) times kern.plan(w, M)(x, y, threads) with the weights w cycling through
    `copies` (timing's "cache": "cold", the default, makes enough copies that they stream from DRAM
    as in decoding; "hot" uses one). `tag` separates copy sets (the runner's problem id)."""
    timing = dict(timing)
    cache = timing.pop("cache", "cold")
    pin_threads(cpus, threads)
    packed = kern.pack(qw)
    y.fill(np.nan)
    kern(x, packed, out=y, threads=threads)
    acc = bound.check(y, sched)
    base = {"compile_s": compile_s, "err_max": acc["max_err"], "err_ratio": acc["ratio"], "threads": threads}
    if not acc["ok"]:
        return dict(base, status="inaccurate", reason=acc["reason"])
    flush = 2 * last_level_cache_bytes() if cache == "cold" else 0
    weights = copies.get((tag, packed.layout_key, flush), packed, flush)
    ring, M = itertools.cycle(weights), x.shape[0]
    stats = time_guarded(lambda: kern.plan(next(ring), M)(x, y, threads), **timing)
    return dict(base, status="ok", reason="", weight_copies=len(weights), **stats)


def read_bandwidth(threads: int = 1, nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """DRAM read bandwidth in bytes/s: `threads` threads summing disjoint slices of an array far
    beyond the caches (numpy releases the GIL in reductions); the best of `repeats`."""
    from concurrent.futures import ThreadPoolExecutor
    a = np.ones(nbytes // 8, np.float64)
    parts = np.array_split(a, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(repeats):
            t = time.perf_counter()
            list(ex.map(np.sum, parts))
            best = min(best, time.perf_counter() - t)
    return a.nbytes / best
