"""The native thread pool's code: ``lutc_pool_run`` and its helpers as an llvmlite IR module.

The protocol (below) and its IR live here; loading it into a process (MCJIT, pthread symbols,
fork and exit handling) is lutc.backend.threadpool."""
from __future__ import annotations

import llvmlite.ir as ir

from .irutil import for_range
from .toolchain import host_cpu, parse_triple

__all__ = ["build_pool_module", "declare_pool_run", "task_pointer", "TASK_FNTY", "RUN_FNTY",
           "SYMBOL_NAME", "MAX_THREADS"]

SYMBOL_NAME = "lutc_pool_run"
MAX_THREADS = 256                 # caller + at most 255 workers (fits the 16-bit ctrl fields)
CLAIMS_PER_THREAD = 2            # runs per thread in a parallel job (2 beat 1, 4, 8, 16 on SmolLM2 decode)

# ---------------------------------------------------------------------------------------------
# Protocol (all state lives in one internal global struct, hot words on their own cache lines)
#
#   ctrl (i64) = seq << 32 | slots << 16 | active
#     seq    : job generation, bumped by the dispatcher for each parallel job
#     slots  : how many more workers may still join this job (0 = closed or full)
#     active : workers that joined this job and have not left it yet
#
#   Dispatch (caller thread, holding dispatch_mutex so calls from several OS threads serialize):
#     1. write task/ctx/ntasks/chunk and next=0 (plain/monotonic stores),
#     2. publish ctrl = (seq+1, n, 0) with a seq_cst store (its release half publishes step 1),
#     3. load sleepers (seq_cst); only if nonzero: lock mutex, wake up to n of them (broadcast
#        or n signals on wake_cond), unlock -- the hot path makes no syscall,
#     4. claim runs of tasks itself: i0 = atomicrmw add next chunk (monotonic), run tasks
#        i0 .. min(i0 + chunk, ntasks) - 1, until i0 >= ntasks (workers claim the same way),
#     5. close the job: atomicrmw and ctrl, ~SLOTS (acq_rel). From now on nobody can join,
#     6. wait until active == 0: spin (acquire loads + pause), then set waiting=1 (seq_cst) and
#        sleep on done_cond under mutex re-checking ctrl (seq_cst) before each wait.
#   A worker joins only by cmpxchg(ctrl, w, w - SLOT + 1) (acquire) on a word whose seq is new
#   and whose slots > 0, so it reads the job fields of exactly that seq; it leaves with
#   atomicrmw sub ctrl 1 (seq_cst, i.e. release) after its last failed claim, and never touches
#   job state (task/ctx/ntasks/chunk/next/ctrl) afterwards.  Because the dispatcher returns only after
#   observing active == 0 on a closed job (acquire, synchronizing with every leave's release), all
#   task side effects are visible to the caller and no straggler can race the next job's setup.
#   A worker that never managed to join costs the dispatcher nothing: it was never counted.
#   The leaver that brings active to 0 loads `waiting` (seq_cst) and, if set, broadcasts
#   done_cond under mutex.  Dekker argument: dispatcher does [store waiting=1; load ctrl],
#   leaver does [rmw ctrl; load waiting], all seq_cst, so at least one sees the other; the
#   broadcast is done holding mutex, which the dispatcher holds between its check and the wait.
#   A stale/spurious broadcast (waiting left from another job) is harmless: waits re-check.
#
#   Idle workers spin (monotonic loads of ctrl and stop + pause) for spin_iters iterations
#   (calibrated to ~0.5 ms), then lock mutex, sleepers += 1 (seq_cst), and cond_wait on
#   wake_cond while there is no joinable new job and no stop request (ctrl loaded seq_cst).
#   Same Dekker pairing as above: dispatcher [store ctrl; load sleepers] vs worker
#   [rmw sleepers; load ctrl]; the wake-up happens under mutex, so no lost wake-up, and the
#   hot path (all workers spinning) makes no syscall at all.  (Correctness never depends on a
#   worker waking: the dispatcher runs every task nobody else claimed; wake-ups are latency.)
#   A worker woken from sleep that cannot join goes back to sleep without spinning.
#
#   Nesting: a pthread key marks "this thread is inside the pool" (set forever in workers, and
#   in the dispatcher for the duration of a job); lutc_pool_run called with the mark set runs
#   inline, so tasks may call lutc_pool_run without deadlocking on dispatch_mutex.
#   `disabled` (1 = closed at exit, 2 = forked child) makes lutc_pool_run run inline, or call
#   `forward` (the new pool of a forked child) if set.
# ---------------------------------------------------------------------------------------------

ACTIVE_MASK = 0xFFFF
SLOT_ONE = 1 << 16
SLOTS_MASK = 0xFFFF << 16
SEQ_SHIFT = 32

