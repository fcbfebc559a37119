"""High-level ops: `lut_gemm(x, qw)` picks a schedule, compiles it once, and runs it."""
from __future__ import annotations

import threading

from .kernels.compiled import CompiledKernel
from .schedule import Schedule

_KERNELS: dict = {}
_LOCK = threading.Lock()


def default_schedule(bits: int, group_size: int, M: int = 1) -> Schedule:
    """The untuned default: int8 tables of g=4, 32-row tiles; M-blocking for prefill."""
    return Schedule(bits=bits, group_size=group_size, mb=1 if M < 4 else 2)


def choose_schedule(bits: int, group_size: int, M: int, N: int, K: int, target="host") -> Schedule:
    """The schedule lut_gemm uses for this problem: the tuning db's entry if there is one
    for this device (exact shape, else the nearest shape), else the default."""
    try:
        from .tuning import lookup_schedule
    except ModuleNotFoundError as e:  # the tuner is an optional part of the package
        if e.name != "lutc.tuning":
            raise
        return default_schedule(bits, group_size, M)
    found = lookup_schedule("lut_gemm", bits, group_size, M, N, K, target)
    return found if found is not None else default_schedule(bits, group_size, M)


def get_kernel(schedule: Schedule, target="host") -> CompiledKernel:
    """A CompiledKernel for `schedule`, compiled once per process (and cached on disk)."""
    key = (schedule.codegen_key, str(target))
    k = _KERNELS.get(key)
    if k is None:
        with _LOCK:
            k = _KERNELS.get(key)
            if k is None:
                k = _KERNELS[key] = CompiledKernel(schedule, target)
    return k


def lut_gemm(x, qw, threads=None, out=None):
    """y = x @ qw.dequantize().T computed by LUT GEMM; x is (M, K) or (K,) float32."""
    from quant import QuantizedTensor
    if not isinstance(qw, QuantizedTensor):
        raise TypeError(f"qw: expected a quant.QuantizedTensor, got {type(qw).__name__}")
    shape = getattr(x, "shape", None)
    M = 1 if shape is None or len(shape) < 2 else int(shape[0])
    sched = choose_schedule(qw.bits, qw.group_size, M, qw.N, qw.K)
    return get_kernel(sched)(x, qw, out=out, threads=threads if threads is not None else sched.threads)
