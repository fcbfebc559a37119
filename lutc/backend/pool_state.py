"""The thread pool's state (one internal global struct, hot words on their own cache lines) and the
IR helpers its generators share: field access, pthread declarations, the spin hint, claim loops."""
from __future__ import annotations

import llvmlite.ir as ir

from .irutil import for_range
from .irutil import PtrTo
from .pool_protocol import I8, I32, I64, KEY_TASKS, MAX_THREADS, PTR, VOID
from .toolchain import parse_triple

__all__ = ["PoolBuilder", "LAYOUT", "sizeof"]


def sizeof(t) -> int:
    if isinstance(t, ir.IntType):
        return t.width // 8
    if isinstance(t, ir.PointerType):
        return 8
    if isinstance(t, ir.ArrayType):
        return t.count * sizeof(t.element)
    raise TypeError(t)


# Each group is padded to a multiple of 64 bytes (the global is 64-byte aligned), so every group
# starts on its own cache line.  Fields inside a group are ordered 8-byte first (no holes).
LAYOUT = (
    ("dispatch_mutex", ir.ArrayType(I8, 128)),
    ("mutex", ir.ArrayType(I8, 128)),
    ("wake_cond", ir.ArrayType(I8, 128)),
    ("done_cond", ir.ArrayType(I8, 128)),
    ("ctrl", I64),
    ("next", I64),
    (("task", PTR), ("ctx", PTR), ("ntasks", I64), ("chunk", I64)),
    ("pnext", I64),                                  # programs (lutc.backend.pool_program)
    ("pdone", I64),
    (("ptask", PTR), ("pctx", PTR), ("pntasks", I64), ("pchunk", I64), ("pphase", I64), ("phelpers", I64)),
    (("sleepers", I64), ("spin_iters", I64), ("forward", PTR), ("key", I64), ("nworkers", I64),
     ("waiting", I32), ("stop", I32), ("disabled", I32), ("inited", I32)),
    ("threads", ir.ArrayType(I64, MAX_THREADS)),
)


class PoolBuilder:
    """The pool module under construction for one target triple: its state global, pthread
    declarations and the IR helpers the generators (pool_worker, pool_dispatch) share."""

    def __init__(self, triple: str):
        self.triple = triple
        tr = parse_triple(triple)
        self.is_x86 = tr.family == "x86"
        self.is_arm64 = tr.family == "aarch64"
        darwin = tr.os == "darwin"
        # pthread_key_t: unsigned int on Linux/glibc/musl, unsigned long on Darwin.
        self.key_ty = I64 if darwin else I32
        # pthread_t: unsigned long on Linux, a pointer on Darwin (both one 64-bit register).
        self.thread_ty = PTR if darwin else I64
        self.m = ir.Module(name="lutc_threadpool", context=ir.Context())
        self.m.triple = triple
        self._build_state()
        self._declare_externals()

    # -- state -------------------------------------------------------------------------------
    def _build_state(self):
        groups, self.fields = [], {}
        for gi, group in enumerate(LAYOUT):
            if isinstance(group[0], str):
                group = (group,)
            elems, size = [], 0
            for fi, (name, ty) in enumerate(group):
                self.fields[name] = (gi, fi, ty)
                elems.append(ty)
                size += sizeof(ty)
            if size % 64:
                elems.append(ir.ArrayType(I8, 64 - size % 64))
            groups.append(ir.LiteralStructType(elems))
        self.state_ty = self.m.context.get_identified_type("lutc.pool.state")
        self.state_ty.set_body(*groups)
        self.state = ir.GlobalVariable(self.m, self.state_ty, "lutc_pool_state")
        self.state.linkage = "internal"
        self.state.initializer = ir.Constant(self.state_ty, None)
        self.state.align = 64
        self.state.type = PTR       # opaque: GEPs on it yield plain `ptr` values

    def fld(self, b, name, index=None):
        gi, fi, ty = self.fields[name]
        idx = [I32(0), I32(gi), I32(fi)]
        if index is not None:
            idx.append(index)
        gep = b.gep(self.state, idx, inbounds=True, source_etype=self.state_ty)
        gep.type = PtrTo(ty.element if index is not None else ty)
        return gep

    def ld(self, b, name, order=None, ty=None):
        ty = ty or self.fields[name][2]
        ptr = self.fld(b, name)
        if order is None:
            return b.load(ptr, typ=ty, align=sizeof(ty))
        return b.load_atomic(ptr, order, sizeof(ty), typ=ty)

    def st(self, b, name, value, order=None):
        ptr = self.fld(b, name)
        if order is None:
            b.store(value, ptr, align=sizeof(value.type))
        else:
            b.store_atomic(value, ptr, order, sizeof(value.type))

    # -- externals ---------------------------------------------------------------------------
    def _declare_externals(self):
        m, kt, tt = self.m, self.key_ty, self.thread_ty
        decl = {
            "pthread_create": ir.FunctionType(I32, [PTR, PTR, PTR, PTR]),
            "pthread_join": ir.FunctionType(I32, [tt, PTR]),
            "pthread_mutex_init": ir.FunctionType(I32, [PTR, PTR]),
            "pthread_mutex_lock": ir.FunctionType(I32, [PTR]),
            "pthread_mutex_unlock": ir.FunctionType(I32, [PTR]),
            "pthread_cond_init": ir.FunctionType(I32, [PTR, PTR]),
            "pthread_cond_wait": ir.FunctionType(I32, [PTR, PTR]),
            "pthread_cond_broadcast": ir.FunctionType(I32, [PTR]),
            "pthread_cond_signal": ir.FunctionType(I32, [PTR]),
            "pthread_key_create": ir.FunctionType(I32, [PTR, PTR]),
            "pthread_getspecific": ir.FunctionType(PTR, [kt]),
            "pthread_setspecific": ir.FunctionType(I32, [kt, PTR]),
        }
        self.ext = {name: ir.Function(m, fnty, name) for name, fnty in decl.items()}
        for fn in self.ext.values():
            fn.attributes.add("nounwind")
        # Spin hint: x86 `pause`; AArch64 `yield` = HINT #1 through the intrinsic clang uses for
        # __yield() (no inline asm, so objects can be emitted without an AArch64 asm parser).
        self.pause_fn = self.pause_args = None
        if self.is_x86:
            self.pause_fn = ir.Function(m, ir.FunctionType(VOID, []), "llvm.x86.sse2.pause")
            self.pause_args = []
        elif self.is_arm64:
            self.pause_fn = ir.Function(m, ir.FunctionType(VOID, [I32]), "llvm.aarch64.hint")
            self.pause_args = [I32(1)]

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
        self.set_key(b, KEY_TASKS if flag else None)

    def set_key(self, b, value):
        """Set this thread's pool mark: None, KEY_TASKS or KEY_PROGRAM (pool_protocol, "Nesting")."""
        val = PTR(None) if value is None else b.inttoptr(I64(value), PTR)
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