DISABLED_CLOSED = 1
DISABLED_FORKED = 2

# lutc_pool_ctl(op, value) operations
CTL_NWORKERS, CTL_SLEEPERS, CTL_CTRL, CTL_DISABLED = 0, 1, 2, 3
CTL_SET_SPIN, CTL_SET_DISABLED, CTL_SET_FORWARD = 10, 11, 12

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_PTR = ir.PointerType()
_VOID = ir.VoidType()
TASK_FNTY = ir.FunctionType(_VOID, [_PTR, _I64])                  # void task(ptr ctx, i64 index)
RUN_FNTY = ir.FunctionType(_VOID, [_PTR, _PTR, _I64, _I64])       # void lutc_pool_run(task, ctx, n, nthreads)
_WORKER_FNTY = ir.FunctionType(_PTR, [_PTR])


class _PtrTo(ir.PointerType):
    """An opaque ``ptr`` (prints as ``ptr``) that remembers what it points to.  llvmlite needs the
    pointee for indirect calls (callee function type) and for store_atomic's type check."""

    def __init__(self, pointee):
        super().__init__()
        self.pointee = pointee


_TASK_PTR = _PtrTo(TASK_FNTY)
_RUN_PTR = _PtrTo(RUN_FNTY)

def declare_pool_run(module: ir.Module) -> ir.Function:
    """Declare ``void @lutc_pool_run(ptr, ptr, i64, i64)`` in another module (linked via register_symbol)."""
    fn = module.globals.get(SYMBOL_NAME)
    return fn if fn is not None else ir.Function(module, RUN_FNTY, SYMBOL_NAME)


def task_pointer(builder: ir.IRBuilder, fn: ir.Function) -> ir.Value:
    """Opaque ``ptr`` value of function ``fn`` (via an internal constant global, so the IR text
    never spells a typed function pointer)."""
    module = builder.module
    name = f"{fn.name}.addr"
    gv = module.globals.get(name)
    if gv is None:
        gv = ir.GlobalVariable(module, _PTR, name)
        gv.linkage = "internal"
        gv.global_constant = True
        gv.initializer = fn
    return builder.load(gv, typ=_PTR)


# ----------------------------------------------------------------------------- IR generation

def _sizeof(t) -> int:
    if isinstance(t, ir.IntType):
        return t.width // 8
    if isinstance(t, ir.PointerType):
        return 8
    if isinstance(t, ir.ArrayType):
        return t.count * _sizeof(t.element)
    raise TypeError(t)


# Each group is padded to a multiple of 64 bytes (the global is 64-byte aligned), so every group
# starts on its own cache line.  Fields inside a group are ordered 8-byte first (no holes).
_LAYOUT = (
    ("dispatch_mutex", ir.ArrayType(_I8, 128)),
    ("mutex", ir.ArrayType(_I8, 128)),
    ("wake_cond", ir.ArrayType(_I8, 128)),
    ("done_cond", ir.ArrayType(_I8, 128)),
    ("ctrl", _I64),
    ("next", _I64),
    (("task", _PTR), ("ctx", _PTR), ("ntasks", _I64), ("chunk", _I64)),
    (("sleepers", _I64), ("spin_iters", _I64), ("forward", _PTR), ("key", _I64), ("nworkers", _I64),
     ("waiting", _I32), ("stop", _I32), ("disabled", _I32), ("inited", _I32)),
    ("threads", ir.ArrayType(_I64, MAX_THREADS)),
)


