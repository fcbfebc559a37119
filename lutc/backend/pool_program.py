"""The pool's program entry as IR: a whole list of launches (a `LaunchProgram`) run with one
publish, the workers walking its parallel launches with a barrier between them.

    void lutc_pool_program(i64 *records, i64 n, i64 nthreads)

records: rows of lutc.backend.launch_abi.RECORD_FIELDS (entry, ctx, ntasks, nthreads). The
protocol ("Programs") is stated in lutc.backend.pool_protocol; this module implements it:
pool_program (the entry: one job whose task is prog_walk, then each record's entry called by
the caller), pool_phase (the caller's side of one parallel launch: publish, claim, barrier),
prog_walk (a worker's side: wait for a phase, claim, repeat until the end mark) and
prog_claims (the claim loop both share)."""
from __future__ import annotations

import llvmlite.ir as ir

from .launch_abi import LAUNCH_FNTY, RECORD_FIELDS
from .irutil import PtrTo
from .pool_dispatch import close_and_wait, helpers_for, publish_job, wait_done, wake_sleepers
from .pool_protocol import (CLAIMS_PER_THREAD, I32, I64, KEY_PROGRAM, KEY_TASKS, PHASE_END, PHASE_INDEX_MASK, PTR,
                            SEQ_SHIFT, TASK_PTR, VOID, task_pointer)

__all__ = ["gen_claims", "gen_walk", "gen_phase", "gen_program", "PROGRAM_SYMBOL"]

PROGRAM_SYMBOL = "lutc_pool_program"
PROGRAM_FNTY = ir.FunctionType(VOID, [PTR, I64, I64])


def _phase_of(b, w):
    return b.lshr(w, I64(SEQ_SHIFT))


def gen_claims(g):
    """prog_claims(q): claim and run runs of phase q's tasks until none is left or the phase
    moved on. A claim is a cmpxchg on pnext = q << 32 | next index, so a thread that read a
    phase's fields late can never claim (or skip) a task of another phase; its fields are read
    after an acquire load of pnext that showed q with tasks left, and stay q's until those are
    claimed and done. Each run's completion is added to pdone (seq_cst: release for the
    barrier, Dekker against `waiting`); the run that completes the phase wakes a parked caller."""
    fn, b = g.define("prog_claims", ir.FunctionType(VOID, [I64]), argnames=("q",))
    fn.attributes.add("noinline")
    q, = fn.args
    head, load, go, run, out = (fn.append_basic_block(n) for n in ("head", "load", "go", "run", "out"))
    b.branch(head)
    b.position_at_end(head)
    w = g.ld(b, "pnext", "acquire")
    b.cbranch(b.icmp_unsigned("==", _phase_of(b, w), q), load, out)
    b.position_at_end(load)
    task = g.ld(b, "ptask", "monotonic", ty=TASK_PTR)
    ctx = g.ld(b, "pctx", "monotonic")
    ntasks = g.ld(b, "pntasks", "monotonic")
    chunk = g.ld(b, "pchunk", "monotonic")
    i0 = b.and_(w, I64(PHASE_INDEX_MASK))
    b.cbranch(b.icmp_signed("<", i0, ntasks), go, out)
    b.position_at_end(go)
    end = b.add(i0, chunk)
    end = b.select(b.icmp_signed("<", end, ntasks), end, ntasks)
    new = b.or_(b.and_(w, I64(~PHASE_INDEX_MASK)), end)
    res = b.cmpxchg(g.fld(b, "pnext"), w, new, "acquire", "monotonic")
    b.cbranch(b.extract_value(res, 1), run, head)
    b.position_at_end(run)
    g.for_range(b, b.sub(end, i0), lambda b, k: b.call(task, [ctx, b.add(i0, k)]), "run")
    cnt = b.sub(end, i0)
    old = b.atomic_rmw("add", g.fld(b, "pdone"), cnt, "seq_cst")
    with b.if_then(b.icmp_unsigned("==", b.add(old, cnt), ntasks), likely=False):
        waiting = g.ld(b, "waiting", "seq_cst")
        with b.if_then(b.icmp_unsigned("!=", waiting, I32(0)), likely=False):
            g.lock(b, "mutex")
            g.call(b, "pthread_cond_broadcast", g.fld(b, "done_cond"))
            g.unlock(b, "mutex")
    b.branch(head)
    b.position_at_end(out)
    b.ret_void()


