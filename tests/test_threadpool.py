"""Tests for the native persistent thread pool (lutc.backend.threadpool)."""
import ctypes
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from _liveness import LIVENESS_S, load_note, wait_until

from lutc.backend import threadpool as tp
from lutc.backend.irutil import for_range, repeat_call_function
from lutc.backend.toolchain import mcjit

import llvmlite.binding as llvm
import llvmlite.ir as ir

I64 = ir.IntType(64)
PTR = ir.PointerType()
NESTED_INNER = 8          # inner tasks per outer task in the nested test


def _build_tasks(pool):
    """JIT a few tasks in their own module/engine:
    counter(ctx, i): atomically ctx[i] += i + 1
    nested(ctx, i):  lutc_pool_run(counter, ctx + 8*NESTED_INNER*i, NESTED_INNER, 4)
    burn(ctx, i):    counter + ~10 us of busy work (so several threads really overlap)
    loop(task, ctx, ntasks, nthreads, reps): reps native calls of lutc_pool_run."""
    m = ir.Module(name="threadpool_test_tasks")
    m.triple = llvm.get_process_triple()
    run = tp.declare_pool_run(m)

    counter = ir.Function(m, tp.TASK_FNTY, "tp_test_counter")
    b = ir.IRBuilder(counter.append_basic_block())
    ctx, i = counter.args
    slot = b.gep(ctx, [i], inbounds=True, source_etype=I64)
    b.atomic_rmw("add", slot, b.add(i, I64(1)), "monotonic")
    b.ret_void()

    nested = ir.Function(m, tp.TASK_FNTY, "tp_test_nested")
    b = ir.IRBuilder(nested.append_basic_block())
    ctx, i = nested.args
    sub = b.gep(ctx, [b.mul(i, I64(NESTED_INNER))], inbounds=True, source_etype=I64)
    b.call(run, [tp.task_pointer(b, counter), sub, I64(NESTED_INNER), I64(4)])
    b.ret_void()

    burn = ir.Function(m, tp.TASK_FNTY, "tp_test_burn")
    entry = burn.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    ctx, i = burn.args
    b.call(counter, [ctx, i])
    for_range(b, I64(20000), lambda b, _: b.asm(ir.FunctionType(ir.VoidType(), []), "", "~{memory}", [], True),
              "burn")                    # an empty asm with a memory clobber: not foldable
    b.ret_void()

    repeat_call_function(m, "tp_test_loop", run)
    pool.register_symbol()
    engine = mcjit(m)
    addr = engine.get_function_address
    return engine, {name: addr("tp_test_" + name) for name in ("counter", "nested", "burn", "loop")}


@pytest.fixture(scope="module")
def env():
    pool = tp.get_pool()
    engine, fns = _build_tasks(pool)
    yield pool, fns
    _KEEP.append(engine)                 # never free JIT code that a worker might still reference


_KEEP = []


def _counts(n):
    return np.zeros(max(n, 1), dtype=np.int64)


def _check(arr, n):
    assert np.array_equal(arr[:n], np.arange(1, n + 1, dtype=np.int64))


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
import test_threadpool as T
pool = T.tp.get_pool()
engine, fns = T._build_tasks(pool)
arr = np.zeros(64, np.int64)
pool.run(fns["burn"], arr.ctypes.data, 64, 4)
assert pool.nworkers == 3
def hammer():                       # daemon thread still dispatching while the interpreter exits
    a = np.zeros(16, np.int64)
    while True:
        pool.run(fns["counter"], a.ctypes.data, 16, 3)
threading.Thread(target=hammer, daemon=True).start()
engines, entries = T._build_program_kernels(pool)
c = np.zeros(16, np.int64)
records = np.array([(entries["counter"], c.ctypes.data, 16, 3)] * 4, np.int64)
def hammer_programs():              # and one running programs (one publish each) meanwhile
    while True:
        pool.run_program(records, 3)
