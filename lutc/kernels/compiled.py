"""CompiledKernel: a compiled LUT-GEMM schedule as a safe Python callable, and the prepared
launches (`prepare`) that the runtime, the tuner and the remote runner reuse across calls."""
from __future__ import annotations

import threading
import weakref

import numpy as np

from .. import compiler
from ..errors import LaunchError
from ..ir import types as T
from ..launcher import resolve_threads
from ..schedule import Schedule
from . import spec
from .dotgemm import dot_gemm, quantize_x
from .gemm import build_tables, lut_gemm
from .packing import PackedWeights, pack_weights

_PACK_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # QuantizedTensor -> {layout: packed}
_MAX_PLANS_PER_WEIGHT = 8
_MAX_ROWS_PER_CALL = 4096      # bounds the table scratch of one call; weights are re-read per call
KERNELS = {"lut": (build_tables, lut_gemm), "dot": (quantize_x, dot_gemm)}   # schedule.path -> (tables, gemm)


class CompiledKernel:
    """`kernel(x, qw)` computes x @ qw.dequantize().T with the schedule's native code: the two
    kernels of its path (KERNELS), either way a tables launch and a gemm launch of one ABI."""

    def __init__(self, schedule: Schedule, target="host"):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"lutc.compile expects a Schedule (lutc.Schedule), got {type(schedule).__name__}")
        self.schedule = s = schedule
        self.target = target
        self._sigs = spec.signatures(s)
        self._cexprs = spec.constexprs(s, target)
        self._fns = KERNELS[s.path]
        self.tables = self._fns[0].compile(self._sigs[0], self._cexprs[0], spec.TABLES_GRID_RANK, target)
        self.gemm_target = spec.gemm_target(s, target)
        self.gemm = self._fns[1].compile(self._sigs[1], self._cexprs[1], spec.GEMM_GRID_RANK, self.gemm_target)
        self.lut_np = np.dtype(T.numpy_name(spec.scratch_type(s)))
        self._plan_key = (s.codegen_key, str(target))     # computed once: __call__ is a hot path
        self._steps = {}                                  # (N, K, NG) -> rows per launch

    def __repr__(self) -> str:
        return f"CompiledKernel({self.schedule})"

    # ------------------------------------------------------------------ inspection
    def emit(self, kind="asm", which="gemm"):
        """The 'ir', 'llvm', 'asm' or 'obj' of the gemm (default) or the tables kernel."""
        i = 1 if which == "gemm" else 0
        fn = self._fns[i]
        rank = spec.GEMM_GRID_RANK if i else spec.TABLES_GRID_RANK
        return compiler.emit(fn, self._sigs[i], self._cexprs[i], rank, self.gemm_target if i else self.target, kind)

    @property
    def objects(self) -> dict:
        """{'tables': bytes, 'gemm': bytes}: the two compiled objects."""
        return {"tables": self.tables.obj, "gemm": self.gemm.obj}

    # ------------------------------------------------------------------ packing
    def pack(self, qw) -> PackedWeights:
        """qw in this schedule's layout; packed once per weight object and layout, then cached."""
        s = self.schedule
        for attr in ("bits", "group_size", "shape", "codes", "scales", "zeros"):
            if not hasattr(qw, attr):
                raise LaunchError(f"weights: expected a quant.QuantizedTensor or PackedWeights, "
                                  f"got {type(qw).__name__}")
        if qw.bits != s.bits or qw.group_size != s.group_size:
            raise LaunchError(f"weights: this kernel was compiled for bits={s.bits}, group_size={s.group_size}; "
                              f"got a QuantizedTensor with bits={qw.bits}, group_size={qw.group_size}")
        per_qw = _PACK_CACHE.setdefault(qw, {})
        packed = per_qw.get(s.layout_key)
        if packed is None:
            packed = per_qw[s.layout_key] = pack_weights(qw, s)
        return packed

    # ------------------------------------------------------------------ prepared launches
    def scratch(self, packed: PackedWeights, max_m: int) -> "Scratch":
        """Scratch buffers for up to max_m activation rows against `packed` (shareable by prepares)."""
        return Scratch.for_schedules([self.schedule], max_m, packed.num_groups)

    def prepare(self, packed: PackedWeights, M: int, x=None, y=None, scratch: "Scratch | None" = None) -> "Prepared":
        """Both launches of one call for these weights and M rows, argument blocks built once.

        x (>= M rows of K float32) and y (>= M rows of N float32) may be bound now (then
        `Prepared.run(threads)` needs nothing more) or per call with `Prepared.__call__`.
        Everything is validated here: weights against the schedule, buffers, 32-bit offsets."""
        try:
            packed.check(self.schedule)
        except (ValueError, AttributeError) as e:
            raise LaunchError(str(e)) from None
        if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M < 1:
            raise LaunchError(f"M: expected an int >= 1, got {M!r}")
        why = spec.offset_problem(self.schedule, M, packed.N, packed.K, packed.num_groups, packed.num_tiles)
        if why:
            raise LaunchError(f"call too large: {why}")
        return Prepared(self, packed, int(M), x, y, scratch)

    def plan(self, packed: PackedWeights, M: int) -> "Prepared":
        """The cached Prepared for (packed, M) that `__call__` uses (a few M per weight object)."""
        plans = packed.plans
        key = (self._plan_key, M)
        plan = plans.get(key)
        if plan is None:
            while len(plans) >= _MAX_PLANS_PER_WEIGHT:     # bound scratch memory for varying M
                plans.pop(next(iter(plans)))
            plan = plans[key] = self.prepare(packed, M)
        return plan

    # ------------------------------------------------------------------ call
    def __call__(self, x, qw, out=None, threads=None):
        packed = qw if isinstance(qw, PackedWeights) else self.pack(qw)
        if tuple(packed.layout_key) != self.schedule.layout_key:
            raise LaunchError(f"weights: packed for layout {packed.layout_key}, kernel expects "
                              f"{self.schedule.layout_key}")
        xa, is_torch, squeeze = as_activations(x, packed.K)
        M = xa.shape[0]
        y = _check_out(out, M, packed.N, is_torch)
        threads = resolve_threads(threads if threads is not None else self.schedule.threads)
        shape = (packed.N, packed.K, packed.num_groups)
        step = self._steps.get(shape)
        if step is None:
            step = self._steps[shape] = min(_MAX_ROWS_PER_CALL, spec.max_rows(self.schedule, *shape))
        if 0 < M <= step:
            self.plan(packed, M).run_unchecked(xa, y, threads)
        else:
            for m0 in range(0, M, step):       # calls whose offsets fit in 32 bits and scratch stays small
                m1 = min(M, m0 + step)
                self.plan(packed, m1 - m0).run_unchecked(xa[m0:m1], y[m0:m1], threads)
        if is_torch:
            import torch
            y = out if out is not None else torch.from_numpy(y)
        return y[0] if squeeze else y


