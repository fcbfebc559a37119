"""The worker threads' side of the pool as IR: the spin calibration loop, running a joined job
(pool_work), the worker thread itself (pool_worker: spin, join, sleep) and spawning workers."""
from __future__ import annotations

import llvmlite.ir as ir

from .irutil import PtrTo
from .pool_protocol import ACTIVE_MASK, I32, I64, PTR, SEQ_SHIFT, SLOT_ONE, SLOTS_MASK, TASK_PTR, VOID, WORKER_FNTY

__all__ = ["gen_spin_calibrate", "gen_work", "gen_worker", "gen_spawn"]


def gen_spin_calibrate(g):
    """lutc_pool_spin(n): n iterations of the idle spin loop body (to calibrate spin_iters)."""
    fn, b = g.define("lutc_pool_spin", ir.FunctionType(VOID, [I64]), internal=False,
                     argnames=("n",))

    def body(b, i):
        g.ld(b, "stop", "monotonic")
        g.ld(b, "ctrl", "monotonic")
        g.pause(b)
    g.for_range(b, fn.args[0], body, "spin")
    b.ret_void()


def gen_work(g):
    """Worker side, after a successful join: run claimed tasks, then leave."""
    fn, b = g.define("pool_work", ir.FunctionType(VOID, []))
    task = g.ld(b, "task", ty=TASK_PTR)      # plain loads: ordered by the join's acquire
    ctx = g.ld(b, "ctx")
    ntasks = g.ld(b, "ntasks")
    chunk = g.ld(b, "chunk")
    g.claim_loop(b, task, ctx, ntasks, chunk)
    # Leave.  Last touch of job state; seq_cst = release for the dispatcher + Dekker vs waiting.
    old = b.atomic_rmw("sub", g.fld(b, "ctrl"), I64(1), "seq_cst", name="old")
    last = b.icmp_unsigned("==", b.and_(old, I64(ACTIVE_MASK)), I64(1))
    with b.if_then(last, likely=False):
        waiting = g.ld(b, "waiting", "seq_cst")
        with b.if_then(b.icmp_unsigned("!=", waiting, I32(0)), likely=False):
            g.lock(b, "mutex")
            g.call(b, "pthread_cond_broadcast", g.fld(b, "done_cond"))
            g.unlock(b, "mutex")
    b.ret_void()


class _Worker:
    """pool_worker under construction: its function and builder, the `last` slot, the spin
    counter `i` and budget, the ctrl word and seq polled, and the blocks (w.spin_new is 'spin.new')."""

    _BLOCKS = ("outer", "spin", "spin.new", "spin.join", "spin.skip", "spin.next", "spin.pause", "sleep", "exit")

    def __init__(self, g):
        self.fn, self.b = g.define("pool_worker", WORKER_FNTY, argnames=("arg",))
        self.last = self.i = self.budget = self.ctrl = self.seq = None

    def add_blocks(self):
        for name in self._BLOCKS:
            setattr(self, name.replace(".", "_"), self.fn.append_basic_block(name))


def gen_worker(g):
    """void *pool_worker(void *arg): arg = generation current at creation.

    Phases: entry; spin (poll ctrl for a new job within a budget of spin_iters polls), join (one
    slot by cmpxchg, then run the job with pool_work), sleep (on wake_cond, under mutex) and exit."""
    w = _Worker(g)
    _worker_entry(g, w)
    _worker_spin(g, w)
    _worker_join(g, w)
    _worker_spin_next(g, w)
    _worker_sleep(g, w)
    _worker_exit(g, w)


def _poll(g, w, order, stop_to, chk_name, new, seen, hop=None):
    """At w.b: go to `stop_to` if `stop` is set (through a block `hop` that only branches there, if
    named); else load ctrl and go to `new` if its seq is one this worker has not dealt with yet,
    else to `seen`. Both loads use `order`. Returns (ctrl word, seq)."""
    b, fn = w.b, w.fn
    stop = g.ld(b, "stop", order)
    on_stop = fn.append_basic_block(hop) if hop else stop_to
    chk = fn.append_basic_block(chk_name)
    b.cbranch(b.icmp_unsigned("!=", stop, I32(0)), on_stop, chk)
    if hop:
        b.position_at_end(on_stop)
        b.branch(stop_to)
    b.position_at_end(chk)
    ctrl = g.ld(b, "ctrl", order)
    seq = b.lshr(ctrl, I64(SEQ_SHIFT))
    b.cbranch(b.icmp_unsigned("!=", seq, b.load(w.last, typ=I64)), new, seen)
    return ctrl, seq


def _has_slots(b, ctrl):
    return b.icmp_unsigned("!=", b.and_(ctrl, I64(SLOTS_MASK)), I64(0))


def _worker_entry(g, w):
    """Entry: `last` (the last generation this worker has dealt with, joined or skipped) = arg;
    mark the thread as inside the pool; create the spin phase's blocks."""
    b, fn = w.b, w.fn
    w.last = b.alloca(I64, name="last")
    w.last.type = PtrTo(I64)        # keep the printed IR opaque (`ptr`)
    b.store(b.ptrtoint(fn.args[0], I64), w.last)
    g.set_in_pool(b, True)
    w.add_blocks()
    b.branch(w.outer)


def _worker_spin(g, w):
    """outer: (re)start a spin phase with a fresh budget; spin: poll for a new job (monotonic)."""
    b = w.b
    b.position_at_end(w.outer)
    w.budget = g.ld(b, "spin_iters", "monotonic")
    b.branch(w.spin)

    b.position_at_end(w.spin)
    w.i = b.phi(I64, "i")
    w.i.add_incoming(I64(0), w.outer)
    w.ctrl, w.seq = _poll(g, w, "monotonic", w.exit, "spin.chk", w.spin_new, w.spin_next, hop="spin.stop")

    b.position_at_end(w.spin_new)
    b.cbranch(_has_slots(b, w.ctrl), w.spin_join, w.spin_skip)


