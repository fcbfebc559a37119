"""Shared helpers for lutc benchmarks: run conditions, thread control, timing stats, streaming bandwidth."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# ---------------------------------------------------------------- machine and run conditions
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def l3_bytes(default: int = 32 << 20) -> int:
    """Size of the last-level (L3) cache from sysfs, e.g. '32768K'; `default` if unreadable."""
    try:
        s = pathlib.Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1].upper(), 1)
        return int(s.rstrip("KkMmGg")) * mult
    except (OSError, ValueError):
        return default


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def conditions() -> dict:
    """Everything needed to interpret absolute numbers later (they are noisy: see loadavg)."""
    import lutc
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": cpu_model(), "ncpu": os.cpu_count(), "l3_bytes": l3_bytes(),
            "isa": sorted(cpu_flags() & {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512vbmi", "fma", "f16c"}),
            "platform": platform.platform(), "python": platform.python_version(),
            "lutc": lutc.__version__, "git_commit": git_commit(), "numpy": np.__version__,
            "loadavg_start": list(os.getloadavg())}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    try:
        from lutc.backend.target import get_target
        t = get_target("host")
        info["lutc_target"] = {"cpu": t.cpu, "vector_bits": t.vector_bits, "byte_shuffle": t.byte_shuffle}
    except Exception as e:  # noqa: BLE001 - informational only
        info["lutc_target"] = f"unavailable: {e}"
    return info


# ---------------------------------------------------------------- thread control
try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None


def set_threads(n: int) -> bool:
    """Set torch's intra-op threads and numpy's BLAS threads; False if numpy's could not be set."""
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
    if threadpoolctl is None:
        return False
    threadpoolctl.threadpool_limits(n, user_api="blas")
    return True


# ---------------------------------------------------------------- timing
def time_calls(fn, n: int, warmup: int = 2):
    """n calls of fn() after `warmup` untimed ones. Per call: wall seconds, involuntary context
    switches of the whole process (some thread of ours was preempted) and process CPU seconds
    (all threads; CPU / wall = how many cores the process actually had during the call)."""
    for _ in range(warmup):
        fn()
    ts, sw, cpu = [], [], []
    for _ in range(n):
        c, p = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw, time.process_time()
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
        cpu.append(time.process_time() - p)
        sw.append(resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - c)
    return ts, sw, cpu


def time_interleaved(variants: dict, rounds: int, calls: int, ncopy: int, first_copy: int = 0):
    """Interleaved A/B timing of kernels that stream their data from rotating copies.

    variants: name -> (setup(copy) or None, timed(copy)); setup runs untimed right before timed.
    Each call of each variant uses the next copy (copy (first_copy + call number) % ncopy, calls
    numbered across variants, so no recent call read it); the order of the variants is reversed
    every round. Returns per_round (name -> median of each round's calls), every (name -> all
    call times) and cpu (name -> all calls' thread CPU times) in seconds."""
    names = list(variants)
    per_round, every, cpu = ({k: [] for k in names} for _ in range(3))
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        ts = {k: [] for k in names}
        for i in range(calls):
            for j, k in enumerate(order):
                c = (first_copy + i * len(order) + j) % ncopy
                setup, timed = variants[k]
                if setup is not None:
                    setup(c)
                t0, c0 = time.perf_counter(), time.thread_time()
                timed(c)
                ts[k].append(time.perf_counter() - t0)
                cpu[k].append(time.thread_time() - c0)
        for k in names:
            per_round[k].append(float(np.median(ts[k])))
            every[k] += ts[k]
    return per_round, every, cpu


