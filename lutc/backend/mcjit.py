"""Loading a compiled kernel's object into this process with MCJIT (JITModule)."""
from __future__ import annotations

import llvmlite.binding as llvm

from .target import Target
from .toolchain import ObjectFormatError, inspect_object, mcjit_object, runs_here


def _check_symbols(obj: bytes):
    """Refuse objects that call a function this process cannot provide (it would crash)."""
    import ctypes
    try:
        info = inspect_object(obj)
    except ObjectFormatError:
        return
    if info.format != "elf":
        return  # Mach-O on macOS: nothing checked here
    process = ctypes.CDLL(None)
    missing = []
    for name in info.undefined:
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
        _check_symbols(obj)
        self._engine = mcjit_object(obj, target)

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        if not addr:
            raise RuntimeError(f"symbol {name!r} not found in compiled kernel")
        return addr