def _worker_join(g, w):
    """Join: take one slot and become active, only if ctrl is still exactly the word polled; then
    run the job (pool_work) and start over. A closed or full job is remembered as seen."""
    b, ctrl = w.b, w.ctrl
    b.position_at_end(w.spin_join)
    desired = b.add(b.sub(ctrl, I64(SLOT_ONE)), I64(1))
    res = b.cmpxchg(g.fld(b, "ctrl"), ctrl, desired, "acquire", "monotonic")
    ok = b.extract_value(res, 1)
    joined = w.fn.append_basic_block("spin.joined")
    b.cbranch(ok, joined, w.spin)          # lost the race: re-read ctrl (same i, still bounded)
    w.i.add_incoming(w.i, w.spin_join)
    b.position_at_end(joined)
    b.store(w.seq, w.last)
    b.call(g.m.globals["pool_work"], [])
    b.branch(w.outer)

    # Closed or full job we did not join: remember it as seen, keep spinning.
    b.position_at_end(w.spin_skip)
    b.store(w.seq, w.last)
    b.branch(w.spin_next)


def _worker_spin_next(g, w):
    """Count the poll; pause and poll again within the budget, else go to sleep."""
    b = w.b
    b.position_at_end(w.spin_next)
    i1 = b.add(w.i, I64(1))
    b.cbranch(b.icmp_signed("<", i1, w.budget), w.spin_pause, w.sleep)
    b.position_at_end(w.spin_pause)
    g.pause(b)
    w.i.add_incoming(i1, w.spin_pause)
    b.branch(w.spin)


def _worker_sleep(g, w):
    """Sleep: sleepers += 1 under mutex, then wait on wake_cond until stop or a joinable new job
    (ctrl and stop loaded seq_cst: the Dekker pairing with the dispatcher's wake-up)."""
    b, fn = w.b, w.fn
    b.position_at_end(w.sleep)
    g.lock(b, "mutex")
    b.atomic_rmw("add", g.fld(b, "sleepers"), I64(1), "seq_cst")
    wchk, wwait, wake, wstop, wnew = (fn.append_basic_block(n) for n in (
        "sleep.chk", "sleep.wait", "sleep.wake", "sleep.stop", "sleep.new"))
    b.branch(wchk)
    b.position_at_end(wchk)
    ctrl, seq = _poll(g, w, "seq_cst", wstop, "sleep.chk2", wnew, wwait)
    b.position_at_end(wnew)
    wseen = fn.append_basic_block("sleep.seen")
    b.cbranch(_has_slots(b, ctrl), wake, wseen)
    b.position_at_end(wseen)
    b.store(seq, w.last)                 # closed job: nothing to do, go back to sleep
    b.branch(wwait)
    b.position_at_end(wwait)
    g.call(b, "pthread_cond_wait", g.fld(b, "wake_cond"), g.fld(b, "mutex"))
    b.branch(wchk)
    b.position_at_end(wake)
    b.atomic_rmw("sub", g.fld(b, "sleepers"), I64(1), "seq_cst")
    g.unlock(b, "mutex")
    # Try to join from the spin phase, but with an exhausted budget: a worker that was woken
    # and finds the job full/closed goes straight back to sleep instead of spinning for
    # nothing; one that joins restarts from `outer` with a fresh budget.
    w.i.add_incoming(w.budget, wake)
    b.branch(w.spin)
    b.position_at_end(wstop)
    b.atomic_rmw("sub", g.fld(b, "sleepers"), I64(1), "seq_cst")
    g.unlock(b, "mutex")
    b.branch(w.exit)


def _worker_exit(g, w):
    """Exit: return NULL; publish the start routine for pthread_create as a value, keeping the IR
    opaque-pointer clean (pool_worker.addr)."""
    w.b.position_at_end(w.exit)
    w.b.ret(PTR(None))
    gv = ir.GlobalVariable(g.m, PTR, "pool_worker.addr")
    gv.linkage = "internal"
    gv.global_constant = True
    gv.initializer = w.fn
    g.worker_addr = gv


def gen_spawn(g):
    """pool_spawn(want): create workers until nworkers == want (dispatch_mutex held)."""
    fn, b = g.define("pool_spawn", ir.FunctionType(VOID, [I64]), argnames=("want",))
    fn.attributes.add("noinline")
    want = fn.args[0]
    entry = b.block
    head, body, ok_blk, done = (fn.append_basic_block(n) for n in ("head", "body", "ok", "done"))
    nw0 = g.ld(b, "nworkers", "monotonic")
    b.branch(head)
    b.position_at_end(head)
    nw = b.phi(I64, "nw")
    nw.add_incoming(nw0, entry)
    b.cbranch(b.icmp_signed("<", nw, want), body, done)
    b.position_at_end(body)
    seq = b.lshr(g.ld(b, "ctrl", "monotonic"), I64(SEQ_SHIFT))
    start = b.load(g.worker_addr, typ=PTR)
    rc = g.call(b, "pthread_create", g.fld(b, "threads", nw), PTR(None), start,
                b.inttoptr(seq, PTR))
    b.cbranch(b.icmp_unsigned("==", rc, I32(0)), ok_blk, done)   # failure: keep what we have
    b.position_at_end(ok_blk)
    nw1 = b.add(nw, I64(1))
    g.st(b, "nworkers", nw1, "monotonic")
    nw.add_incoming(nw1, ok_blk)
    b.branch(head)
    b.position_at_end(done)
    b.ret_void()
