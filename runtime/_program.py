"""Program: a list of native launches run back to back by one native call (one ctypes call per token)."""
from __future__ import annotations

import ctypes
import threading

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np

from lutc.backend.irutil import I64 as _I64, PTR as _PTR, for_range, mcjit

_LAUNCH_FNTY = ir.FunctionType(ir.VoidType(), [_PTR, _I64, _I64])   # void k_launch(ctx, ntasks, threads)
_RUN_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
_LOCK = threading.Lock()
_RUNNER = None


class _FnPtr(ir.PointerType):
    """An opaque pointer that remembers its function type (llvmlite needs it for indirect calls)."""

    def __init__(self, fnty):
        super().__init__()
        self.pointee = fnty


def _build_runner():
    """JIT `void run(i64 *records, i64 n)`: for each record (fn, ctx, ntasks, threads) call fn(ctx, ntasks, threads)."""
    m = ir.Module(name="lutc_runtime_program")
    m.triple = llvm.get_process_triple()
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [_PTR, _I64]), "lutc_rt_run_program")
    recs, n = fn.args

    def call_record(b, i):
        base = b.mul(i, _I64(4))
        f, ctx, ntasks, threads = (b.load(b.gep(recs, [b.add(base, _I64(k))], source_etype=_I64), typ=_I64)
                                   for k in range(4))
        b.call(b.inttoptr(f, _FnPtr(_LAUNCH_FNTY)), [b.inttoptr(ctx, _PTR), ntasks, threads])

    b = ir.IRBuilder(fn.append_basic_block("entry"))
    for_range(b, n, call_record, "record")
    b.ret_void()
    engine = mcjit(m)
    return engine, _RUN_T(engine.get_function_address("lutc_rt_run_program"))


def _runner():
    global _RUNNER
    with _LOCK:
        if _RUNNER is None:
            _RUNNER = _build_runner()
    return _RUNNER[1]


class Program:
    """Launches (runtime._native.Launch) with their thread counts, executed in order by `run()`."""

    def __init__(self, launches_and_threads):
        self.launches = [lt[0] for lt in launches_and_threads]      # keep argument blocks alive
        self.records = np.array([lt[0].record(lt[1]) for lt in launches_and_threads if lt[0].ntasks],
                                dtype=np.int64).reshape(-1, 4)
        self._addr, self._n, self._run = self.records.ctypes.data, len(self.records), _runner()

    def __len__(self):
        return self._n

    def run(self):
        self._run(self._addr, self._n)
