"""Launching native kernels: one specialization's code (CompiledFunction), its argument blocks
bound once to owned buffers (BoundLaunch), and lists of launches run by one native call
(LaunchProgram). The only path from Python into compiled kernels."""
from __future__ import annotations

import ctypes
import os
import struct
import threading

import numpy as np

from .backend.launch_abi import GRID_SLOTS, LAUNCH_CFUNC, launch_symbol
from .backend.mcjit import JITModule
from .backend.threadpool import get_pool
from .backend.toolchain import runs_here
from .errors import LaunchError
from .ir import types as T


def usable_cpus() -> list:
    """The CPU ids this process may run on, sorted (all of them where affinity is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0)) or [0]
    except AttributeError:
        return list(range(max(1, os.cpu_count() or 1)))


def usable_cores() -> int:
    """Cores this process may run on (the upper bound of the `threads` knob)."""
    return len(usable_cpus())


def default_threads() -> int:
    """LUTC_NUM_THREADS, else the CPUs this process may run on."""
    env = os.environ.get("LUTC_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise LaunchError(f"LUTC_NUM_THREADS: expected an int >= 1, got {env!r}") from None
    return usable_cores()


def resolve_threads(threads) -> int:
    """The one thread-count rule: None -> default_threads(), else an int >= 1."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise LaunchError(f"threads: expected an int >= 1, got {threads!r}")
    return int(threads)


class CompiledFunction:
    """Native code for one specialization of a @lutc.jit kernel, launched over a grid."""

    def __init__(self, name, params, obj, target, ir_text):
        self.name = name
        self.params = params
        self.target = target
        self._ir = ir_text
        self.obj = obj
        self._slot = {p.name: GRID_SLOTS + i for i, p in enumerate(params)}
        self._packers = [_packer(p.type) for p in params]
        self._module = JITModule(obj, target) if runs_here(target) else None
        self._entry = None
        if self._module is not None:
            self._entry = LAUNCH_CFUNC(self._module.address(launch_symbol(name)))

    @property
    def ir(self) -> str:
        """The lutc IR after passes (text)."""
        if callable(self._ir):
            self._ir = self._ir()
        return self._ir

    @property
    def entry(self):
        """The ctypes entry `launch(ctx_address, ntasks, nthreads)` (no checks at all)."""
        if self._entry is None:
            raise LaunchError(f"{self.name} was compiled for {self.target.name}, not this host")
        return self._entry

    def param_index(self, name: str) -> int:
        try:
            return self._slot[name] - GRID_SLOTS
        except KeyError:
            raise LaunchError(f"{self.name} has no parameter {name!r}; it takes "
                              f"{', '.join(p.name for p in self.params)}") from None

    def ordered(self, args) -> list:
        """Argument values in parameter order from a list (positional) or a dict (by name)."""
        if isinstance(args, dict):
            unknown = set(args) - set(self._slot)
            missing = [p.name for p in self.params if p.name not in args]
            if unknown or missing:
                raise LaunchError(f"{self.name}: unknown argument(s) {sorted(unknown)}, missing {missing}")
            return [args[p.name] for p in self.params]
        if len(args) != len(self.params):
            raise LaunchError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        return list(args)

    def make_ctx(self, grid, args):
        """(argument block, ntasks): grid dims, then one 8-byte slot per parameter.

        Pointer arguments may be raw integer addresses: nothing then keeps their memory alive
        or checks it (the AArch64 emulator harness passes emulated addresses this way)."""
        values = self.ordered(args)
        g = list(grid) + [1] * (3 - len(grid))
        if len(grid) > 3 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in g):
            raise LaunchError(f"grid dimensions must be non-negative ints (at most 3), got {tuple(grid)}")
        ctx = (ctypes.c_uint64 * (GRID_SLOTS + len(self.params)))()
        ctx[0], ctx[1], ctx[2] = (int(d) for d in g)
        for i, (p, pack, v) in enumerate(zip(self.params, self._packers, values)):
            ctx[GRID_SLOTS + i] = pack(p.name, v)
        return ctx, g[0] * g[1] * g[2]

    def bind(self, grid, args, name: str = "") -> "BoundLaunch":
        """A launch with its argument block built once; array arguments are kept alive by it."""
        return BoundLaunch(self, grid, args, name or self.name)

    def launch(self, grid, args, threads=1):
        self.bind(grid, args)(resolve_threads(threads))