def decode_interleaved(decs: dict, rounds: int, threads: int, turn: int = 4, max_pos: int = 200) -> dict:
    """Interleaved A/B of lutc decoders (name -> LeanDecoder, n_ctx > max_pos): per round every
    decoder runs `turn` decode steps, a different one first each round (rotation), so a burst of
    load on a shared machine hits them alike; each step is timed alone (at 1 thread in thread CPU
    time, which preemption does not inflate: decoding runs on the calling thread; else wall).
    A decoder restarts (reset + prefill) before passing max_pos. Returns name -> all step times (s)."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    items = list(decs.items())
    for _, d in items:
        d.reset(); d.prefill([1, 2, 3])
        for _ in range(5):
            d.decode(5)
    res = {k: [] for k in decs}
    for r in range(rounds):
        for k, d in items[r % len(items):] + items[:r % len(items)]:
            if d.pos + turn >= max_pos:
                d.reset(); d.prefill([1, 2, 3])
            for _ in range(turn):
                t = clock()
                d.decode(7)
                res[k].append(clock() - t)
    return res


def stats(ts, sw=None, cpu=None, threads: int = 1, min_clean: int = 10) -> dict:
    """median/p10/p90/min of call times; with sw and cpu also the share of preempted calls, the
    median cores the process had, and 'median_uncontended': the median over calls that were not
    preempted and had >= 0.8 x `threads` cores (None if fewer than `min_clean` such calls)."""
    a = np.asarray(ts, dtype=np.float64)
    out = {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
           "p90": float(np.percentile(a, 90)), "min": float(a.min()), "n": int(a.size)}
    if sw is not None and cpu is not None:
        cores = np.asarray(cpu) / a
        clean = a[(np.asarray(sw) == 0) & (cores >= 0.8 * threads)]
        out.update(preempted_frac=round(float(np.mean(np.asarray(sw) > 0)), 3),
                   cores_median=round(float(np.median(cores)), 2),
                   uncontended_frac=round(clean.size / a.size, 3),
                   median_uncontended=float(np.median(clean)) if clean.size >= min_clean else None)
    return out


# ---------------------------------------------------------------- streaming-read bandwidth (the roofline)
class StreamBuffer:
    """`max_threads` float32 arrays of `mb_per_thread` MB each (pages touched up front), read in
    sweeps of `chunk_mb`-per-thread calls: a sweep reads every byte once, so with arrays much larger
    than the L3 each call streams from DRAM, and calls are short (~1 ms) like the kernels they bound,
    so preemption by other processes affects both alike."""

    def __init__(self, max_threads: int, mb_per_thread: int = 512, chunk_mb: int = 16):
        n, c = mb_per_thread * (1 << 20) // 4, chunk_mb * (1 << 20) // 4
        self.all = np.ones(max_threads * n, np.float32)
        self.nchunks, self.chunk_bytes = n // c, c * 4
        self.parts = [self.all[i * n:(i + 1) * n][:self.nchunks * c].reshape(self.nchunks, c)
                      for i in range(max_threads)]
        self.pool = ThreadPoolExecutor(max_threads - 1) if max_threads > 1 else None

    def _sweep(self, call):
        return time_calls(call, self.nchunks, warmup=0)

    def numpy_sweep(self, threads: int):
        """time_calls() samples; a call np.sum()s one chunk (chunk_bytes) in each of `threads`
        threads (the caller and pool workers; numpy releases the GIL)."""
        pos = iter(range(self.nchunks))

        def call():
            i = next(pos)
            futs = [self.pool.submit(np.sum, p[i]) for p in self.parts[1:threads]]
            np.sum(self.parts[0][i])
            for f in futs:
                f.result()
        return self._sweep(call)

    def torch_sweep(self, threads: int):
        """time_calls() samples; a call is torch.sum over threads x chunk_bytes contiguous bytes."""
        import torch
        torch.set_num_threads(threads)
        rows = torch.from_numpy(self.all[:self.nchunks * threads * self.parts[0].shape[1]]).view(self.nchunks, -1)
        pos = iter(range(self.nchunks))
        return self._sweep(lambda: rows[next(pos)].sum())


def write_json(path, obj):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def llama_quantize(src, out: pathlib.Path, qtype: str, requantize: bool = False) -> pathlib.Path:
    """llama.cpp's own quantizer (llama-cpp-python): GGUF `src` -> `out` as `qtype` (Q2_K, Q4_0, ...),
    written atomically."""
    import ctypes

    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    p.allow_requantize = requantize
    p.nthread = os.cpu_count() or 1
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {out.name}")
    os.replace(tmp, out)
    return out