class Scratch:
    """The buffers build_tables writes and lut_gemm reads (tables, their scales, activation sums)."""

    @classmethod
    def for_schedules(cls, schedules, max_m: int, num_groups: int) -> "Scratch":
        """One scratch that fits up to max_m rows of every schedule given (e.g. one matrix's M buckets,
        LUT and dot paths)."""
        need = {}
        for s in schedules:
            sizes = spec.scratch_sizes(s, max_m, num_groups)
            sizes["luts"] = -(-sizes["luts"] * np.dtype(T.numpy_name(spec.scratch_type(s))).itemsize // 4)
            need = {n: max(v, need.get(n, 0)) for n, v in sizes.items()}
        return cls(need, max_m)

    def __init__(self, sizes: dict, max_m: int):
        """sizes: elements of each buffer, `luts` in 4-byte units (the widest table type). Zeroed: the
        dot path computes whole blocks of dot_bm rows and reads the scales of rows past M, where
        leftover heap bytes (NaNs, denormals) made its GEMMs 3-4x slower (SmolLM2 20-token
        prefill 1.25x)."""
        self.max_m = max_m
        self.luts = np.zeros(sizes["luts"] * 4, np.uint8)         # viewed as the schedule's scratch type
        self.lut_scales = np.zeros(sizes["lut_scales"], np.float32)
        self.xsums = np.zeros(sizes["xsums"], np.float32)

    def fits(self, sizes: dict, lut_np) -> bool:
        return (sizes["luts"] * np.dtype(lut_np).itemsize <= self.luts.size
                and sizes["lut_scales"] <= self.lut_scales.size and sizes["xsums"] <= self.xsums.size)


class Prepared:
    """The two bound launches of one LUT-GEMM call (tables, then gemm) for fixed weights and M.

    Holds its scratch and every array it was bound to. A lock keeps two Python threads from
    sharing the scratch at once."""

    def __init__(self, kernel: CompiledKernel, packed: PackedWeights, M: int, x, y, scratch):
        s, ng = kernel.schedule, packed.num_groups
        sizes = spec.scratch_sizes(s, M, ng)
        if scratch is None:
            scratch = kernel.scratch(packed, M)
        elif not isinstance(scratch, Scratch) or not scratch.fits(sizes, kernel.lut_np):
            raise LaunchError(f"scratch: too small for M={M} rows of this kernel")
        self.kernel, self.M, self.N, self.K, self.scratch = kernel, M, packed.N, packed.K, scratch
        luts = scratch.luts[:sizes["luts"] * kernel.lut_np.itemsize].view(kernel.lut_np)
        xa = _check_rows("x", x, M, packed.K) if x is not None else 0
        ya = _check_rows("y", y, M, packed.N) if y is not None else 0
        common = dict(luts=luts, lut_scales=scratch.lut_scales, xsums=scratch.xsums, NG=ng)
        self.tables = kernel.tables.bind((M, ng), dict(common, x=xa, K=packed.K), "tables")
        self.gemm = kernel.gemm.bind((packed.num_tiles,), dict(common, w=packed.w, sz=packed.sz, y=ya, M=M,
                                                               N=packed.N), "gemm")
        self.bound = x is not None and y is not None
        self._x_slot, self._y_slot = self.tables.slot("x"), self.gemm.slot("y")
        self._lock = threading.Lock()

    def launches(self):
        """(tables, gemm) BoundLaunches, for a LaunchProgram; needs x and y bound at prepare."""
        if not self.bound:
            raise LaunchError("prepare(..., x=, y=) must bind both buffers before its launches are reused")
        return self.tables, self.gemm

    def run(self, threads: int):
        """Run with the x and y bound at prepare time."""
        threads = resolve_threads(threads)
        tables, gemm = self.launches()
        with self._lock:
            tables(threads)
            gemm(threads)

    def __call__(self, x: np.ndarray, y: np.ndarray, threads: int):
        """x (>= M, K) and y (>= M, N) float32 C-contiguous arrays; checked, then run."""
        _check_rows("x", x, self.M, self.K)
        _check_rows("y", y, self.M, self.N)
        self.run_unchecked(x, y, resolve_threads(threads))

    def run_unchecked(self, x: np.ndarray, y: np.ndarray, threads: int):
        """`__call__` for callers that validated x, y and threads already (CompiledKernel.__call__)."""
        with self._lock:
            self.tables.put(self._x_slot, x)
            self.gemm.put(self._y_slot, y)
            self.tables(threads)
            self.gemm(threads)


def _check_rows(what, a, m, cols):
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2 or a.shape[1] != cols \
            or a.shape[0] < m or not a.flags.c_contiguous or (what == "y" and not a.flags.writeable):
        raise LaunchError(f"{what}: expected a {'writable ' if what == 'y' else ''}C-contiguous float32 array "
                          f"of shape (>={m}, {cols}), got {getattr(a, 'dtype', type(a).__name__)} "
                          f"{getattr(a, 'shape', '')}")
    if a.ctypes.data % 4:
        raise LaunchError(f"{what}: expected 4-byte aligned data")
    return a


def as_activations(x, K):
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
    arr = out.detach().numpy() if is_torch and hasattr(out, "detach") else out
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != (M, N) \
            or not arr.flags.c_contiguous or not arr.flags.writeable or arr.ctypes.data % 4:
        raise LaunchError(f"out: expected a writable C-contiguous float32 array of shape ({M}, {N}), 4-byte "
                          f"aligned, got {getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}")
    return arr
