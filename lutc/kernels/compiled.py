"""CompiledKernel: a compiled LUT-GEMM schedule as a safe Python callable on numpy/torch."""
from __future__ import annotations

import ctypes
import os
import threading
import weakref

import numpy as np

from ..backend.codegen import GRID_SLOTS
from ..errors import LaunchError
from ..ir import types as T
from ..schedule import Schedule
from .gemm import build_tables, lut_gemm
from .packing import PackedWeights, pack_weights

_LUT_DT = {"int8": (T.int8, np.int8), "float16": (T.float16, np.float16),
           "float32": (T.float32, np.float32)}
_ACC_DT = {"int16": T.int16, "int32": T.int32, "float32": T.float32}
_PACK_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def default_threads() -> int:
    env = os.environ.get("LUTC_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class CompiledKernel:
    """`kernel(x, qw)` computes x @ qw.dequantize().T with the schedule's native code."""

    def __init__(self, schedule: Schedule, target="host"):
        self.schedule = s = schedule
        lut_t, self._lut_np = _LUT_DT[s.lut_dtype]
        ga = 1 << (s.g - 1).bit_length()
        self._table_args = dict(GS=s.group_size, G=s.g, GA=ga, TPG=s.tables_per_group,
                                TPGP=s.padded_tables, LUT_DTYPE=lut_t)
        self._gemm_args = dict(BITS=s.bits, G=s.g, BN=s.bn, PB=s.per_byte, SB=s.slot_bits,
                               CPG=s.chunks_per_group, TPGP=s.padded_tables, UNROLL=s.unroll,
                               MB=s.mb, PLANE_MAJOR=s.interleave == "plane", ACC=_ACC_DT[s.acc_dtype])
        lut_ptr = T.PointerType(lut_t)
        f32p, i32 = T.PointerType(T.float32), T.int32
        self._table_sig = dict(x=f32p, luts=lut_ptr, lut_scales=f32p, xsums=f32p, K=i32, NG=i32)
        self._gemm_sig = dict(w=T.PointerType(T.uint8), sz=T.PointerType(T.float16), luts=lut_ptr,
                              lut_scales=f32p, xsums=f32p, y=f32p, M=i32, N=i32, NG=i32)
        self.target = target
        self._tables = build_tables.compile(self._table_sig, self._table_args, 2, target)
        self._gemm = lut_gemm.compile(self._gemm_sig, self._gemm_args, 1, target)

    def __repr__(self) -> str:
        return f"CompiledKernel({self.schedule})"

    # ------------------------------------------------------------------ inspection
    def emit(self, kind="asm", which="gemm"):
        """The 'ir', 'llvm' or 'asm' of the gemm (default) or the table-building kernel."""
        from ..jit import emit
        if which == "gemm":
            return emit(lut_gemm, self._gemm_sig, self._gemm_args, 1, self.target, kind)
        return emit(build_tables, self._table_sig, self._table_args, 2, self.target, kind)

    # ------------------------------------------------------------------ packing
    def pack(self, qw) -> PackedWeights:
        """qw in this schedule's layout; packed once per QuantizedTensor and layout, then cached."""
        self._check_qw(qw)
        per_qw = _PACK_CACHE.setdefault(qw, {})
        packed = per_qw.get(self.schedule.layout_key)
        if packed is None:
            packed = per_qw[self.schedule.layout_key] = pack_weights(qw, self.schedule)
        return packed

    def _check_qw(self, qw):
        from quant import QuantizedTensor
        if not isinstance(qw, QuantizedTensor):
            raise LaunchError(f"weights: expected a quant.QuantizedTensor or PackedWeights, got {type(qw).__name__}")
        s = self.schedule
        if qw.bits != s.bits or qw.group_size != s.group_size:
            raise LaunchError(f"weights: this kernel was compiled for bits={s.bits}, group_size={s.group_size}; "
                              f"got a QuantizedTensor with bits={qw.bits}, group_size={qw.group_size}")

    # ------------------------------------------------------------------ call
    def __call__(self, x, qw, out=None, threads=None):
        packed = qw if isinstance(qw, PackedWeights) else self.pack(qw)
        if packed.layout_key != self.schedule.layout_key:
            raise LaunchError(f"weights: packed for layout {packed.layout_key}, kernel expects "
                              f"{self.schedule.layout_key}")
        xa, is_torch, squeeze = _as_activations(x, packed.K)
        M = xa.shape[0]
        y = _check_out(out, M, packed.N, is_torch)
        threads = _resolve_threads(threads if threads is not None else self.schedule.threads)
        if M:
            self.run(xa, packed, y, threads)
        if is_torch:
            import torch
            y = out if out is not None else torch.from_numpy(y)
        return y[0] if squeeze else y

    def run(self, xa: np.ndarray, packed: PackedWeights, y: np.ndarray, threads: int):
        """Unchecked core: xa (M, K) f32 C-contiguous, y (M, N) f32. Callers must validate."""
        self.plan(packed, xa.shape[0]).run_ptr(xa.ctypes.data, y.ctypes.data, threads)

    def plan(self, packed: PackedWeights, M: int) -> "LaunchPlan":
        """The prepared launch for these weights and M (scratch tables, argument blocks), cached."""
        plans = _PLANS.setdefault(packed, {})
        key = (self.schedule.codegen_key, str(self.target), M)
        plan = plans.get(key)
        if plan is None:
            while len(plans) >= _MAX_PLANS_PER_WEIGHT:  # bound scratch memory for varying M
                plans.pop(next(iter(plans)))
            plan = plans[key] = LaunchPlan(self, packed, M)
        return plan


_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MAX_PLANS_PER_WEIGHT = 8


class LaunchPlan:
    """Everything one call needs except the x and y addresses, prepared once.

    Holds the scratch table buffers and both kernels' native argument blocks, so a call
    patches two addresses and makes two native launches. A lock keeps two Python threads
    from sharing the scratch buffers at once.
    """

    def __init__(self, kernel: CompiledKernel, packed: PackedWeights, M: int):
        s = kernel.schedule
        ng = packed.num_groups
        self.M = M
        self.packed = packed
        self.luts = np.empty(M * ng * s.padded_tables * s.table_size, kernel._lut_np)
        self.lut_scales = np.empty(M * ng, np.float32)
        self.xsums = np.empty(M * ng, np.float32)
        self._tables, self._gemm = kernel._tables, kernel._gemm
        self._ctx_t, self._n_t = self._tables.make_ctx(
            (M, ng), [0, self.luts, self.lut_scales, self.xsums, packed.K, ng])
        self._ctx_g, self._n_g = self._gemm.make_ctx(
            (packed.num_tiles,), [packed.w, packed.sz, self.luts, self.lut_scales, self.xsums, 0,
                                  M, packed.N, ng])
        self._addr_t = ctypes.addressof(self._ctx_t)
        self._addr_g = ctypes.addressof(self._ctx_g)
        self._launch_t, self._launch_g = self._tables.native_launch, self._gemm.native_launch
        self._lock = threading.Lock()

    def run_ptr(self, x_addr: int, y_addr: int, threads: int):
        """Unchecked: x_addr points at (M, K) float32, y_addr at (M, N) float32, both C order."""
        with self._lock:
            self._ctx_t[GRID_SLOTS] = x_addr
            self._ctx_g[GRID_SLOTS + 5] = y_addr
            self._launch_t(self._addr_t, self._n_t, threads)
            self._launch_g(self._addr_g, self._n_g, threads)


def _resolve_threads(threads):
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise LaunchError(f"threads: expected an int >= 1, got {threads!r}")
    return int(threads)


def _as_activations(x, K):
    """Validate x: (M, K) or (K,) float32, C-contiguous, CPU. Returns (array, is_torch, squeezed)."""
    is_torch = False
    if type(x).__module__.startswith("torch"):
        import torch
        if not isinstance(x, torch.Tensor):
            raise LaunchError(f"x: expected a numpy array or torch tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise LaunchError(f"x: expected a CPU tensor, got device {x.device}")
        if x.dtype != torch.float32:
            raise LaunchError(f"x: expected dtype float32, got {x.dtype}")
        if not x.is_contiguous():
            raise LaunchError(f"x: expected a contiguous tensor, got strides {tuple(x.stride())}")
        x = x.detach().numpy()
        is_torch = True
    if not isinstance(x, np.ndarray):
        raise LaunchError(f"x: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise LaunchError(f"x: expected dtype float32, got {x.dtype}")
    squeeze = x.ndim == 1
    if squeeze:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise LaunchError(f"x: expected shape (M, {K}) or ({K},), got {x.shape}")
    if x.shape[1] != K:
        raise LaunchError(f"x: expected shape (M, {K}) to match the weights' K={K}, got {x.shape}")
    if not x.flags.c_contiguous:
        raise LaunchError(f"x: expected a C-contiguous array, got strides {x.strides}")
    if x.ctypes.data % 4:
        raise LaunchError("x: expected 4-byte aligned data")
    return x, is_torch, squeeze


def _check_out(out, M, N, is_torch):
    if out is None:
        return np.empty((M, N), np.float32)
    arr = out.detach().numpy() if is_torch else out
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != (M, N) \
            or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise LaunchError(f"out: expected a writable C-contiguous float32 array of shape ({M}, {N}), "
                          f"got {getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}")
    return arr


def compile_schedule(schedule, target="host") -> CompiledKernel:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"lutc.compile expects a Schedule (see lutc.kernels.lut_gemm.schedule), "
                        f"got {type(schedule).__name__}")
    return CompiledKernel(schedule, target)