threading.Thread(target=hammer_programs, daemon=True).start()
print("ok", flush=True)
"""


def test_interpreter_exit_is_clean():
    here = pathlib.Path(__file__).resolve()
    script = _EXIT_SCRIPT.format(tests=str(here.parent))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=LIVENESS_S, cwd=str(here.parents[1]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


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
    deadline = time.monotonic() + LIVENESS_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"forked child hung ({load_note()})")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    pool.run(fns["counter"], arr.ctypes.data, 200, 4)       # parent pool unaffected
    assert np.array_equal(arr, 2 * np.arange(1, 201))
    assert tp.get_pool() is pool


# ----------------------------------------------------------------------------- program entry

def _build_program_kernels(pool):
    """JIT launch entries (the kernel ABI: launch(ctx, ntasks, nthreads) -> lutc_pool_run):
    rowsum: ctx = [src, dst, n]; task i: dst[i] = sum(src[0:n]) + i + 1, plus ~2 us of busy work.
    Each task reads every element the previous launch wrote, so a missing barrier shows.
    counter / nested: the tasks of _build_tasks behind a launch entry."""
    m = ir.Module(name="threadpool_program_tasks")
    m.triple = llvm.get_process_triple()
    run = tp.declare_pool_run(m)
    task = ir.Function(m, tp.TASK_FNTY, "tpp_rowsum_task")
    b = ir.IRBuilder(task.append_basic_block("entry"))
    ctx, i = task.args
    src, dst, n = (b.load(b.gep(ctx, [I64(k)], source_etype=I64), typ=I64) for k in range(3))
    src, dst = b.inttoptr(src, PTR), b.inttoptr(dst, PTR)
    acc = b.alloca(I64)
    b.store(b.add(i, I64(1)), acc)
    for_range(b, n, lambda b, j: b.store(b.add(b.load(acc, typ=I64), b.load(
        b.gep(src, [j], source_etype=I64), typ=I64)), acc), "sum")
    for_range(b, I64(4000), lambda b, _: b.asm(ir.FunctionType(ir.VoidType(), []), "", "~{memory}", [], True),
              "burn")
    b.store(b.load(acc, typ=I64), b.gep(dst, [i], source_etype=I64))
    b.ret_void()
    names = {"rowsum": task}
    engine0, fns = _build_tasks(pool)
    for name in ("counter", "nested"):
        names[name] = ir.Function(m, tp.TASK_FNTY, "tp_test_" + name)     # defined in engine0
    for name, t in names.items():
        launch = ir.Function(m, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]), f"tpp_{name}_launch")
        b = ir.IRBuilder(launch.append_basic_block())
        b.call(run, [tp.task_pointer(b, t), *launch.args])
        b.ret_void()
    for name in ("counter", "nested"):
        llvm.add_symbol("tp_test_" + name, fns[name])
    pool.register_symbol()
    engine = mcjit(m)
    return [engine0, engine], {name: engine.get_function_address(f"tpp_{name}_launch") for name in names}


@pytest.fixture(scope="module")
def prog_env():
    pool = tp.get_pool()
    engines, entries = _build_program_kernels(pool)
    yield pool, entries
    _KEEP.extend(engines)


def _chain(entries, rows, widths, threads, serial_every=3):
    """Records of a chain of rowsum launches rows[j] -> rows[j+1] (every serial_every-th one with
    1 thread), with a counter launch (1 thread) and a nested launch in between; the argument
    blocks are returned too (keep them alive)."""
    recs, blocks = [], []
    for j in range(len(rows) - 1):
        ctx = np.array([rows[j].ctypes.data, rows[j + 1].ctypes.data, widths[j]], np.int64)
        blocks.append(ctx)
        recs.append((entries["rowsum"], ctx.ctypes.data, widths[j + 1], 1 if j % serial_every == 2 else threads))
    return recs, blocks


def _expected_chain(row0, widths):
    rows = [row0[:widths[0]]]
    for j in range(len(widths) - 1):
        rows.append(rows[-1][:widths[j]].sum() + np.arange(1, widths[j + 1] + 1, dtype=np.int64))
    return rows


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_program_barriers_order_and_many_steps(prog_env, threads):
    """Each launch observes all writes of the previous one (rowsum reads the whole row), launches
    run in order and exactly once (counter), over many runs of the same program, for serial and
    parallel launches mixed; with 1 thread every launch dispatches itself (the old path)."""
    pool, entries = prog_env
    rng = np.random.default_rng(threads)
    widths = [int(w) for w in rng.integers(1, 70, size=24)]
    rows = [np.zeros(70, np.int64) for _ in widths]
    rows[0][:] = rng.integers(-5, 5, size=70)
    counts, nested = _counts(9), _counts(5 * NESTED_INNER)
    recs, blocks = _chain(entries, rows, widths, threads)
    recs.insert(7, (entries["counter"], counts.ctypes.data, 9, 1))
    recs.insert(12, (entries["counter"], counts.ctypes.data, 9, threads))
    recs.insert(15, (entries["nested"], nested.ctypes.data, 5, threads))      # tasks call lutc_pool_run
    records = np.array(recs, np.int64)
    want = _expected_chain(rows[0].copy(), widths)
    steps = 300
    for step in range(steps):
        for r in rows[1:]:
            r[:] = -1
        pool.run_program(records, threads)
        if step % 50 == 0 or step == steps - 1:
            for j, (got, exp) in enumerate(zip(rows, want)):
                assert np.array_equal(got[:widths[j]], exp), (step, j)
    assert np.array_equal(counts, 2 * steps * np.arange(1, 10))
    assert np.array_equal(nested.reshape(5, NESTED_INNER), steps * np.tile(np.arange(1, NESTED_INNER + 1), (5, 1)))
    del blocks


def test_program_sleep_and_wake_paths_with_zero_spin(prog_env):
    """spin budget 0: walkers park between every two phases and the caller parks at every barrier
    a walker still holds -- every condition-variable hand-off of the program protocol."""
    pool, entries = prog_env
    saved = pool.spin_iters
    pool.set_spin_iters(0)
    try:
        widths = [33, 17, 64, 5, 40, 2, 64]
        rows = [np.arange(64, dtype=np.int64) for _ in widths]
        recs, blocks = _chain(entries, rows, widths, 2, serial_every=4)
        records = np.array(recs, np.int64)
        want = _expected_chain(rows[0].copy(), widths)
        for _ in range(200):
            pool.run_program(records, 2)
        for got, exp, w in zip(rows, want, widths):
            assert np.array_equal(got[:w], exp)
    finally:
        pool.set_spin_iters(saved)


def test_program_validation_and_empty(prog_env):
    pool, entries = prog_env
    pool.run_program(np.zeros((0, 4), np.int64), 2)                 # nothing to do
    for bad in (np.zeros((2, 3), np.int64), np.zeros((2, 4), np.int32), np.zeros((4, 4), np.int64)[:, ::2].copy().T,
                [[0, 0, 0, 0]]):
        with pytest.raises(ValueError):
            pool.run_program(bad, 2)
    with pytest.raises(ValueError):
        pool.run_program(np.zeros((0, 4), np.int64), 0)


def test_program_after_shutdown(prog_env):
    pool, entries = prog_env
    counts = _counts(40)
    records = np.array([(entries["counter"], counts.ctypes.data, 40, 2)] * 3, np.int64)
    pool.run_program(records, 2)
    pool.shutdown()
    assert pool.nworkers == 0
    pool.run_program(records, 2)                                    # workers come back lazily
    assert pool.nworkers >= 1
    assert np.array_equal(counts[:40], 6 * np.arange(1, 41))


_OVERSUBSCRIBED_SCRIPT = """
import os, sys, numpy as np
sys.path.insert(0, {tests!r})
os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})    # one core for caller + 3 walkers
import test_threadpool as T
pool = T.tp.get_pool()
engines, entries = T._build_program_kernels(pool)
widths = [50, 31, 64, 7, 64, 19, 64, 3, 64]
rows = [np.arange(64, dtype=np.int64) for _ in widths]
recs, blocks = T._chain(entries, rows, widths, 4)
records = np.array(recs, np.int64)
want = T._expected_chain(rows[0].copy(), widths)
for _ in range(300):
    pool.run_program(records, 4)
