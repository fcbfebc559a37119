"""The native persistent thread pool in this process: JIT the pool's code (lutc.backend.pool_ir)
with MCJIT, resolve pthreads, calibrate the idle spin, and handle fork and interpreter exit."""
from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading
import time

import llvmlite.binding as llvm

from .launch_abi import PROGRAM_CFUNC, RECORD_FIELDS
from .pool_ir import build_pool_module
from .pool_program import PROGRAM_SYMBOL
from .pool_protocol import (CTL_CTRL, CTL_DISABLED, CTL_NWORKERS, CTL_SET_DISABLED, CTL_SET_FORWARD,
                            CTL_SET_SPIN, CTL_SLEEPERS, DISABLED_FORKED, MAX_THREADS, RUN_FNTY, SEQ_SHIFT,
                            SYMBOL_NAME, TASK_FNTY, declare_pool_run, task_pointer)
from .toolchain import host_jit_machine, init_llvm, mcjit

__all__ = ["ThreadPool", "get_pool", "build_pool_module", "declare_pool_run", "task_pointer",
           "TASK_FNTY", "RUN_FNTY", "SYMBOL_NAME", "MAX_THREADS"]

DEFAULT_SPIN_US = 500.0           # idle spin budget before sleeping; env LUTC_POOL_SPIN_US

_C_RUN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_C_CTL = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int32, ctypes.c_int64)
_C_INIT = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64)
_C_SHUTDOWN = ctypes.CFUNCTYPE(None, ctypes.c_int32)
_C_SPIN = ctypes.CFUNCTYPE(None, ctypes.c_int64)


# ----------------------------------------------------------------------------- JIT + symbols

_PTHREAD_SYMBOLS = ("pthread_create", "pthread_join", "pthread_mutex_init", "pthread_mutex_lock",
                    "pthread_mutex_unlock", "pthread_cond_init", "pthread_cond_wait",
                    "pthread_cond_broadcast", "pthread_cond_signal", "pthread_key_create",
                    "pthread_getspecific", "pthread_setspecific")
_llvm_ready = False
_KEEPALIVE: list = []      # every engine/pool ever built: JIT code must never be freed


def _library_handles():
    handles = []
    try:
        handles.append(ctypes.CDLL(None))        # the process (libc has pthread on glibc >= 2.34)
    except OSError:
        pass
    if sys.platform == "darwin":
        names = ("/usr/lib/libSystem.B.dylib", "libSystem.dylib")
    else:
        names = ("libpthread.so.0", "libc.so.6", "libc.so")   # older glibc: libpthread separate
    for name in names:
        try:
            handles.append(ctypes.CDLL(name))
        except OSError:
            pass
    return handles


def _register_pthread_symbols():
    handles = _library_handles()
    for name in _PTHREAD_SYMBOLS:
        for h in handles:
            try:
                fn = getattr(h, name)
            except AttributeError:
                continue
            llvm.add_symbol(name, ctypes.cast(fn, ctypes.c_void_p).value)
            break
        else:
            raise OSError(f"lutc threadpool: cannot resolve {name}")


def _init_llvm():
    global _llvm_ready
    if not _llvm_ready:
        init_llvm()
        _register_pthread_symbols()
        _llvm_ready = True


def _spin_budget(spin_fn) -> int:
    """Number of spin iterations lasting about LUTC_POOL_SPIN_US microseconds."""
    try:
        us = float(os.environ.get("LUTC_POOL_SPIN_US", DEFAULT_SPIN_US))
    except ValueError:
        us = DEFAULT_SPIN_US
    if us <= 0:
        return 0
    n, best = 20000, float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        spin_fn(n)
        best = min(best, time.perf_counter() - t0)
    per_iter = max(best / n, 1e-10)
    return int(min(max(us * 1e-6 / per_iter, 64), 1 << 26))


