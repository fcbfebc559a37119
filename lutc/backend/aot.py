"""Ahead-of-time objects: checking an emitted ELF/Mach-O file (format, exports, imports) and writing it.
Reading an object's header and symbols is lutc.backend.toolchain.inspect_object."""
from __future__ import annotations

import os

from .toolchain import ObjectFormatError, ObjectInfo, inspect_object, parse_triple

# The only symbols a lutc kernel object may need from whoever links it: the thread pool, C
# memory functions, libm (targets without a rounding instruction call roundevenf) and
# compiler-rt's half-precision conversions (targets without F16C / fullfp16).
_LIBM = {f"{fn}{suffix}" for fn in ("roundeven", "floor", "ceil", "sqrt", "exp", "log", "fabs", "round",
                                     "fmax", "fmin") for suffix in ("", "f")}
ALLOWED_IMPORTS = frozenset({"lutc_pool_run", "memcpy", "memset", "memmove", "__extendhfsf2", "__truncsfhf2",
                             "__truncdfhf2", "__gnu_h2f_ieee", "__gnu_f2h_ieee"} | _LIBM)

__all__ = ["ALLOWED_IMPORTS", "ObjectFormatError", "ObjectInfo", "inspect_object", "foreign_imports",
           "check_object", "sibling_path", "write_objects"]


def foreign_imports(info: ObjectInfo) -> tuple:
    """The symbols `info`'s object imports beyond ALLOWED_IMPORTS."""
    return tuple(s for s in info.undefined if s not in ALLOWED_IMPORTS)


def check_object(blob: bytes, target, exports=()) -> ObjectInfo:
    """Verify blob is target's object format and architecture, exports `exports` and imports
    nothing but ALLOWED_IMPORTS; ObjectFormatError otherwise."""
    info = inspect_object(blob)
    arch = parse_triple(target.triple).canonical_arch
    if (info.format, info.arch) != (target.object_format, arch):
        raise ObjectFormatError(f"expected a {target.object_format} {arch} object for target {target.name}, "
                                f"got {info.format} {info.arch}")
    missing = [e for e in exports if e not in info.defined]
    if missing:
        raise ObjectFormatError(f"object does not define {', '.join(missing)} (defines {', '.join(info.defined)})")
    foreign = foreign_imports(info)
    if foreign:
        raise ObjectFormatError(f"object imports {', '.join(foreign)}; a lutc kernel may only "
                                f"import {', '.join(sorted(ALLOWED_IMPORTS))}")
    return info


def sibling_path(path: str, tag: str) -> str:
    """k.o -> k.<tag>.o (the name the CLI gives the second object)."""
    root, ext = os.path.splitext(path)
    return f"{root}.{tag}{ext or '.o'}"


def write_objects(objects: dict, output: str, target) -> list:
    """Check and write {'gemm': bytes, other: bytes...}: gemm to `output`, each other to a
    sibling (k.o, k.tables.o). Returns [(path, ObjectInfo)]."""
    written = []
    for which, blob in objects.items():
        info = check_object(blob, target)
        path = output if which == "gemm" else sibling_path(output, which)
        with open(path, "wb") as f:
            f.write(blob)
        written.append((path, info))
    return written
