"""Small llvmlite.ir builder helpers shared by the hand-built native modules (thread pool, launch lists,
benches) and the kernel lowering (vector constants and concatenation). Compiling and JITting them is
lutc.backend.toolchain."""
from __future__ import annotations

import llvmlite.ir as ir

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()

__all__ = ["I64", "PTR", "PtrTo", "for_range", "repeat_call_function", "const_vec", "concat_rows", "splat"]


def const_vec(ty, values):
    """A constant vector of `ty` lanes holding `values`."""
    values = list(values)
    return ir.Constant(ir.VectorType(ty, len(values)), values)


def splat(b: ir.IRBuilder, v, n: int):
    """A vector of n lanes, each v (insertelement into lane 0, then a zero-mask shuffle)."""
    vt = ir.VectorType(v.type, n)
    tmp = b.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(I32, 0))
    return b.shuffle_vector(tmp, ir.Constant(vt, ir.Undefined), const_vec(I32, [0] * n))


def concat_rows(b: ir.IRBuilder, parts):
    """One vector of equal-width vectors in order (a tree of shuffles; odd counts pad)."""
    total = sum(p.type.count for p in parts)
    while len(parts) > 1:
        if len(parts) % 2:
            parts = parts + [ir.Constant(parts[0].type, None)]
        parts = [b.shuffle_vector(x, y, const_vec(I32, range(2 * x.type.count)))
                 for x, y in zip(parts[::2], parts[1::2])]
    v = parts[0]
    if v.type.count != total:
        v = b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), const_vec(I32, range(total)))
    return v


class PtrTo(ir.PointerType):
    """An opaque ``ptr`` (prints as ``ptr``) that remembers what it points to.  llvmlite needs the
    pointee for indirect calls (callee function type) and for store_atomic's type check."""

    def __init__(self, pointee):
        super().__init__()
        self.pointee = pointee


def for_range(b: ir.IRBuilder, stop, body, tag: str = "loop"):
    """Emit `for (i = 0; i < stop; i++) body(b, i)` at b (signed compare: stop <= 0 runs nothing).

    `body` may add blocks; the builder ends positioned after the loop."""
    fn, pre = b.function, b.block
    head, blk, done = (fn.append_basic_block(f"{tag}.{n}") for n in ("head", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, "i")
    i.add_incoming(I64(0), pre)
    b.cbranch(b.icmp_signed("<", i, stop), blk, done)
    b.position_at_end(blk)
    body(b, i)
    i.add_incoming(b.add(i, I64(1)), b.block)
    b.branch(head)
    b.position_at_end(done)


def repeat_call_function(m: ir.Module, name: str, callee) -> ir.Function:
    """Define `void name(task, ctx, n, nthreads, reps)` calling callee(task, ctx, n, nthreads) reps times.

    Used to time a native call (such as lutc_pool_run) without a Python round trip per call."""
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, I64]), name)
    task, ctx, n, nt, reps = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    for_range(b, reps, lambda b, _: b.call(callee, [task, ctx, n, nt]), "rep")
    b.ret_void()
    return fn
