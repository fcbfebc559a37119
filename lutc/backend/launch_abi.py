"""The native launch ABI every compiled kernel exports, stated once (LLVM and ctypes sides).

Each kernel `name` exports `void name_launch(u64 *ctx, i64 ntasks, i64 nthreads)`. `ctx` is an
argument block of 8-byte slots: slots 0..2 hold the grid, and the kernel's parameters follow in
declaration order (pointers as addresses, integers sign/zero-extended, floats as their bits).
A launch program is an array of records (RECORD_FIELDS, i64 each) run by the thread pool's
program entry `void lutc_pool_program(i64 *records, i64 n, i64 nthreads)`
(lutc.backend.pool_program): one publish for the whole list, a barrier between launches.
"""
from __future__ import annotations

import ctypes

import llvmlite.ir as ir

from .irutil import I64, PTR

GRID_SLOTS = 3
LAUNCH_FNTY = ir.FunctionType(ir.VoidType(), [PTR, I64, I64])
LAUNCH_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
PROGRAM_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
RECORD_FIELDS = ("entry", "ctx", "ntasks", "nthreads")   # one row of a launch program, i64 each


def launch_symbol(kernel_name: str) -> str:
    return f"{kernel_name}_launch"