class BoundLaunch:
    """One kernel launch with a fixed argument block: calling it costs one ctypes call.

    It holds the arrays it was given (and any later `set`), so their memory outlives it."""

    __slots__ = ("fn", "name", "ctx", "addr", "ntasks", "_owners", "_entry")

    def __init__(self, fn: CompiledFunction, grid, args, name):
        self.fn, self.name = fn, name
        values = fn.ordered(args)
        self._entry = fn.entry
        self.ctx, self.ntasks = fn.make_ctx(grid, values)
        self.addr = ctypes.addressof(self.ctx)
        self._owners = {GRID_SLOTS + i: v for i, v in enumerate(values) if not isinstance(v, (int, float))}

    def set(self, name: str, value):
        """Re-point one argument (checked as at bind time; the new array is kept alive)."""
        i = self.fn.param_index(name)
        self.ctx[GRID_SLOTS + i] = self.fn._packers[i](name, value)
        self._owners[GRID_SLOTS + i] = value

    def slot(self, name: str) -> int:
        """The argument-block slot of a parameter, for `put`."""
        return GRID_SLOTS + self.fn.param_index(name)

    def put(self, slot: int, array) -> None:
        """Unchecked `set` for hot paths: `array` must already be validated for that parameter."""
        self.ctx[slot] = array.ctypes.data
        self._owners[slot] = array

    def __call__(self, threads: int):
        """Unchecked thread count (callers resolve it once); runs the grid."""
        if self.ntasks:
            self._entry(self.addr, self.ntasks, threads)

    def record(self, threads: int) -> tuple:
        """One row of a LaunchProgram: (entry, ctx, ntasks, nthreads)."""
        return (ctypes.cast(self._entry, ctypes.c_void_p).value, self.addr, self.ntasks, threads)


class LaunchProgram:
    """BoundLaunches with their thread counts, executed in order by one native call (`run()`):
    the thread pool's program entry, one publish per run, a barrier between launches; launches
    with 1 thread run on the calling thread while the pool's workers wait."""

    def __init__(self, steps):
        self.launches = [launch for launch, _ in steps]          # keeps argument blocks and buffers alive
        rows = [launch.record(resolve_threads(t)) for launch, t in steps if launch.ntasks]
        self.records = np.array(rows, dtype=np.int64).reshape(-1, 4)
        self.nthreads = max((r[3] for r in rows), default=1)
        self._addr, self._n = self.records.ctypes.data, len(self.records)
        self._pool = self._program = None

    def __len__(self):
        return self._n

    def _entry(self):
        pool = get_pool()                  # the pool of this process (a forked child gets a new one)
        if pool is not self._pool:
            self._pool, self._program = pool, pool.program
        return self._program

    def run(self):
        self._entry()(self._addr, self._n, self.nthreads)

    def run_per_launch(self):
        """The same launches, each parallel one its own pool job (publish + join): for comparisons."""
        self._entry()(self._addr, self._n, 1)


def _packer(t):
    """The function that turns a Python value into the 8-byte slot of a parameter of type t."""
    if isinstance(t, T.PointerType):
        np_dtype = np.dtype(T.numpy_name(t.elem))

        def pack(name, v):
            if isinstance(v, np.ndarray):
                if v.dtype != np_dtype:
                    raise LaunchError(f"argument '{name}': expected an array of {t.elem}, got {v.dtype}")
                return v.ctypes.data
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                return int(v) & 0xFFFFFFFFFFFFFFFF   # a raw address (unchecked)
            if hasattr(v, "data_ptr"):
                if str(v.dtype).replace("torch.", "") != np_dtype.name:
                    raise LaunchError(f"argument '{name}': expected a tensor of {t.elem}, got {v.dtype}")
                return v.data_ptr()
            raise LaunchError(f"argument '{name}': expected an array, got {type(v).__name__}")
        return pack
    if t.is_float:
        fmt = {16: "<e", 32: "<f", 64: "<d"}[t.bits]
        ufmt = {16: "<H", 32: "<I", 64: "<Q"}[t.bits]
        return lambda name, v: struct.unpack(ufmt, struct.pack(fmt, float(v)))[0]
    lo = -(1 << (t.bits - 1)) if t.is_signed else 0
    hi = (1 << (t.bits - (1 if t.is_signed else 0))) - 1

    def pack_int(name, v):
        v = int(v)
        if not lo <= v <= hi:
            raise LaunchError(f"argument '{name}': {v} does not fit in {t}")
        return v & 0xFFFFFFFFFFFFFFFF
    return pack_int
