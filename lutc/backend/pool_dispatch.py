"""The caller's side of the pool as IR: waiting for a job's workers (pool_wait_idle), dispatching a
parallel job (pool_parallel), the entry point lutc_pool_run, and lutc_pool_init / _shutdown / _ctl."""
from __future__ import annotations

import llvmlite.ir as ir

from .pool_protocol import (ACTIVE_MASK, CLAIMS_PER_THREAD, CTL_CTRL, CTL_DISABLED, CTL_NWORKERS, CTL_SET_DISABLED,
                            CTL_SET_FORWARD, CTL_SET_SPIN, CTL_SLEEPERS, DISABLED_CLOSED, DISABLED_FORKED, I32, I64,
                            KEY_PROGRAM, MAX_THREADS, PTR, RUN_PTR, SEQ_SHIFT, SLOTS_MASK, SYMBOL_NAME, TASK_PTR, VOID)

__all__ = ["wait_done", "gen_wait_idle", "gen_parallel", "gen_run", "gen_init", "gen_shutdown", "gen_ctl", "helpers_for",
           "publish_job", "wake_sleepers", "close_and_wait"]


def wait_done(g, b, fn, ready, name):
    """Caller side of the done protocol: spin up to `spin_iters` until ready(order) (an i1) holds,
    then set `waiting` and sleep on done_cond under the mutex, re-checking ready before every wait
    (a worker that finishes the last task signals done_cond when `waiting` is set). Leaves the
    builder after the wait."""
    entry = b.block
    budget = g.ld(b, "spin_iters", "monotonic")
    spin, more, park, chk, wait, unpark, out = (fn.append_basic_block(f"{name}.{n}") for n in (
        "spin", "more", "park", "chk", "wait", "unpark", "out"))
    b.branch(spin)
    b.position_at_end(spin)
    i = b.phi(I64, "i")
    i.add_incoming(I64(0), entry)
    b.cbranch(ready("acquire"), out, more)
    b.position_at_end(more)
    g.pause(b)
    i1 = b.add(i, I64(1))
    i.add_incoming(i1, more)
    b.cbranch(b.icmp_signed("<", i1, budget), spin, park)
    # Slow path: announce we sleep, then re-check under the mutex before every wait.
    b.position_at_end(park)
    g.st(b, "waiting", I32(1), "seq_cst")
    g.lock(b, "mutex")
    b.branch(chk)
    b.position_at_end(chk)
    b.cbranch(ready("seq_cst"), unpark, wait)
    b.position_at_end(wait)
    g.call(b, "pthread_cond_wait", g.fld(b, "done_cond"), g.fld(b, "mutex"))
    b.branch(chk)
    b.position_at_end(unpark)
    g.unlock(b, "mutex")
    g.st(b, "waiting", I32(0), "monotonic")
    b.branch(out)
    b.position_at_end(out)


def gen_wait_idle(g):
    """Dispatcher side: wait until ctrl.active == 0 (job already closed)."""
    fn, b = g.define("pool_wait_idle", ir.FunctionType(VOID, []))
    fn.attributes.add("noinline")
    wait_done(g, b, fn, lambda order: b.icmp_unsigned(
        "==", b.and_(g.ld(b, "ctrl", order), I64(ACTIVE_MASK)), I64(0)), "idle")
    b.ret_void()


def gen_parallel(g):
    """pool_parallel(task, ctx, ntasks, nthreads): one parallel job (steps 1-6 of the protocol in
    lutc.backend.pool_protocol), under dispatch_mutex; inline if the pool was closed meanwhile or
    no worker is available."""
    fn, b = g.define("pool_parallel", ir.FunctionType(VOID, [TASK_PTR, PTR, I64, I64]),
                     argnames=("task", "ctx", "ntasks", "nthreads"))
    fn.attributes.add("noinline")
    task, ctx, ntasks, nthreads = fn.args
    g.set_in_pool(b, True)
    g.lock(b, "dispatch_mutex")
    inline_blk, go = fn.append_basic_block("inline"), fn.append_basic_block("go")
    dis = g.ld(b, "disabled", "monotonic")        # closed while we waited for the mutex?
    b.cbranch(b.icmp_unsigned("!=", dis, I32(0)), inline_blk, go)

    b.position_at_end(go)
    n = helpers_for(g, b, ntasks, nthreads)
    par = fn.append_basic_block("par")
    b.cbranch(b.icmp_signed(">", n, I64(0)), par, inline_blk)

    b.position_at_end(par)
    chunk = publish_job(g, b, task, ctx, ntasks, n)
    wake_sleepers(g, b, n)
    g.claim_loop(b, task, ctx, ntasks, chunk)
    close_and_wait(g, b)
    g.unlock(b, "dispatch_mutex")
    g.set_in_pool(b, False)
    b.ret_void()

    b.position_at_end(inline_blk)
    g.unlock(b, "dispatch_mutex")
    g.serial_loop(b, task, ctx, ntasks)           # key still set: nested calls stay inline
    g.set_in_pool(b, False)
    b.ret_void()


