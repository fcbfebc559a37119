"""The native launch ABI every compiled kernel exports, stated once (LLVM and ctypes sides).

Each kernel `name` exports `void name_launch(u64 *ctx, i64 ntasks, i64 nthreads)`. `ctx` is an
argument block of 8-byte slots: slots 0..2 hold the grid, and the kernel's parameters follow in
declaration order (pointers as addresses, integers sign/zero-extended, floats as their bits).
A launch program (`build_program_runner`) calls a list of such launches back to back.
"""
from __future__ import annotations

import ctypes

import llvmlite.ir as ir

from .irutil import I64, PTR, PtrTo, for_range
from .toolchain import host_cpu, mcjit

GRID_SLOTS = 3
LAUNCH_FNTY = ir.FunctionType(ir.VoidType(), [PTR, I64, I64])
LAUNCH_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
PROGRAM_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
RECORD_FIELDS = ("entry", "ctx", "ntasks", "nthreads")   # one row of a launch program, i64 each


def launch_symbol(kernel_name: str) -> str:
    return f"{kernel_name}_launch"


def build_program_runner():
    """JIT `void run(i64 *records, i64 n)`: for each record (entry, ctx, ntasks, nthreads), call
    entry(ctx, ntasks, nthreads). Returns (engine, ctypes function); keep the engine alive."""
    m = ir.Module(name="lutc_launch_program")
    m.triple = host_cpu().triple
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [PTR, I64]), "lutc_run_program")
    recs, n = fn.args
    width = len(RECORD_FIELDS)

    def call_record(b, i):
        base = b.mul(i, I64(width))
        f, ctx, ntasks, threads = (b.load(b.gep(recs, [b.add(base, I64(k))], source_etype=I64), typ=I64)
                                   for k in range(width))
        b.call(b.inttoptr(f, PtrTo(LAUNCH_FNTY)), [b.inttoptr(ctx, PTR), ntasks, threads])

    b = ir.IRBuilder(fn.append_basic_block("entry"))
    for_range(b, n, call_record, "record")
    b.ret_void()
    engine = mcjit(m)
    return engine, PROGRAM_CFUNC(engine.get_function_address("lutc_run_program"))
