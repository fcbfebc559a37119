"""Tests for the native persistent thread pool (lutc.backend.threadpool): task dispatch."""
import ctypes
import os
import threading
import time

import numpy as np
import pytest
from _liveness import LIVENESS_S, load_note, wait_until
from _pool_tasks import NESTED_INNER, build_tasks, check as _check, counts as _counts, run_script, tp, wait_child


import llvmlite.binding as llvm

@pytest.fixture(scope="module")
def env():
    pool = tp.get_pool()
    engine, fns = build_tasks(pool)
    yield pool, fns
    _KEEP.append(engine)                 # never free JIT code that a worker might still reference


_KEEP = []



def test_llvm_initialize_is_not_used():
    with pytest.raises(RuntimeError):
        llvm.initialize()                # removed in llvmlite 0.50; the module must not call it


def test_ir_is_opaque_pointer_ir():
    text = str(tp.build_pool_module("x86_64-unknown-linux-gnu"))
    assert "*" not in text.replace("/*", "")          # no typed pointers anywhere
    assert "llvm.x86.sse2.pause" in text
    for op in ("load atomic", "store atomic", "atomicrmw", "cmpxchg"):
        assert op in text


@pytest.mark.parametrize("triple", ["aarch64-unknown-linux-gnu", "arm64-apple-macosx14.0.0"])
def test_ir_compiles_for_aarch64(triple):
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    try:
        target = llvm.Target.from_triple(triple)
    except RuntimeError:
        pytest.skip("AArch64 target not built into llvmlite")
    text = str(tp.build_pool_module(triple))
    assert "llvm.aarch64.hint" in text and "sse2" not in text
    mod = llvm.parse_assembly(text)
    mod.verify()
    tm = target.create_target_machine()
    assert len(tm.emit_object(mod)) > 0
    asm = tm.emit_assembly(mod)
    assert "yield" in asm and "lutc_pool_run" in asm


@pytest.mark.parametrize("nthreads", [1, 2, 3, 8])
@pytest.mark.parametrize("ntasks", [0, 1, 2, 3, 17, 1000])
def test_every_index_exactly_once(env, ntasks, nthreads):
    pool, fns = env
    arr = _counts(ntasks)
    pool.run(fns["counter"], arr.ctypes.data, ntasks, nthreads)
    _check(arr, ntasks)
    if ntasks == 0:
        assert arr[0] == 0


def test_parallel_tasks_really_use_workers(env):
    pool, fns = env
    arr = _counts(64)
    pool.run(fns["burn"], arr.ctypes.data, 64, 3)
    _check(arr, 64)
    assert pool.nworkers >= 2


def test_many_quick_dispatches(env):
    pool, fns = env
    arr = _counts(5)
    for _ in range(10_000):
        pool.run(fns["counter"], arr.ctypes.data, 5, 2)
    assert np.array_equal(arr, 10_000 * np.arange(1, 6))


def test_many_quick_dispatches_native(env):
    pool, fns = env
    arr = _counts(3)
    loop = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                            ctypes.c_int64)(fns["loop"])
    loop(fns["counter"], arr.ctypes.data, 3, 3, 20_000)
    assert np.array_equal(arr, 20_000 * np.arange(1, 4))


def test_nested_calls_run_inline(env):
    pool, fns = env
    outer = 33
    arr = _counts(outer * NESTED_INNER)
    pool.run(fns["nested"], arr.ctypes.data, outer, 4)
    assert np.array_equal(arr.reshape(outer, NESTED_INNER),
                          np.tile(np.arange(1, NESTED_INNER + 1), (outer, 1)))


def test_ctypes_run_address(env):
    pool, fns = env
    assert pool.symbol_name == "lutc_pool_run"
    f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(
        pool.run_address)
    arr = _counts(100)
    f(fns["counter"], arr.ctypes.data, 100, 2)
    _check(arr, 100)


def test_two_python_threads(env):
    pool, fns = env
    reps, n = 2000, 37
    arrays = [_counts(n) for _ in range(3)]
    errors = []

    def worker(arr, nthreads):
        try:
            for _ in range(reps):
                pool.run(fns["counter"], arr.ctypes.data, n, nthreads)
        except BaseException as e:                 # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(arrays[k], 2 + k)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIVENESS_S)
    assert not any(t.is_alive() for t in threads), f"dispatching threads hung ({load_note()})"
    assert not errors, errors
    for arr in arrays:
        assert np.array_equal(arr, reps * np.arange(1, n + 1))