class _PoolGen:
    """Builds the pool module for one target triple."""

    def __init__(self, triple: str):
        self.triple = triple
        tr = parse_triple(triple)
        self.is_x86 = tr.family == "x86"
        self.is_arm64 = tr.family == "aarch64"
        darwin = tr.os == "darwin"
        # pthread_key_t: unsigned int on Linux/glibc/musl, unsigned long on Darwin.
        self.key_ty = _I64 if darwin else _I32
        # pthread_t: unsigned long on Linux, a pointer on Darwin (both one 64-bit register).
        self.thread_ty = _PTR if darwin else _I64
        self.m = ir.Module(name="lutc_threadpool", context=ir.Context())
        self.m.triple = triple
        self._build_state()
        self._declare_externals()

    # -- state -------------------------------------------------------------------------------
    def _build_state(self):
        groups, self.fields = [], {}
        for gi, group in enumerate(_LAYOUT):
            if isinstance(group[0], str):
                group = (group,)
            elems, size = [], 0
            for fi, (name, ty) in enumerate(group):
                self.fields[name] = (gi, fi, ty)
                elems.append(ty)
                size += _sizeof(ty)
            if size % 64:
                elems.append(ir.ArrayType(_I8, 64 - size % 64))
            groups.append(ir.LiteralStructType(elems))
        self.state_ty = self.m.context.get_identified_type("lutc.pool.state")
        self.state_ty.set_body(*groups)
        self.state = ir.GlobalVariable(self.m, self.state_ty, "lutc_pool_state")
        self.state.linkage = "internal"
        self.state.initializer = ir.Constant(self.state_ty, None)
        self.state.align = 64
        self.state.type = _PTR       # opaque: GEPs on it yield plain `ptr` values

    def fld(self, b, name, index=None):
        gi, fi, ty = self.fields[name]
        idx = [_I32(0), _I32(gi), _I32(fi)]
        if index is not None:
            idx.append(index)
        gep = b.gep(self.state, idx, inbounds=True, source_etype=self.state_ty)
        gep.type = _PtrTo(ty.element if index is not None else ty)
        return gep

    def ld(self, b, name, order=None, ty=None):
        ty = ty or self.fields[name][2]
        ptr = self.fld(b, name)
        if order is None:
            return b.load(ptr, typ=ty, align=_sizeof(ty))
        return b.load_atomic(ptr, order, _sizeof(ty), typ=ty)

    def st(self, b, name, value, order=None):
        ptr = self.fld(b, name)
        if order is None:
            b.store(value, ptr, align=_sizeof(value.type))
        else:
            b.store_atomic(value, ptr, order, _sizeof(value.type))

    # -- externals ---------------------------------------------------------------------------
    def _declare_externals(self):
        m, kt, tt = self.m, self.key_ty, self.thread_ty
        decl = {
            "pthread_create": ir.FunctionType(_I32, [_PTR, _PTR, _PTR, _PTR]),
            "pthread_join": ir.FunctionType(_I32, [tt, _PTR]),
            "pthread_mutex_init": ir.FunctionType(_I32, [_PTR, _PTR]),
            "pthread_mutex_lock": ir.FunctionType(_I32, [_PTR]),
            "pthread_mutex_unlock": ir.FunctionType(_I32, [_PTR]),
            "pthread_cond_init": ir.FunctionType(_I32, [_PTR, _PTR]),
            "pthread_cond_wait": ir.FunctionType(_I32, [_PTR, _PTR]),
            "pthread_cond_broadcast": ir.FunctionType(_I32, [_PTR]),
            "pthread_cond_signal": ir.FunctionType(_I32, [_PTR]),
            "pthread_key_create": ir.FunctionType(_I32, [_PTR, _PTR]),
            "pthread_getspecific": ir.FunctionType(_PTR, [kt]),
            "pthread_setspecific": ir.FunctionType(_I32, [kt, _PTR]),
        }
        self.ext = {name: ir.Function(m, fnty, name) for name, fnty in decl.items()}
        for fn in self.ext.values():
            fn.attributes.add("nounwind")
        # Spin hint: x86 `pause`; AArch64 `yield` = HINT #1 through the intrinsic clang uses for
        # __yield() (no inline asm, so objects can be emitted without an AArch64 asm parser).
        self.pause_fn = self.pause_args = None
        if self.is_x86:
            self.pause_fn = ir.Function(m, ir.FunctionType(_VOID, []), "llvm.x86.sse2.pause")
            self.pause_args = []
        elif self.is_arm64:
            self.pause_fn = ir.Function(m, ir.FunctionType(_VOID, [_I32]), "llvm.aarch64.hint")
            self.pause_args = [_I32(1)]

    def call(self, b, name, *args):
        return b.call(self.ext[name], list(args))

    def pause(self, b):
        if self.pause_fn is not None:
            b.call(self.pause_fn, self.pause_args)
        # other targets: nothing (the atomic loads in the spin loops keep them honest)

    def lock(self, b, name):
        self.call(b, "pthread_mutex_lock", self.fld(b, name))

    def unlock(self, b, name):
        self.call(b, "pthread_mutex_unlock", self.fld(b, name))

    def key(self, b):
        return self.ld(b, "key", ty=self.key_ty)

    def set_in_pool(self, b, flag: bool):
        val = b.inttoptr(_I64(1), _PTR) if flag else _PTR(None)
        self.call(b, "pthread_setspecific", self.key(b), val)

    def define(self, name, fnty, internal=True, argnames=()):
        fn = ir.Function(self.m, fnty, name)
        if internal:
            fn.linkage = "internal"
        fn.attributes.add("nounwind")
        for arg, an in zip(fn.args, argnames):
            arg.name = an
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        return fn, b

    # -- loops -------------------------------------------------------------------------------
    def for_range(self, b, stop, body, tag="loop"):
        """for (i = 0; i < stop; i++) body(b, i);  (signed compare, so stop <= 0 runs nothing)"""
        for_range(b, stop, body, tag)

    def serial_loop(self, b, task, ctx, ntasks):
        self.for_range(b, ntasks, lambda b, i: b.call(task, [ctx, i]), "serial")

    def claim_loop(self, b, task, ctx, ntasks, chunk):
        """while ((i0 = fetch_add(next, chunk)) < ntasks) for i in [i0, min(i0 + chunk, ntasks)): task(ctx, i)

        Dynamic claiming of contiguous runs of `chunk` tasks (monotonic RMW): one contended
        atomic per run instead of per task, and each thread walks a contiguous stretch of the
        data (hardware prefetchers follow it)."""
        fn = b.function
        head, body, done = (fn.append_basic_block(n) for n in ("claim.head", "claim.body", "claim.done"))
        b.branch(head)
        b.position_at_end(head)
        i0 = b.atomic_rmw("add", self.fld(b, "next"), chunk, "monotonic", name="i0")
        b.cbranch(b.icmp_signed("<", i0, ntasks), body, done)
        b.position_at_end(body)
        end = b.add(i0, chunk)
        end = b.select(b.icmp_signed("<", end, ntasks), end, ntasks)
        self.for_range(b, b.sub(end, i0), lambda b, k: b.call(task, [ctx, b.add(i0, k)]), "run")
        b.branch(head)
        b.position_at_end(done)

    # -- functions ---------------------------------------------------------------------------
    def build(self) -> ir.Module:
        self.gen_spin_calibrate()
        self.gen_wait_idle()
        self.gen_work()
        self.gen_worker()
        self.gen_spawn()
        self.gen_parallel()
        self.gen_run()
        self.gen_init()
        self.gen_shutdown()
        self.gen_ctl()
        return self.m

    def gen_spin_calibrate(self):
        """lutc_pool_spin(n): n iterations of the idle spin loop body (to calibrate spin_iters)."""
        fn, b = self.define("lutc_pool_spin", ir.FunctionType(_VOID, [_I64]), internal=False,
                            argnames=("n",))

        def body(b, i):
            self.ld(b, "stop", "monotonic")
            self.ld(b, "ctrl", "monotonic")
            self.pause(b)
        self.for_range(b, fn.args[0], body, "spin")
        b.ret_void()

    def gen_wait_idle(self):
        """Dispatcher side: wait until ctrl.active == 0 (job already closed)."""
        fn, b = self.define("pool_wait_idle", ir.FunctionType(_VOID, []))
        fn.attributes.add("noinline")
        entry = b.block
        budget = self.ld(b, "spin_iters", "monotonic")
        spin, spin_more, sleep, sleep_chk, sleep_wait, out = (fn.append_basic_block(n) for n in (
            "spin", "spin.more", "sleep", "sleep.chk", "sleep.wait", "out"))
        b.branch(spin)
        b.position_at_end(spin)
        i = b.phi(_I64, "i")
        i.add_incoming(_I64(0), entry)
        w = self.ld(b, "ctrl", "acquire")
        idle = b.icmp_unsigned("==", b.and_(w, _I64(ACTIVE_MASK)), _I64(0))
        b.cbranch(idle, out, spin_more)
        b.position_at_end(spin_more)
        self.pause(b)
        i1 = b.add(i, _I64(1))
        i.add_incoming(i1, spin_more)
        b.cbranch(b.icmp_signed("<", i1, budget), spin, sleep)
        # Slow path: announce we sleep, then re-check under the mutex before every wait.
        b.position_at_end(sleep)
        self.st(b, "waiting", _I32(1), "seq_cst")
        self.lock(b, "mutex")
        b.branch(sleep_chk)
        b.position_at_end(sleep_chk)
        w = self.ld(b, "ctrl", "seq_cst")
        idle = b.icmp_unsigned("==", b.and_(w, _I64(ACTIVE_MASK)), _I64(0))
        done_sleep = fn.append_basic_block("sleep.done")
        b.cbranch(idle, done_sleep, sleep_wait)
        b.position_at_end(sleep_wait)
        self.call(b, "pthread_cond_wait", self.fld(b, "done_cond"), self.fld(b, "mutex"))
        b.branch(sleep_chk)
        b.position_at_end(done_sleep)
        self.unlock(b, "mutex")
        self.st(b, "waiting", _I32(0), "monotonic")
        b.branch(out)
        b.position_at_end(out)
        b.ret_void()

    def gen_work(self):
        """Worker side, after a successful join: run claimed tasks, then leave."""
        fn, b = self.define("pool_work", ir.FunctionType(_VOID, []))
        task = self.ld(b, "task", ty=_TASK_PTR)      # plain loads: ordered by the join's acquire
        ctx = self.ld(b, "ctx")
        ntasks = self.ld(b, "ntasks")
        chunk = self.ld(b, "chunk")
        self.claim_loop(b, task, ctx, ntasks, chunk)
        # Leave.  Last touch of job state; seq_cst = release for the dispatcher + Dekker vs waiting.
        old = b.atomic_rmw("sub", self.fld(b, "ctrl"), _I64(1), "seq_cst", name="old")
        last = b.icmp_unsigned("==", b.and_(old, _I64(ACTIVE_MASK)), _I64(1))
        with b.if_then(last, likely=False):
            waiting = self.ld(b, "waiting", "seq_cst")
            with b.if_then(b.icmp_unsigned("!=", waiting, _I32(0)), likely=False):
                self.lock(b, "mutex")
                self.call(b, "pthread_cond_broadcast", self.fld(b, "done_cond"))
                self.unlock(b, "mutex")
        b.ret_void()

    def gen_worker(self):
        """void *pool_worker(void *arg): arg = generation current at creation."""
        fn, b = self.define("pool_worker", _WORKER_FNTY, argnames=("arg",))
        # `last` = last generation this worker has dealt with (joined or skipped).
        last_slot = b.alloca(_I64, name="last")
        last_slot.type = _PtrTo(_I64)        # keep the printed IR opaque (`ptr`)
        b.store(b.ptrtoint(fn.args[0], _I64), last_slot)
        self.set_in_pool(b, True)
        outer, spin, spin_new, spin_join, spin_skip, spin_next, spin_pause, sleep, exit_ = (
            fn.append_basic_block(n) for n in ("outer", "spin", "spin.new", "spin.join", "spin.skip",
                                               "spin.next", "spin.pause", "sleep", "exit"))
        b.branch(outer)

        # outer: (re)start a spin phase with a fresh budget.
        b.position_at_end(outer)
        budget = self.ld(b, "spin_iters", "monotonic")
        b.branch(spin)

        b.position_at_end(spin)
        i = b.phi(_I64, "i")
        i.add_incoming(_I64(0), outer)
        stop = self.ld(b, "stop", "monotonic")
        stop_blk = fn.append_basic_block("spin.stop")
        chk = fn.append_basic_block("spin.chk")
        b.cbranch(b.icmp_unsigned("!=", stop, _I32(0)), stop_blk, chk)
        b.position_at_end(stop_blk)
        b.branch(exit_)
        b.position_at_end(chk)
        w = self.ld(b, "ctrl", "monotonic")
        seq = b.lshr(w, _I64(SEQ_SHIFT))
        is_new = b.icmp_unsigned("!=", seq, b.load(last_slot, typ=_I64))
        b.cbranch(is_new, spin_new, spin_next)

        b.position_at_end(spin_new)
        open_ = b.icmp_unsigned("!=", b.and_(w, _I64(SLOTS_MASK)), _I64(0))
        b.cbranch(open_, spin_join, spin_skip)

        # Join: take one slot and become active, only if ctrl is still exactly w.
        b.position_at_end(spin_join)
        desired = b.add(b.sub(w, _I64(SLOT_ONE)), _I64(1))
        res = b.cmpxchg(self.fld(b, "ctrl"), w, desired, "acquire", "monotonic")
        ok = b.extract_value(res, 1)
        joined = fn.append_basic_block("spin.joined")
        b.cbranch(ok, joined, spin)          # lost the race: re-read ctrl (same i, still bounded)
        i.add_incoming(i, spin_join)
        b.position_at_end(joined)
        b.store(seq, last_slot)
        b.call(self.m.globals["pool_work"], [])
        b.branch(outer)

        # Closed or full job we did not join: remember it as seen, keep spinning.
        b.position_at_end(spin_skip)
        b.store(seq, last_slot)
        b.branch(spin_next)

        b.position_at_end(spin_next)
        i1 = b.add(i, _I64(1))
        b.cbranch(b.icmp_signed("<", i1, budget), spin_pause, sleep)
        b.position_at_end(spin_pause)
        self.pause(b)
        i.add_incoming(i1, spin_pause)
        b.branch(spin)

        # Sleep phase.
        b.position_at_end(sleep)
        self.lock(b, "mutex")
        b.atomic_rmw("add", self.fld(b, "sleepers"), _I64(1), "seq_cst")
        wchk, wwait, wake, wstop, wnew = (fn.append_basic_block(n) for n in (
            "sleep.chk", "sleep.wait", "sleep.wake", "sleep.stop", "sleep.new"))
        b.branch(wchk)
        b.position_at_end(wchk)
        stop = self.ld(b, "stop", "seq_cst")
        wchk2 = fn.append_basic_block("sleep.chk2")
        b.cbranch(b.icmp_unsigned("!=", stop, _I32(0)), wstop, wchk2)
        b.position_at_end(wchk2)
        w = self.ld(b, "ctrl", "seq_cst")
        seq = b.lshr(w, _I64(SEQ_SHIFT))
        is_new = b.icmp_unsigned("!=", seq, b.load(last_slot, typ=_I64))
        b.cbranch(is_new, wnew, wwait)
        b.position_at_end(wnew)
        open_ = b.icmp_unsigned("!=", b.and_(w, _I64(SLOTS_MASK)), _I64(0))
        wseen = fn.append_basic_block("sleep.seen")
        b.cbranch(open_, wake, wseen)
        b.position_at_end(wseen)
        b.store(seq, last_slot)              # closed job: nothing to do, go back to sleep
        b.branch(wwait)
        b.position_at_end(wwait)
        self.call(b, "pthread_cond_wait", self.fld(b, "wake_cond"), self.fld(b, "mutex"))
        b.branch(wchk)
        b.position_at_end(wake)
        b.atomic_rmw("sub", self.fld(b, "sleepers"), _I64(1), "seq_cst")
        self.unlock(b, "mutex")
        # Try to join from the spin phase, but with an exhausted budget: a worker that was woken
        # and finds the job full/closed goes straight back to sleep instead of spinning for
        # nothing; one that joins restarts from `outer` with a fresh budget.
        i.add_incoming(budget, wake)
        b.branch(spin)
        b.position_at_end(wstop)
        b.atomic_rmw("sub", self.fld(b, "sleepers"), _I64(1), "seq_cst")
        self.unlock(b, "mutex")
        b.branch(exit_)

        b.position_at_end(exit_)
        b.ret(_PTR(None))

        # pthread_create needs the start routine as a value; keep the IR opaque-pointer clean.
        gv = ir.GlobalVariable(self.m, _PTR, "pool_worker.addr")
        gv.linkage = "internal"
        gv.global_constant = True
        gv.initializer = fn
        self.worker_addr = gv

    def gen_spawn(self):
        """pool_spawn(want): create workers until nworkers == want (dispatch_mutex held)."""
        fn, b = self.define("pool_spawn", ir.FunctionType(_VOID, [_I64]), argnames=("want",))
        fn.attributes.add("noinline")
        want = fn.args[0]
        entry = b.block
        head, body, ok_blk, done = (fn.append_basic_block(n) for n in ("head", "body", "ok", "done"))
        nw0 = self.ld(b, "nworkers", "monotonic")
        b.branch(head)
        b.position_at_end(head)
        nw = b.phi(_I64, "nw")
        nw.add_incoming(nw0, entry)
        b.cbranch(b.icmp_signed("<", nw, want), body, done)
        b.position_at_end(body)
        seq = b.lshr(self.ld(b, "ctrl", "monotonic"), _I64(SEQ_SHIFT))
        start = b.load(self.worker_addr, typ=_PTR)
        rc = self.call(b, "pthread_create", self.fld(b, "threads", nw), _PTR(None), start,
                       b.inttoptr(seq, _PTR))
        b.cbranch(b.icmp_unsigned("==", rc, _I32(0)), ok_blk, done)   # failure: keep what we have
        b.position_at_end(ok_blk)
        nw1 = b.add(nw, _I64(1))
        self.st(b, "nworkers", nw1, "monotonic")
        nw.add_incoming(nw1, ok_blk)
        b.branch(head)
        b.position_at_end(done)
        b.ret_void()

    def gen_parallel(self):
        fn, b = self.define("pool_parallel", ir.FunctionType(_VOID, [_TASK_PTR, _PTR, _I64, _I64]),
                            argnames=("task", "ctx", "ntasks", "nthreads"))
        fn.attributes.add("noinline")
        task, ctx, ntasks, nthreads = fn.args
        self.set_in_pool(b, True)
        self.lock(b, "dispatch_mutex")
        inline_blk, go = fn.append_basic_block("inline"), fn.append_basic_block("go")
        dis = self.ld(b, "disabled", "monotonic")        # closed while we waited for the mutex?
        b.cbranch(b.icmp_unsigned("!=", dis, _I32(0)), inline_blk, go)

        b.position_at_end(go)
        m = b.select(b.icmp_signed("<", nthreads, ntasks), nthreads, ntasks)
        m = b.select(b.icmp_signed("<", m, _I64(MAX_THREADS)), m, _I64(MAX_THREADS))
        want = b.sub(m, _I64(1))
        nw = self.ld(b, "nworkers", "monotonic")
        with b.if_then(b.icmp_signed("<", nw, want), likely=False):
            b.call(self.m.globals["pool_spawn"], [want])
        nw = self.ld(b, "nworkers", "monotonic")
        n = b.select(b.icmp_signed("<", want, nw), want, nw)
        par = fn.append_basic_block("par")
        b.cbranch(b.icmp_signed(">", n, _I64(0)), par, inline_blk)

        b.position_at_end(par)
        self.st(b, "task", task)
        self.st(b, "ctx", ctx)
        self.st(b, "ntasks", ntasks)
        # runs of ntasks / (CLAIMS_PER_THREAD * threads) tasks (at least 1): few contended
        # atomics, and still enough runs per thread to balance uneven tasks and late joiners
        chunk = b.sdiv(ntasks, b.mul(b.add(n, _I64(1)), _I64(CLAIMS_PER_THREAD)))
        chunk = b.select(b.icmp_signed(">", chunk, _I64(1)), chunk, _I64(1))
        self.st(b, "chunk", chunk)
        self.st(b, "next", _I64(0), "monotonic")
        old = self.ld(b, "ctrl", "monotonic")            # only the dispatcher changes seq
        seq1 = b.add(b.lshr(old, _I64(SEQ_SHIFT)), _I64(1))
        word = b.or_(b.shl(seq1, _I64(SEQ_SHIFT)), b.shl(n, _I64(16)))
        self.st(b, "ctrl", word, "seq_cst")              # publish (release) + Dekker vs sleepers
        sleepers = self.ld(b, "sleepers", "seq_cst")
        with b.if_then(b.icmp_unsigned("!=", sleepers, _I64(0)), likely=False):
            # Wake at most n sleepers: broadcast if that is all of them, else signal n times
            # (waking workers that cannot join would only make them spin for nothing).
            self.lock(b, "mutex")
            s = self.ld(b, "sleepers", "monotonic")          # exact: changed only under mutex
            with b.if_else(b.icmp_signed("<=", s, n)) as (all_, some):
                with all_:
                    self.call(b, "pthread_cond_broadcast", self.fld(b, "wake_cond"))
                with some:
                    self.for_range(b, n, lambda b, k: self.call(
                        b, "pthread_cond_signal", self.fld(b, "wake_cond")), "signal")
            self.unlock(b, "mutex")
        self.claim_loop(b, task, ctx, ntasks, chunk)
        # Close: no further joins.  acq_rel: acquire pairs with the leaves already done.
        closed = b.atomic_rmw("and", self.fld(b, "ctrl"), _I64(~SLOTS_MASK), "acq_rel")
        with b.if_then(b.icmp_unsigned("!=", b.and_(closed, _I64(ACTIVE_MASK)), _I64(0))):
            b.call(self.m.globals["pool_wait_idle"], [])
        self.unlock(b, "dispatch_mutex")
        self.set_in_pool(b, False)
        b.ret_void()

        b.position_at_end(inline_blk)
        self.unlock(b, "dispatch_mutex")
        self.serial_loop(b, task, ctx, ntasks)           # key still set: nested calls stay inline
        self.set_in_pool(b, False)
        b.ret_void()

    def gen_run(self):
        fn, b = self.define(SYMBOL_NAME, ir.FunctionType(_VOID, [_TASK_PTR, _PTR, _I64, _I64]),
                            internal=False, argnames=("task", "ctx", "ntasks", "nthreads"))
        task, ctx, ntasks, nthreads = fn.args
        inline_blk, chk, chk2, par, disabled, fwd_blk = (fn.append_basic_block(n) for n in (
            "inline", "chk", "chk2", "par", "disabled", "forward"))
        trivial = b.or_(b.icmp_signed("<=", ntasks, _I64(1)), b.icmp_signed("<=", nthreads, _I64(1)))
        b.cbranch(trivial, inline_blk, chk)
        b.position_at_end(chk)
        dis = self.ld(b, "disabled", "monotonic")
        b.cbranch(b.icmp_unsigned("!=", dis, _I32(0)), disabled, chk2)
        b.position_at_end(chk2)
        nested = self.call(b, "pthread_getspecific", self.key(b))
        b.cbranch(b.icmp_unsigned("!=", nested, _PTR(None)), inline_blk, par)
        b.position_at_end(par)
        b.call(self.m.globals["pool_parallel"], [task, ctx, ntasks, nthreads])
        b.ret_void()
        b.position_at_end(disabled)
        fwd = self.ld(b, "forward", "monotonic", ty=_RUN_PTR)
        b.cbranch(b.icmp_unsigned("!=", fwd, _PTR(None)), fwd_blk, inline_blk)
        b.position_at_end(fwd_blk)
        b.call(fwd, [task, ctx, ntasks, nthreads])
        b.ret_void()
        b.position_at_end(inline_blk)
        self.serial_loop(b, task, ctx, ntasks)
        b.ret_void()

    def gen_init(self):
        """i32 lutc_pool_init(i64 spin_iters): init mutexes, conds and the key, once."""
        fn, b = self.define("lutc_pool_init", ir.FunctionType(_I32, [_I64]), internal=False,
                            argnames=("spin_iters",))
        with b.if_then(b.icmp_unsigned("!=", self.ld(b, "inited"), _I32(0))):
            b.ret(_I32(0))
        rc = self.call(b, "pthread_mutex_init", self.fld(b, "dispatch_mutex"), _PTR(None))
        for name, args in (("pthread_mutex_init", ("mutex",)), ("pthread_cond_init", ("wake_cond",)),
                           ("pthread_cond_init", ("done_cond",)), ("pthread_key_create", ("key",))):
            rc = b.or_(rc, self.call(b, name, self.fld(b, args[0]), _PTR(None)))
        self.st(b, "spin_iters", fn.args[0], "monotonic")
        self.st(b, "inited", _I32(1))
        with b.if_then(b.icmp_unsigned("!=", rc, _I32(0)), likely=False):
            self.st(b, "disabled", _I32(DISABLED_CLOSED), "seq_cst")   # run everything inline
        b.ret(rc)

    def gen_shutdown(self):
        """void lutc_pool_shutdown(i32 final): stop and join all workers (final: stay inline after)."""
        fn, b = self.define("lutc_pool_shutdown", ir.FunctionType(_VOID, [_I32]), internal=False,
                            argnames=("final",))
        with b.if_then(b.icmp_unsigned("==", self.ld(b, "inited"), _I32(0))):
            b.ret_void()
        # A forked child has no workers and possibly a mutex locked by a thread that is gone.
        with b.if_then(b.icmp_unsigned("==", self.ld(b, "disabled", "monotonic"), _I32(DISABLED_FORKED))):
            b.ret_void()
        nested = self.call(b, "pthread_getspecific", self.key(b))
        with b.if_then(b.icmp_unsigned("!=", nested, _PTR(None))):
            b.ret_void()                     # from inside a task: would deadlock, refuse
        self.lock(b, "dispatch_mutex")       # no job is in flight while we hold it
        with b.if_then(b.icmp_unsigned("!=", fn.args[0], _I32(0))):
            self.st(b, "disabled", _I32(DISABLED_CLOSED), "seq_cst")
        self.st(b, "stop", _I32(1), "seq_cst")
        self.lock(b, "mutex")
        self.call(b, "pthread_cond_broadcast", self.fld(b, "wake_cond"))
        self.unlock(b, "mutex")
        self.for_range(b, self.ld(b, "nworkers", "monotonic"), lambda b, i: self.call(
            b, "pthread_join", b.load(self.fld(b, "threads", i), typ=self.thread_ty), _PTR(None)),
            "join")
        self.st(b, "nworkers", _I64(0), "monotonic")
        self.st(b, "stop", _I32(0), "seq_cst")
        self.unlock(b, "dispatch_mutex")
        b.ret_void()

    def gen_ctl(self):
        """i64 lutc_pool_ctl(i32 op, i64 value): small queries and setters for Python."""
        fn, b = self.define("lutc_pool_ctl", ir.FunctionType(_I64, [_I32, _I64]), internal=False,
                            argnames=("op", "value"))
        op, value = fn.args
        default = fn.append_basic_block("default")
        sw = b.switch(op, default)
        getters = {CTL_NWORKERS: "nworkers", CTL_SLEEPERS: "sleepers", CTL_CTRL: "ctrl",
                   CTL_DISABLED: "disabled"}
        setters = {CTL_SET_SPIN: "spin_iters", CTL_SET_DISABLED: "disabled", CTL_SET_FORWARD: "forward"}
        for code, name in (*getters.items(), *setters.items()):
            blk = fn.append_basic_block(f"op{code}")
            sw.add_case(_I32(code), blk)
            b.position_at_end(blk)
            ty = self.fields[name][2]
            if code in setters:
                v = b.inttoptr(value, ty) if isinstance(ty, ir.PointerType) else (
                    b.trunc(value, ty) if ty != _I64 else value)
                self.st(b, name, v, "seq_cst")
                b.ret(value)
            else:
                v = self.ld(b, name, "seq_cst")
                b.ret(b.zext(v, _I64) if ty != _I64 else v)
        b.position_at_end(default)
        b.ret(_I64(-1))


def build_pool_module(triple: str | None = None) -> ir.Module:
    """The pool as an llvmlite ``ir.Module`` for ``triple`` (default: this process)."""
    return _PoolGen(triple or host_cpu().triple).build()
