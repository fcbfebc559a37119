"""Native tasks and launch entries shared by the thread-pool tests (test_threadpool*.py) and the
subprocess scripts they run."""
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from _liveness import LIVENESS_S, load_note

from lutc.backend import threadpool as tp
from lutc.backend.irutil import for_range, repeat_call_function
from lutc.backend.toolchain import mcjit

import llvmlite.binding as llvm
import llvmlite.ir as ir

I64 = ir.IntType(64)
PTR = ir.PointerType()
NESTED_INNER = 8          # inner tasks per outer task in the nested test


def build_tasks(pool):
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


def counts(n):
    return np.zeros(max(n, 1), dtype=np.int64)


def check(arr, n):
    assert np.array_equal(arr[:n], np.arange(1, n + 1, dtype=np.int64))


def run_script(template):
    """Run a test script (template with {tests} = this directory) in a fresh interpreter from the repo
    root; it must exit 0 and print exactly 'ok'."""
    here = pathlib.Path(__file__).resolve()
    proc = subprocess.run([sys.executable, "-c", template.format(tests=str(here.parent))], capture_output=True,
                          text=True, timeout=LIVENESS_S, cwd=str(here.parents[1]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def wait_child(pid):
    """Wait for a forked child (killed and failed after LIVENESS_S); return its wait status."""
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
    return status


def build_program_kernels(pool):
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
    engine0, fns = build_tasks(pool)
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


def chain(entries, rows, widths, threads, serial_every=3):
    """Records of a chain of rowsum launches rows[j] -> rows[j+1] (every serial_every-th one with
    1 thread), with a counter launch (1 thread) and a nested launch in between; the argument
    blocks are returned too (keep them alive)."""
    recs, blocks = [], []
    for j in range(len(rows) - 1):
        ctx = np.array([rows[j].ctypes.data, rows[j + 1].ctypes.data, widths[j]], np.int64)
        blocks.append(ctx)
        recs.append((entries["rowsum"], ctx.ctypes.data, widths[j + 1], 1 if j % serial_every == 2 else threads))
    return recs, blocks


def expected_chain(row0, widths):
    rows = [row0[:widths[0]]]
    for j in range(len(widths) - 1):
        rows.append(rows[-1][:widths[j]].sum() + np.arange(1, widths[j + 1] + 1, dtype=np.int64))
    return rows