def helpers_for(g, b, ntasks, nthreads):
    """How many workers join the job: min(nthreads, ntasks, MAX_THREADS) - 1, spawning workers
    up to that first; fewer if spawning failed."""
    m = b.select(b.icmp_signed("<", nthreads, ntasks), nthreads, ntasks)
    m = b.select(b.icmp_signed("<", m, I64(MAX_THREADS)), m, I64(MAX_THREADS))
    want = b.sub(m, I64(1))
    nw = g.ld(b, "nworkers", "monotonic")
    with b.if_then(b.icmp_signed("<", nw, want), likely=False):
        b.call(g.m.globals["pool_spawn"], [want])
    nw = g.ld(b, "nworkers", "monotonic")
    return b.select(b.icmp_signed("<", want, nw), want, nw)


def publish_job(g, b, task, ctx, ntasks, n):
    """Steps 1-2: write the job, then publish ctrl = (seq + 1, n slots, 0 active). Returns the chunk."""
    g.st(b, "task", task)
    g.st(b, "ctx", ctx)
    g.st(b, "ntasks", ntasks)
    # runs of ntasks / (CLAIMS_PER_THREAD * threads) tasks (at least 1): few contended
    # atomics, and still enough runs per thread to balance uneven tasks and late joiners
    chunk = b.sdiv(ntasks, b.mul(b.add(n, I64(1)), I64(CLAIMS_PER_THREAD)))
    chunk = b.select(b.icmp_signed(">", chunk, I64(1)), chunk, I64(1))
    g.st(b, "chunk", chunk)
    g.st(b, "next", I64(0), "monotonic")
    old = g.ld(b, "ctrl", "monotonic")            # only the dispatcher changes seq
    seq1 = b.add(b.lshr(old, I64(SEQ_SHIFT)), I64(1))
    word = b.or_(b.shl(seq1, I64(SEQ_SHIFT)), b.shl(n, I64(16)))
    g.st(b, "ctrl", word, "seq_cst")              # publish (release) + Dekker vs sleepers
    return chunk


def wake_sleepers(g, b, n):
    """Step 3: only if a worker sleeps (seq_cst load), wake at most n of them under mutex."""
    sleepers = g.ld(b, "sleepers", "seq_cst")
    with b.if_then(b.icmp_unsigned("!=", sleepers, I64(0)), likely=False):
        # Wake at most n sleepers: broadcast if that is all of them, else signal n times
        # (waking workers that cannot join would only make them spin for nothing).
        g.lock(b, "mutex")
        s = g.ld(b, "sleepers", "monotonic")          # exact: changed only under mutex
        with b.if_else(b.icmp_signed("<=", s, n)) as (all_, some):
            with all_:
                g.call(b, "pthread_cond_broadcast", g.fld(b, "wake_cond"))
            with some:
                g.for_range(b, n, lambda b, k: g.call(
                    b, "pthread_cond_signal", g.fld(b, "wake_cond")), "signal")
        g.unlock(b, "mutex")


def close_and_wait(g, b):
    """Steps 5-6: close the job (no further joins), then wait for the workers in it to leave."""
    # acq_rel: acquire pairs with the leaves already done.
    closed = b.atomic_rmw("and", g.fld(b, "ctrl"), I64(~SLOTS_MASK), "acq_rel")
    with b.if_then(b.icmp_unsigned("!=", b.and_(closed, I64(ACTIVE_MASK)), I64(0))):
        b.call(g.m.globals["pool_wait_idle"], [])


def gen_run(g):
    fn, b = g.define(SYMBOL_NAME, ir.FunctionType(VOID, [TASK_PTR, PTR, I64, I64]),
                     internal=False, argnames=("task", "ctx", "ntasks", "nthreads"))
    task, ctx, ntasks, nthreads = fn.args
    inline_blk, chk, chk2, par, disabled, fwd_blk = (fn.append_basic_block(n) for n in (
        "inline", "chk", "chk2", "par", "disabled", "forward"))
    trivial = b.or_(b.icmp_signed("<=", ntasks, I64(1)), b.icmp_signed("<=", nthreads, I64(1)))
    b.cbranch(trivial, inline_blk, chk)
    b.position_at_end(chk)
    dis = g.ld(b, "disabled", "monotonic")
    b.cbranch(b.icmp_unsigned("!=", dis, I32(0)), disabled, chk2)
    b.position_at_end(chk2)
    nested = g.call(b, "pthread_getspecific", g.key(b))
    chk3, phase = fn.append_basic_block("chk3"), fn.append_basic_block("phase")
    b.cbranch(b.icmp_unsigned("!=", nested, PTR(None)), chk3, par)
    b.position_at_end(chk3)                  # inside the pool: a program's caller, or a task
    b.cbranch(b.icmp_unsigned("==", b.ptrtoint(nested, I64), I64(KEY_PROGRAM)), phase, inline_blk)
    b.position_at_end(phase)
    b.call(g.m.globals["pool_phase"], [task, ctx, ntasks])
    b.ret_void()
    b.position_at_end(par)
    b.call(g.m.globals["pool_parallel"], [task, ctx, ntasks, nthreads])
    b.ret_void()
    b.position_at_end(disabled)
    fwd = g.ld(b, "forward", "monotonic", ty=RUN_PTR)
    b.cbranch(b.icmp_unsigned("!=", fwd, PTR(None)), fwd_blk, inline_blk)
    b.position_at_end(fwd_blk)
    b.call(fwd, [task, ctx, ntasks, nthreads])
    b.ret_void()
    b.position_at_end(inline_blk)
    g.serial_loop(b, task, ctx, ntasks)
    b.ret_void()


