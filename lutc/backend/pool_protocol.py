"""The native thread pool's protocol and ABI: its constants, state words, function types, and what
another module needs to call ``lutc_pool_run`` (declare_pool_run, task_pointer).

The IR that implements it: lutc.backend.pool_state (state layout and IR helpers), pool_worker
(the worker threads' side), pool_dispatch (the caller's side and the entry points), assembled by
pool_ir.build_pool_module; loading it into a process is lutc.backend.threadpool."""
from __future__ import annotations

import llvmlite.ir as ir

from .irutil import PtrTo


__all__ = ["declare_pool_run", "task_pointer", "TASK_FNTY", "RUN_FNTY", "SYMBOL_NAME", "MAX_THREADS"]

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
#   Nesting: a pthread key marks "this thread is inside the pool" (KEY_TASKS: set forever in
#   workers, and in the dispatcher for the duration of a job); lutc_pool_run called with the mark
#   set runs inline, so tasks may call lutc_pool_run without deadlocking on dispatch_mutex.
#   KEY_PROGRAM marks the caller of a program between its launches: lutc_pool_run there runs a
#   phase of the program (below), with KEY_TASKS set while the caller runs tasks.
#
#   Programs (lutc_pool_program(records, n, nthreads), lutc.backend.pool_program): one job is
#   published as above, whose tasks (one per helper, chunk 1) are `prog_walk`; the caller then
#   calls each record's entry itself with KEY_PROGRAM set.  Serial launches (ntasks or nthreads
#   <= 1) run inline on the caller while the walkers wait; a parallel launch becomes a phase:
#     1. the caller writes ptask/pctx/pntasks/pchunk, pdone = 0, then stores
#        pnext = q << 32 (q = phase number, 1, 2, ...) seq_cst (release + Dekker vs sleepers),
#        and broadcasts wake_cond if any worker sleeps,
#     2. everybody claims runs by cmpxchg(pnext, q << 32 | i0, q << 32 | end) after an acquire
#        load of pnext showing q and i0 < pntasks (the fields are read after that load). The
#        word only grows, so a successful cmpxchg proves the phase was open the whole time its
#        fields were read; a thread late by a phase fails the cmpxchg and claims nothing,
#     3. each finished run adds its task count to pdone (seq_cst); the caller, out of tasks,
#        waits until pdone == pntasks (the barrier: acquire loads, spin_iters polls, then
#        `waiting` + done_cond exactly as in step 6 above). Only a claimed, unfinished run can
#        hold the barrier; a descheduled walker that claimed nothing holds nobody.
#   Walkers between phases spin on pnext (monotonic) for spin_iters polls, then park on
#   wake_cond under mutex (sleepers += 1, pnext re-checked seq_cst: the Dekker pairing of step
#   1). After the last record the caller stores pnext = PHASE_END << 32, wakes sleepers, and
#   closes and waits for the job as in steps 5-6, so the walkers are gone before it returns.
#   A launch observes all writes of the previous ones: serial writes are released by the next
#   pnext store, phase writes by the pdone adds the caller acquires before going on.
#   `disabled` (1 = closed at exit, 2 = forked child) makes lutc_pool_run run inline, or call
#   `forward` (the new pool of a forked child) if set.
# ---------------------------------------------------------------------------------------------

ACTIVE_MASK = 0xFFFF
SLOT_ONE = 1 << 16
SLOTS_MASK = 0xFFFF << 16
SEQ_SHIFT = 32

KEY_TASKS = 1                    # pthread key values (see "Nesting"); 0 = not in the pool
KEY_PROGRAM = 2
PHASE_END = 0xFFFFFFFF           # pnext = phase << 32 | next task index
PHASE_INDEX_MASK = 0xFFFFFFFF

DISABLED_CLOSED = 1
DISABLED_FORKED = 2

# lutc_pool_ctl(op, value) operations
CTL_NWORKERS, CTL_SLEEPERS, CTL_CTRL, CTL_DISABLED = 0, 1, 2, 3
CTL_SET_SPIN, CTL_SET_DISABLED, CTL_SET_FORWARD = 10, 11, 12

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()
TASK_FNTY = ir.FunctionType(VOID, [PTR, I64])                  # void task(ptr ctx, i64 index)
RUN_FNTY = ir.FunctionType(VOID, [PTR, PTR, I64, I64])       # void lutc_pool_run(task, ctx, n, nthreads)
WORKER_FNTY = ir.FunctionType(PTR, [PTR])


TASK_PTR = PtrTo(TASK_FNTY)
RUN_PTR = PtrTo(RUN_FNTY)


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
        gv = ir.GlobalVariable(module, PTR, name)
        gv.linkage = "internal"
        gv.global_constant = True
        gv.initializer = fn
    return builder.load(gv, typ=PTR)