assert all(np.array_equal(g[:w], e) for g, e, w in zip(rows, want, widths))
print("ok", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_program_with_descheduled_walkers():
    """4 threads on one core: walkers are descheduled mid-program all the time; no deadlock, the
    results stay right, and the process exits cleanly (walkers joined at exit)."""
    here = pathlib.Path(__file__).resolve()
    proc = subprocess.run([sys.executable, "-c", _OVERSUBSCRIBED_SCRIPT.format(tests=str(here.parent))],
                          capture_output=True, text=True, timeout=LIVENESS_S, cwd=str(here.parents[1]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_program_in_forked_child(prog_env):
    pool, entries = prog_env
    counts = _counts(30)
    records = np.array([(entries["counter"], counts.ctypes.data, 30, 3)] * 2, np.int64)
    pool.run_program(records, 3)                                    # live walkers in the parent
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            pool.run_program(records, 3)                            # stale pool: entries dispatch themselves
            new = tp.get_pool()
            new.run_program(records, 3)
            code = 0 if np.array_equal(counts[:30], 6 * np.arange(1, 31)) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + LIVENESS_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"forked child hung ({load_note()})")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_launch_program_of_dsl_kernels():
    """lutc.launcher.LaunchProgram over DSL kernels: the program entry (run) and one job per launch
    (run_per_launch) give numpy's chain of row sums, for 1-thread and 2-thread launches mixed."""
    import lutc
    import lutc.language as tl
    from lutc.launcher import LaunchProgram

    @lutc.jit
    def tpp_rowsum(src, dst, BLOCK: tl.constexpr):
        s = tl.sum(tl.load(src + tl.arange(0, BLOCK)))
        tl.store(dst + tl.program_id(0), s + tl.program_id(0).to(tl.float32) * 0.5)

    rows = [np.linspace(-1, 1, 64, dtype=np.float32)] + [np.zeros(64, np.float32) for _ in range(12)]
    steps = []
    for j in range(12):
        launch = _dsl_launch(tpp_rowsum, rows[j], rows[j + 1])
        steps.append((launch, 1 if j % 3 == 1 else 2))
    prog = LaunchProgram(steps)
    want = [rows[0]]
    for _ in range(12):
        want.append(np.float32(want[-1].astype(np.float64).sum()) + np.arange(64, dtype=np.float32) * 0.5)
    for run in (prog.run, prog.run_per_launch, prog.run):
        for r in rows[1:]:
            r[:] = np.nan
        run()
        for got, exp in zip(rows, want):
            np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)
    assert prog.nthreads == 2 and len(prog) == 12


def _dsl_launch(jitfn, src, dst):
    from lutc.ir import types as T
    ptr = T.PointerType(T.float32)
    return jitfn.compile({"src": ptr, "dst": ptr}, {"BLOCK": 64}).bind((64,), [src, dst])
