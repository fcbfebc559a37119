"""QuantLinear: one packed matrix with prebuilt native launch blocks (no per-call Python work or allocation)."""
# The only module that reaches below lutc.CompiledKernel's public call API: a kernel's `_tables` /
# `_gemm` CompiledFunctions, whose public `make_ctx` and `launch_address` let us build each launch's
# argument block once and then call the native entry point directly.
from __future__ import annotations

import ctypes

import numpy as np

from lutc.ops import choose_schedule, default_schedule, get_kernel

_LAUNCH_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


class Launch:
    """A native launch with a fixed argument block: `launch(threads)` costs one ctypes call."""

    __slots__ = ("fn", "ctx", "addr", "ntasks", "name")

    def __init__(self, cfunc, grid, values, name=""):
        ctx, ntasks = cfunc.make_ctx(grid, values)
        self.fn = _LAUNCH_T(cfunc.launch_address)
        self.ctx, self.addr, self.ntasks, self.name = ctx, ctypes.addressof(ctx), ntasks, name

    def __call__(self, threads):
        if self.ntasks:
            self.fn(self.addr, self.ntasks, threads)

    def record(self, threads):
        """(entry address, ctx address, ntasks, threads): one row of a native launch program."""
        return (ctypes.cast(self.fn, ctypes.c_void_p).value, self.addr, self.ntasks, threads)


def _choose(bits, gs, m, n, k):
    try:
        return choose_schedule(bits, gs, m, n, k)
    except ImportError:     # a tuning package that is present but incomplete: use the default
        return default_schedule(bits, gs, m)


def _schedules(qt, lut_dtype, m_prefill):
    """Decode (M=1) and prefill schedules sharing one packed layout."""
    n, k = qt.shape
    dec = _choose(qt.bits, qt.group_size, 1, n, k)
    pre = _choose(qt.bits, qt.group_size, max(m_prefill, 1), n, k)
    if lut_dtype is not None:
        dec, pre = dec.replace(lut_dtype=lut_dtype), pre.replace(lut_dtype=lut_dtype)
    pre = pre.replace(g=dec.g, bn=dec.bn, interleave=dec.interleave)  # same layout: pack once
    return dec, pre


class StalePackError(ValueError):
    """Prepacked weights whose layout no longer matches the schedule lutc chooses now."""


class PackedLinear:
    """Weights already in kernel layout (from the runtime's pack cache): what QuantLinear keeps."""

    def __init__(self, bits, group_size, packed):
        self.bits, self.group_size, self.packed = bits, group_size, packed
        self.shape = (packed.N, packed.K)


class QuantLinear:
    """y = x @ W_hat^T for a QuantizedTensor (or PackedLinear) W, packed once (codes are not kept).

    `bind(x, y, m)` returns the two Launches (table build, GEMM) that read rows 0..m-1 of the
    preallocated float32 buffer x and write rows 0..m-1 of y. m == 1 uses the GEMV schedule,
    m > 1 the prefill (M-blocked) schedule.
    """

    def __init__(self, qt, max_m=1, lut_dtype=None, name=""):
        self.name = name
        self.N, self.K = qt.shape
        self.bits, self.group_size = qt.bits, qt.group_size
        self.sched_decode, self.sched_prefill = _schedules(qt, lut_dtype, max_m)
        self.k_decode = get_kernel(self.sched_decode)
        self.k_prefill = get_kernel(self.sched_prefill)
        if isinstance(qt, PackedLinear):
            if qt.packed.layout_key != self.sched_decode.layout_key:
                raise StalePackError(f"{name}: packed for {qt.packed.layout_key}, schedule wants "
                                     f"{self.sched_decode.layout_key}")
            self.packed = qt.packed
        else:
            self.packed = self.k_decode.pack(qt)
        s = self.sched_decode
        self.num_groups = self.packed.num_groups
        self.max_m = max_m
        per_row = self.num_groups * max(self.sched_decode.padded_tables, self.sched_prefill.padded_tables) \
            * s.table_size * 4
        self._luts = np.empty(max(max_m, 1) * per_row, np.uint8)
        self._lut_scales = np.empty(max(max_m, 1) * self.num_groups, np.float32)
        self._xsums = np.empty(max(max_m, 1) * self.num_groups, np.float32)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def bind(self, x: np.ndarray, y: np.ndarray, m: int) -> tuple[Launch, Launch]:
        _check_buffer("x", x, m, self.K)
        _check_buffer("y", y, m, self.N)
        if not 1 <= m <= self.max_m:
            raise ValueError(f"{self.name}: m={m} outside 1..{self.max_m}")
        kern = self.k_decode if m == 1 else self.k_prefill
        p, ng = self.packed, self.num_groups
        luts, ls, xs = self._luts.ctypes.data, self._lut_scales.ctypes.data, self._xsums.ctypes.data
        tables = Launch(kern._tables, (m, ng), [x.ctypes.data, luts, ls, xs, self.K, ng], self.name + ".tables")
        gemm = Launch(kern._gemm, (p.num_tiles,), [p.w, p.sz, luts, ls, xs, y.ctypes.data, m, self.N, ng],
                      self.name + ".gemm")
        return tables, gemm


def _check_buffer(what, a, m, cols):
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2 or a.shape[1] != cols \
            or a.shape[0] < m or not a.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous float32 buffer of shape (>={m}, {cols}), "
                         f"got {getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")


def concat_rows(qts):
    """QuantizedTensors of one bits/group_size/K stacked along N (fuses q/k/v or gate/up)."""
    from quant import QuantizedTensor
    first = qts[0]
    for q in qts[1:]:
        if (q.bits, q.group_size, q.K) != (first.bits, first.group_size, first.K):
            raise ValueError("cannot fuse matrices with different bits, group_size or K")
    return QuantizedTensor(bits=first.bits, group_size=first.group_size,
                           shape=(sum(q.N for q in qts), first.K),
                           codes=np.concatenate([q.codes for q in qts], 0),
                           scales=np.concatenate([q.scales for q in qts], 1),
                           zeros=np.concatenate([q.zeros for q in qts], 0), method=first.method)
