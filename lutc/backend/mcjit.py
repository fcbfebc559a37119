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


def runs_here(target: Target) -> bool:
    """Whether code for `target` can execute in this process: the host itself, or a target of
    the same architecture and object format whose CPU features the host all has."""
    if target.is_host:
        return True
    from .target import get_target
    host = get_target("host")
    if target.arch != host.arch or target.object_format != host.object_format:
        return False
    have = set(host.features.split(","))
    return all(f in have for f in target.features.split(",") if f.startswith("+"))


def undefined_symbols(obj: bytes) -> list:
    """Names of the global symbols an ELF64 object file needs from outside (its UND symbols)."""
    import struct
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        return []  # not little-endian ELF64 (e.g. Mach-O on macOS): nothing checked here
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
    out = []
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sec[6]]
        for off in range(sec[4], sec[4] + sec[5], 24):
            st_name, st_info, _, st_shndx = struct.unpack_from("<IBBH", obj, off)
            if st_shndx == 0 and st_name and (st_info >> 4) in (1, 2):
                start = strtab[4] + st_name
                out.append(obj[start:obj.index(b"\0", start)].decode())
    return out


def _check_symbols(obj: bytes):
    """Refuse objects that call a function this process cannot provide (it would crash)."""
    import ctypes
    process = ctypes.CDLL(None)
    missing = []
    for name in undefined_symbols(obj):
        if llvm.address_of_symbol(name):
            continue
        try:
            getattr(process, name)
        except AttributeError:
            missing.append(name)
    if missing:
        raise RuntimeError(f"compiled kernel needs external symbol(s) {', '.join(missing)} that this "
                           "process does not provide; refusing to load it")


class JITModule:
    """Native code of one compiled kernel in its own MCJIT engine (never shared, never freed early)."""

    def __init__(self, obj: bytes, target: Target):
        if not runs_here(target):
            raise ValueError(f"cannot execute code for target {target.name!r} on this machine; "
                             "use emit='obj' or 'asm' to cross-compile")
        from .support import register_support_symbols
        from .threadpool import get_pool
        get_pool().register_symbol()
        register_support_symbols()
        init_llvm()
        _check_symbols(obj)
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