def gen_walk(g):
    """prog_walk(ctx, i): the task every helper of a program job runs. Wait for a phase other
    than the last one seen (spin on pnext for spin_iters polls, then park on wake_cond with
    sleepers counted, re-checking pnext seq_cst under mutex), claim in it, repeat; return at
    the end mark. A walker joining late starts at the current phase; one that runs again after
    the end (a second claimed index) returns at once."""
    fn, b = g.define("prog_walk", ir.FunctionType(VOID, [PTR, I64]), argnames=("ctx", "i"))
    entry = b.block
    wait, spin, spin_more, park, park_chk, park_wait, park_out, got, work, done = (
        fn.append_basic_block(n) for n in ("wait", "spin", "spin.more", "park", "park.chk", "park.wait",
                                            "park.out", "got", "work", "done"))
    budget = g.ld(b, "spin_iters", "monotonic")
    b.branch(wait)
    b.position_at_end(wait)
    seen = b.phi(I64, "seen")
    seen.add_incoming(I64(0), entry)
    b.branch(spin)

    b.position_at_end(spin)
    i = b.phi(I64, "i")
    i.add_incoming(I64(0), wait)
    q_spin = _phase_of(b, g.ld(b, "pnext", "monotonic"))
    b.cbranch(b.icmp_unsigned("!=", q_spin, seen), got, spin_more)
    b.position_at_end(spin_more)
    g.pause(b)
    i1 = b.add(i, I64(1))
    i.add_incoming(i1, spin_more)
    b.cbranch(b.icmp_signed("<", i1, budget), spin, park)

    b.position_at_end(park)
    g.lock(b, "mutex")
    b.atomic_rmw("add", g.fld(b, "sleepers"), I64(1), "seq_cst")
    b.branch(park_chk)
    b.position_at_end(park_chk)
    q_park = _phase_of(b, g.ld(b, "pnext", "seq_cst"))
    b.cbranch(b.icmp_unsigned("!=", q_park, seen), park_out, park_wait)
    b.position_at_end(park_wait)
    g.call(b, "pthread_cond_wait", g.fld(b, "wake_cond"), g.fld(b, "mutex"))
    b.branch(park_chk)
    b.position_at_end(park_out)
    b.atomic_rmw("sub", g.fld(b, "sleepers"), I64(1), "seq_cst")
    g.unlock(b, "mutex")
    b.branch(got)

    b.position_at_end(got)
    q = b.phi(I64, "q")
    q.add_incoming(q_spin, spin)
    q.add_incoming(q_park, park_out)
    b.cbranch(b.icmp_unsigned("==", q, I64(PHASE_END)), done, work)
    b.position_at_end(work)
    b.call(g.m.globals["prog_claims"], [q])
    seen.add_incoming(q, work)
    b.branch(wait)
    b.position_at_end(done)
    b.ret_void()


def gen_phase(g):
    """pool_phase(task, ctx, ntasks): the caller's side of one parallel launch inside a program
    (lutc_pool_run on the program's caller outside any task): write the phase, publish
    pnext = q << 32 (seq_cst), wake parked walkers, claim with them, then the barrier: wait until
    pdone == ntasks (spin on acquire loads for spin_iters polls, then park on done_cond with
    `waiting` set, as pool_wait_idle does)."""
    fn, b = g.define("pool_phase", ir.FunctionType(VOID, [TASK_PTR, PTR, I64]), argnames=("task", "ctx", "ntasks"))
    fn.attributes.add("noinline")
    task, ctx, ntasks = fn.args
    serial, go = fn.append_basic_block("serial"), fn.append_basic_block("go")
    q = b.add(g.ld(b, "pphase"), I64(1))
    too_big = b.or_(b.icmp_signed(">", ntasks, I64(PHASE_INDEX_MASK >> 1)),
                    b.icmp_unsigned(">=", q, I64(PHASE_END)))
    b.cbranch(too_big, serial, go)            # cannot be encoded in pnext: run it here

    b.position_at_end(go)
    g.st(b, "pphase", q)
    g.st(b, "ptask", task, "monotonic")
    g.st(b, "pctx", ctx, "monotonic")
    g.st(b, "pntasks", ntasks, "monotonic")
    parts = b.add(g.ld(b, "phelpers"), I64(1))
    chunk = b.sdiv(ntasks, b.mul(parts, I64(CLAIMS_PER_THREAD)))
    g.st(b, "pchunk", b.select(b.icmp_signed(">", chunk, I64(1)), chunk, I64(1)), "monotonic")
    g.st(b, "pdone", I64(0), "monotonic")
    g.st(b, "pnext", b.shl(q, I64(SEQ_SHIFT)), "seq_cst")     # publish (release) + Dekker vs sleepers
    _wake_all(g, b)
    g.set_key(b, KEY_TASKS)                   # tasks that call lutc_pool_run run it inline
    b.call(g.m.globals["prog_claims"], [q])
    g.set_key(b, KEY_PROGRAM)
    _barrier(g, b, fn, ntasks)
    b.ret_void()

    b.position_at_end(serial)
    g.set_key(b, KEY_TASKS)
    g.serial_loop(b, task, ctx, ntasks)
    g.set_key(b, KEY_PROGRAM)
    b.ret_void()


