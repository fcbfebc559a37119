"""Small llvmlite helpers shared by the hand-built native modules (thread pool, launch lists, benches)."""
from __future__ import annotations

import llvmlite.binding as llvm
import llvmlite.ir as ir

I64 = ir.IntType(64)
PTR = ir.PointerType()

__all__ = ["I64", "PTR", "for_range", "repeat_call_function", "mcjit"]


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


def mcjit(module: ir.Module, tm=None, speed_level: int | None = None):
    """Parse, verify and JIT `module` with MCJIT for the process (or `tm`); return the engine.

    With `speed_level`, the module first gets `tm`'s triple and data layout and runs LLVM's
    new-pass-manager pipeline at that level. Keep the engine alive as long as any of its
    function addresses is used."""
    from .target import init_llvm
    init_llvm()
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    if tm is None:
        tm = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(jit=True)
    if speed_level is not None:
        mod.triple = tm.triple
        mod.data_layout = str(tm.target_data)
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=speed_level))
        pb.getModulePassManager().run(mod, pb)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    return engine
