"""LLVM optimization (new pass manager, O3), object/asm emission, and MCJIT loading."""
from __future__ import annotations

import llvmlite.binding as llvm

from .target import Target, init_llvm


def parse_and_optimize(ir_module, target: Target, opt: int = 3, jit: bool = False):
    """Parse a llvmlite.ir module, verify it, and run LLVM's O3 pipeline for `target`."""
    init_llvm()
    mod = llvm.parse_assembly(str(ir_module))
    mod.triple = target.triple
    mod.verify()
    tm = target.target_machine(opt=opt, jit=jit)
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod, tm


def emit_object(mod, tm) -> bytes:
    return tm.emit_object(mod)


def emit_assembly(mod, tm) -> str:
    return tm.emit_assembly(mod)


class JITModule:
    """Native code of one compiled kernel in its own MCJIT engine (never shared, never freed early)."""

    def __init__(self, obj: bytes, target: Target):
        if not target.is_host:
            raise ValueError(f"cannot execute code for target {target.name!r} on this machine; "
                             "use emit='obj' or 'asm' to cross-compile")
        from .threadpool import get_pool
        get_pool().register_symbol()
        init_llvm()
        empty = llvm.parse_assembly("")
        empty.triple = target.triple
        self._engine = llvm.create_mcjit_compiler(empty, target.target_machine(jit=True))
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        if not addr:
            raise RuntimeError(f"symbol {name!r} not found in compiled kernel")
        return addr
