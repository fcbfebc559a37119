"""Program: a list of native launches run back to back by one native call (one ctypes call per token)."""
from __future__ import annotations

import ctypes
import threading

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np

_I64 = ir.IntType(64)
_PTR = ir.PointerType()
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
    from lutc.backend.target import init_llvm
    init_llvm()
    m = ir.Module(name="lutc_runtime_program")
    m.triple = llvm.get_process_triple()
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [_PTR, _I64]), "lutc_rt_run_program")
    recs, n = fn.args
    entry, head, body, done = (fn.append_basic_block(x) for x in ("entry", "head", "body", "done"))
    b = ir.IRBuilder(entry)
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(_I64)
    i.add_incoming(_I64(0), entry)
    b.cbranch(b.icmp_signed("<", i, n), body, done)
    b.position_at_end(body)
    base = b.mul(i, _I64(4))
    f, ctx, ntasks, threads = (b.load(b.gep(recs, [b.add(base, _I64(k))], source_etype=_I64), typ=_I64)
                               for k in range(4))
    b.call(b.inttoptr(f, _FnPtr(_LAUNCH_FNTY)), [b.inttoptr(ctx, _PTR), ntasks, threads])
    i.add_incoming(b.add(i, _I64(1)), body)
    b.branch(head)
    b.position_at_end(done)
    b.ret_void()
    mod = llvm.parse_assembly(str(m))
    mod.verify()
    tm = llvm.Target.from_triple(mod.triple).create_target_machine(jit=True)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
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