def _wake_all(g, b):
    """Wake parked walkers (only if a worker sleeps: seq_cst load, Dekker against the park)."""
    sleepers = g.ld(b, "sleepers", "seq_cst")
    with b.if_then(b.icmp_unsigned("!=", sleepers, I64(0)), likely=False):
        g.lock(b, "mutex")
        g.call(b, "pthread_cond_broadcast", g.fld(b, "wake_cond"))
        g.unlock(b, "mutex")


def _barrier(g, b, fn, ntasks):
    """Wait until pdone == ntasks: every claimed run of the phase has finished (acquire)."""
    wait_done(g, b, fn, lambda order: b.icmp_signed(">=", g.ld(b, "pdone", order), ntasks), "bar")


def _call_records(g, b, recs, n):
    """for each record: entry(ctx, ntasks, nthreads)."""
    width = len(RECORD_FIELDS)

    def call(b, i):
        base = b.mul(i, I64(width))
        f, ctx, ntasks, threads = (b.load(b.gep(recs, [b.add(base, I64(k))], source_etype=I64), typ=I64)
                                   for k in range(width))
        b.call(b.inttoptr(f, PtrTo(LAUNCH_FNTY)), [b.inttoptr(ctx, PTR), ntasks, threads])
    g.for_range(b, n, call, "record")


def gen_program(g):
    """lutc_pool_program(records, n, nthreads): one program job with up to nthreads - 1 helpers
    walking it, the records' entries called in order by this thread (parallel ones become
    phases, serial ones run here while the helpers wait), then the end mark, close and wait.
    Runs the entries one by one instead (each dispatching itself) when nthreads <= 1, when
    called from inside the pool, when the pool is closed or forked, or when no worker exists."""
    fn, b = g.define(PROGRAM_SYMBOL, PROGRAM_FNTY, internal=False, argnames=("records", "n", "nthreads"))
    recs, n, nthreads = fn.args
    plain, chk, locked, go, par, unlock_plain = (fn.append_basic_block(x) for x in (
        "plain", "chk", "locked", "go", "par", "unlock.plain"))
    b.cbranch(b.icmp_signed("<=", nthreads, I64(1)), plain, chk)
    b.position_at_end(chk)
    nested = g.call(b, "pthread_getspecific", g.key(b))
    dis = g.ld(b, "disabled", "monotonic")
    busy = b.or_(b.icmp_unsigned("!=", nested, PTR(None)), b.icmp_unsigned("!=", dis, I32(0)))
    b.cbranch(busy, plain, locked)

    b.position_at_end(locked)
    g.set_key(b, KEY_TASKS)
    g.lock(b, "dispatch_mutex")
    dis = g.ld(b, "disabled", "monotonic")        # closed while we waited for the mutex?
    b.cbranch(b.icmp_unsigned("!=", dis, I32(0)), unlock_plain, go)
    b.position_at_end(go)
    helpers = helpers_for(g, b, I64(1 << 30), nthreads)
    b.cbranch(b.icmp_signed(">", helpers, I64(0)), par, unlock_plain)

    b.position_at_end(par)
    g.st(b, "phelpers", helpers)
    g.st(b, "pphase", I64(0))
    g.st(b, "pnext", I64(0), "monotonic")         # published by the job's ctrl store below
    walk = task_pointer(b, g.m.globals["prog_walk"])
    publish_job(g, b, walk, PTR(None), helpers, helpers)
    wake_sleepers(g, b, helpers)
    g.set_key(b, KEY_PROGRAM)
    _call_records(g, b, recs, n)
    g.set_key(b, KEY_TASKS)
    g.st(b, "pnext", I64(PHASE_END << SEQ_SHIFT), "seq_cst")
    _wake_all(g, b)
    close_and_wait(g, b)
    g.unlock(b, "dispatch_mutex")
    g.set_key(b, None)
    b.ret_void()

    b.position_at_end(unlock_plain)
    g.unlock(b, "dispatch_mutex")
    g.set_key(b, None)
    b.branch(plain)
    b.position_at_end(plain)
    _call_records(g, b, recs, n)
    b.ret_void()