class ThreadPool:
    """One native pool (module + MCJIT engine).  Use :func:`get_pool` for the process singleton."""

    symbol_name = SYMBOL_NAME

    def __init__(self):
        _init_llvm()
        self.pid = os.getpid()
        self.fork_gen = _fork_gen
        self._tm = host_jit_machine(opt=2)
        self._engine = mcjit(build_pool_module(self._tm.triple), self._tm, speed_level=2)
        addr = self._engine.get_function_address
        self.run_address = addr(SYMBOL_NAME)
        self._run = _C_RUN(self.run_address)
        self.program = PROGRAM_CFUNC(addr(PROGRAM_SYMBOL))     # unchecked: see run_program
        self._ctl = _C_CTL(addr("lutc_pool_ctl"))
        self._shutdown = _C_SHUTDOWN(addr("lutc_pool_shutdown"))
        spin = _C_SPIN(addr("lutc_pool_spin"))
        self.spin_iters = _spin_budget(spin)
        rc = _C_INIT(addr("lutc_pool_init"))(self.spin_iters)
        if rc != 0:
            raise OSError(rc, "lutc threadpool: pthread initialization failed")
        _KEEPALIVE.append(self)

    # -- calling ---------------------------------------------------------------------------
    def run(self, task_address: int, ctx_address: int, ntasks: int, nthreads: int) -> None:
        """Run task(ctx, i) for i in [0, ntasks) on up to nthreads threads (GIL released).
        (On a stale pool in a forked child the native code runs inline or forwards.)"""
        self._run(task_address, ctx_address, ntasks, nthreads)

    def run_program(self, records, nthreads: int) -> None:
        """Run a launch program: `records` an (n, 4) int64 C-contiguous array of RECORD_FIELDS rows
        (entry, ctx, ntasks, nthreads) whose entries and argument blocks stay valid for the call;
        one publish, up to nthreads threads walking it, a barrier between launches. With
        nthreads == 1 every launch dispatches itself (one pool job per parallel launch)."""
        import numpy as np
        if (not isinstance(records, np.ndarray) or records.dtype != np.int64 or records.ndim != 2
                or records.shape[1] != len(RECORD_FIELDS) or not records.flags.c_contiguous):
            raise ValueError(f"records: expected a C-contiguous (n, {len(RECORD_FIELDS)}) int64 array")
        if isinstance(nthreads, bool) or int(nthreads) < 1:
            raise ValueError(f"nthreads: expected an int >= 1, got {nthreads!r}")
        self.program(records.ctypes.data, len(records), int(nthreads))

    def register_symbol(self) -> None:
        """Make ``lutc_pool_run`` resolvable by other MCJIT modules (call before finalizing them)."""
        llvm.add_symbol(SYMBOL_NAME, self.run_address)

    # -- introspection / tuning --------------------------------------------------------------
    @property
    def nworkers(self) -> int:
        return self._ctl(CTL_NWORKERS, 0)

    @property
    def sleeping_workers(self) -> int:
        return self._ctl(CTL_SLEEPERS, 0)

    def stats(self) -> dict:
        ctrl = self._ctl(CTL_CTRL, 0) & (2**64 - 1)
        return {"nworkers": self.nworkers, "sleeping": self.sleeping_workers,
                "jobs": ctrl >> SEQ_SHIFT, "disabled": self._ctl(CTL_DISABLED, 0),
                "spin_iters": self.spin_iters}

    def set_spin_iters(self, iters: int) -> None:
        self.spin_iters = int(iters)
        self._ctl(CTL_SET_SPIN, self.spin_iters)

    # -- lifecycle ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop and join all workers.  The pool stays usable (workers are re-created lazily)."""
        if self.pid == os.getpid():
            self._shutdown(0)

    def _close(self) -> None:
        if self.pid == os.getpid():
            self._shutdown(1)                  # later calls (e.g. daemon threads) run inline

    def _mark_forked(self, forward: int = 0) -> None:
        self._ctl(CTL_SET_DISABLED, DISABLED_FORKED)
        if forward:
            self._ctl(CTL_SET_FORWARD, forward)


_pool: ThreadPool | None = None
_fork_gen = 0                  # bumped in every forked child (os.register_at_fork)
_pool_lock = threading.Lock()


def get_pool() -> ThreadPool:
    """The process-wide pool, created lazily (and re-created in a forked child)."""
    global _pool
    pool = _pool
    if pool is not None and pool.fork_gen == _fork_gen:     # no getpid() syscall on the fast path
        return pool
    with _pool_lock:
        pid = os.getpid()
        if _pool is None or _pool.pid != pid:
            new = ThreadPool()
            for old in _KEEPALIVE:
                if old is not new and old.pid != pid:
                    # Old pools' workers died with the fork; code linked to them forwards here.
                    old._mark_forked(new.run_address)
            new.register_symbol()
            _pool = new
        return _pool


@atexit.register
def _at_exit():
    # Join every worker of this process before the interpreter (and LLVM) goes away; calls made
    # after this point (daemon threads, later atexit hooks) run inline.
    for pool in _KEEPALIVE:
        pool._close()


def _after_fork_child():
    global _pool_lock, _fork_gen
    _fork_gen += 1
    _pool_lock = threading.Lock()              # the parent's lock may have been held at fork
    for pool in _KEEPALIVE:
        pool._mark_forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_child)