def test_get_pool_singleton_thread_safe():
    got = []
    ts = [threading.Thread(target=lambda: got.append(tp.get_pool())) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len({id(p) for p in got}) == 1 and got[0] is tp.get_pool()


def test_workers_go_to_sleep(env):
    pool, fns = env
    arr = _counts(64)
    pool.run(fns["counter"], arr.ctypes.data, 64, 8)
    nworkers = pool.nworkers
    assert nworkers >= 7
    # after their spin budget (counted in iterations) every idle worker sleeps: counted, and
    # only bounded by the liveness limit (a loaded machine may take a while to run 7 spinners)
    asleep = lambda: pool.sleeping_workers == nworkers                   # noqa: E731
    wait_until(asleep, f"{nworkers} idle pool workers asleep")
    pool.run(fns["counter"], arr.ctypes.data, 64, 8)                     # wake them all again
    wait_until(asleep, f"{nworkers} idle pool workers asleep again")
    # and asleep means blocked: the idle process burns (almost) no CPU. Load cannot make a
    # blocked thread use CPU (it only stretches the wall time); spinning workers would burn
    # up to min(cores, workers) x wall even on a loaded machine.
    c0, w0 = time.process_time(), time.perf_counter()
    time.sleep(0.1)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert cpu < 0.5 * wall, (cpu, wall, pool.sleeping_workers, load_note())
    _check(arr // 2, 64)


def test_shutdown_and_restart(env):
    pool, fns = env
    arr = _counts(50)
    pool.run(fns["counter"], arr.ctypes.data, 50, 3)
    pool.shutdown()
    assert pool.nworkers == 0
    pool.run(fns["counter"], arr.ctypes.data, 50, 3)      # workers come back lazily
    assert pool.nworkers >= 2
    assert np.array_equal(arr[:50], 2 * np.arange(1, 51))


def test_sleep_and_wake_paths_with_zero_spin(env):
    """spin budget 0: every idle worker sleeps at once and the dispatcher sleeps on done_cond
    whenever a worker is still busy -- exercises all condition-variable hand-offs."""
    pool, fns = env
    saved = pool.spin_iters
    pool.set_spin_iters(0)
    try:
        rng = np.random.default_rng(1)
        for k in range(1500):
            n, nt = int(rng.integers(0, 40)), int(rng.integers(1, 9))
            arr = _counts(n)
            pool.run(fns["burn" if k % 5 == 0 else "counter"], arr.ctypes.data, n, nt)
            _check(arr, n)
    finally:
        pool.set_spin_iters(saved)


_EXIT_SCRIPT = """
import sys, threading, numpy as np
sys.path.insert(0, {tests!r})
import _pool_tasks as T
pool = T.tp.get_pool()
engine, fns = T.build_tasks(pool)
arr = np.zeros(64, np.int64)
pool.run(fns["burn"], arr.ctypes.data, 64, 4)
assert pool.nworkers == 3
def hammer():                       # daemon thread still dispatching while the interpreter exits
    a = np.zeros(16, np.int64)
    while True:
        pool.run(fns["counter"], a.ctypes.data, 16, 3)
threading.Thread(target=hammer, daemon=True).start()
engines, entries = T.build_program_kernels(pool)
c = np.zeros(16, np.int64)
records = np.array([(entries["counter"], c.ctypes.data, 16, 3)] * 4, np.int64)
def hammer_programs():              # and one running programs (one publish each) meanwhile
    while True:
        pool.run_program(records, 3)
threading.Thread(target=hammer_programs, daemon=True).start()
print("ok", flush=True)
"""


def test_interpreter_exit_is_clean():
    run_script(_EXIT_SCRIPT)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_gets_a_working_pool(env):
    pool, fns = env
    arr = _counts(200)
    pool.run(fns["counter"], arr.ctypes.data, 200, 4)       # parent has live workers
    run_old = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_int64)(pool.run_address)
    pid = os.fork()
    if pid == 0:                                            # child: never return into pytest
        code = 1
        try:
            a = _counts(300)
            run_old(fns["counter"], a.ctypes.data, 300, 4)  # stale pool: inline, no hang
            new = tp.get_pool()
            new.run(fns["counter"], a.ctypes.data, 300, 4)
            run_old(fns["counter"], a.ctypes.data, 300, 4)  # now forwarded to the new pool
            ok = (new is not pool and new.pid == os.getpid() and new.nworkers >= 3
                  and np.array_equal(a, 3 * np.arange(1, 301)))
            new.shutdown()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    status = wait_child(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    pool.run(fns["counter"], arr.ctypes.data, 200, 4)       # parent pool unaffected
    assert np.array_equal(arr, 2 * np.arange(1, 201))
    assert tp.get_pool() is pool