def gen_init(g):
    """i32 lutc_pool_init(i64 spin_iters): init mutexes, conds and the key, once."""
    fn, b = g.define("lutc_pool_init", ir.FunctionType(I32, [I64]), internal=False,
                     argnames=("spin_iters",))
    with b.if_then(b.icmp_unsigned("!=", g.ld(b, "inited"), I32(0))):
        b.ret(I32(0))
    rc = g.call(b, "pthread_mutex_init", g.fld(b, "dispatch_mutex"), PTR(None))
    for name, args in (("pthread_mutex_init", ("mutex",)), ("pthread_cond_init", ("wake_cond",)),
                       ("pthread_cond_init", ("done_cond",)), ("pthread_key_create", ("key",))):
        rc = b.or_(rc, g.call(b, name, g.fld(b, args[0]), PTR(None)))
    g.st(b, "spin_iters", fn.args[0], "monotonic")
    g.st(b, "inited", I32(1))
    with b.if_then(b.icmp_unsigned("!=", rc, I32(0)), likely=False):
        g.st(b, "disabled", I32(DISABLED_CLOSED), "seq_cst")   # run everything inline
    b.ret(rc)


def gen_shutdown(g):
    """void lutc_pool_shutdown(i32 final): stop and join all workers (final: stay inline after)."""
    fn, b = g.define("lutc_pool_shutdown", ir.FunctionType(VOID, [I32]), internal=False,
                     argnames=("final",))
    with b.if_then(b.icmp_unsigned("==", g.ld(b, "inited"), I32(0))):
        b.ret_void()
    # A forked child has no workers and possibly a mutex locked by a thread that is gone.
    with b.if_then(b.icmp_unsigned("==", g.ld(b, "disabled", "monotonic"), I32(DISABLED_FORKED))):
        b.ret_void()
    nested = g.call(b, "pthread_getspecific", g.key(b))
    with b.if_then(b.icmp_unsigned("!=", nested, PTR(None))):
        b.ret_void()                     # from inside a task: would deadlock, refuse
    g.lock(b, "dispatch_mutex")       # no job is in flight while we hold it
    with b.if_then(b.icmp_unsigned("!=", fn.args[0], I32(0))):
        g.st(b, "disabled", I32(DISABLED_CLOSED), "seq_cst")
    g.st(b, "stop", I32(1), "seq_cst")
    g.lock(b, "mutex")
    g.call(b, "pthread_cond_broadcast", g.fld(b, "wake_cond"))
    g.unlock(b, "mutex")
    g.for_range(b, g.ld(b, "nworkers", "monotonic"), lambda b, i: g.call(
        b, "pthread_join", b.load(g.fld(b, "threads", i), typ=g.thread_ty), PTR(None)),
        "join")
    g.st(b, "nworkers", I64(0), "monotonic")
    g.st(b, "stop", I32(0), "seq_cst")
    g.unlock(b, "dispatch_mutex")
    b.ret_void()


def gen_ctl(g):
    """i64 lutc_pool_ctl(i32 op, i64 value): small queries and setters for Python."""
    fn, b = g.define("lutc_pool_ctl", ir.FunctionType(I64, [I32, I64]), internal=False,
                     argnames=("op", "value"))
    op, value = fn.args
    default = fn.append_basic_block("default")
    sw = b.switch(op, default)
    getters = {CTL_NWORKERS: "nworkers", CTL_SLEEPERS: "sleepers", CTL_CTRL: "ctrl",
               CTL_DISABLED: "disabled"}
    setters = {CTL_SET_SPIN: "spin_iters", CTL_SET_DISABLED: "disabled", CTL_SET_FORWARD: "forward"}
    for code, name in (*getters.items(), *setters.items()):
        blk = fn.append_basic_block(f"op{code}")
        sw.add_case(I32(code), blk)
        b.position_at_end(blk)
        ty = g.fields[name][2]
        if code in setters:
            v = b.inttoptr(value, ty) if isinstance(ty, ir.PointerType) else (
                b.trunc(value, ty) if ty != I64 else value)
            g.st(b, name, v, "seq_cst")
            b.ret(value)
        else:
            v = g.ld(b, name, "seq_cst")
            b.ret(b.zext(v, I64) if ty != I64 else v)
    b.position_at_end(default)
    b.ret(I64(-1))
