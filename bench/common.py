"""Shared helpers for lutc benchmarks: run conditions, thread control, timing stats, streaming bandwidth."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import threading
import time

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
    """n calls of fn() after `warmup` untimed ones: (wall seconds, involuntary context switches of
    the whole process during the call) per call. A switch means some thread of ours was preempted."""
    for _ in range(warmup):
        fn()
    ts, sw = [], []
    for _ in range(n):
        c = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
        sw.append(resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - c)
    return ts, sw


def stats(ts, switches=None, min_clean: int = 10) -> dict:
    """median/p10/p90/min of times; with switches also the preempted fraction and the median of
    the calls that were not preempted ('median_clean', None if fewer than min_clean of them)."""
    a = np.asarray(ts, dtype=np.float64)
    out = {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
           "p90": float(np.percentile(a, 90)), "min": float(a.min()), "n": int(a.size)}
    if switches is not None:
        clean = a[np.asarray(switches) == 0]
        out["preempted_frac"] = round(1 - clean.size / a.size, 3)
        out["median_clean"] = float(np.median(clean)) if clean.size >= min_clean else None
    return out


# ---------------------------------------------------------------- streaming-read bandwidth (the roofline)
class StreamBuffer:
    """`max_threads` float32 arrays of `mb_per_thread` MB each, pages touched once up front."""

    def __init__(self, max_threads: int, mb_per_thread: int = 512):
        n = mb_per_thread * (1 << 20) // 4
        self.all = np.ones(max_threads * n, np.float32)
        self.parts = [self.all[i * n:(i + 1) * n] for i in range(max_threads)]

    def numpy_sum(self, threads: int, reps: int) -> list:
        """GB/s samples: each thread np.sum()s its own part (numpy releases the GIL)."""
        parts, out = self.parts[:threads], []
        for _ in range(reps):
            ths = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
            t = time.perf_counter()
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            out.append(sum(p.nbytes for p in parts) / (time.perf_counter() - t) / 1e9)
        return out

    def torch_sum(self, threads: int, reps: int) -> list:
        import torch
        torch.set_num_threads(threads)
        t_all = torch.from_numpy(self.all[:sum(p.size for p in self.parts[:threads])])
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            t_all.sum()
            out.append(t_all.numel() * 4 / (time.perf_counter() - t) / 1e9)
        return out


def write_json(path, obj):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
