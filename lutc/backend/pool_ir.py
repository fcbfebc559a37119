"""The native thread pool's code: ``lutc_pool_run`` and its helpers as one llvmlite IR module.

The protocol and ABI are lutc.backend.pool_protocol; the state layout and shared IR helpers
pool_state; the worker side pool_worker; the caller's side and entry points pool_dispatch; the program
entry (a list of launches, one publish, barriers between launches) pool_program.
Loading the module into a process (MCJIT, pthread symbols, fork and exit handling) is
lutc.backend.threadpool."""
from __future__ import annotations

import llvmlite.ir as ir

from . import pool_dispatch as dispatch
from . import pool_program as program
from . import pool_worker as worker
from .pool_state import PoolBuilder
from .toolchain import host_cpu

__all__ = ["build_pool_module"]

# Generation order (it fixes the order of the module's functions): a function is generated
# after every function it calls.
_PHASES = (worker.gen_spin_calibrate, dispatch.gen_wait_idle, worker.gen_work, worker.gen_worker,
           worker.gen_spawn, dispatch.gen_parallel, program.gen_claims, program.gen_walk, program.gen_phase,
           dispatch.gen_run, program.gen_program, dispatch.gen_init, dispatch.gen_shutdown, dispatch.gen_ctl)


def build_pool_module(triple: str | None = None) -> ir.Module:
    """The pool as an llvmlite ``ir.Module`` for ``triple`` (default: this process)."""
    g = PoolBuilder(triple or host_cpu().triple)
    for gen in _PHASES:
        gen(g)
    return g.m
