"""Ahead-of-time objects: what an emitted ELF/Mach-O file is, exports and imports, and writing it."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

# The only symbols a lutc kernel object may need from whoever links it: the thread pool, C
# memory functions, libm (targets without a rounding instruction call roundevenf) and
# compiler-rt's half-precision conversions (targets without F16C / fullfp16).
_LIBM = {f"{fn}{suffix}" for fn in ("roundeven", "floor", "ceil", "sqrt", "exp", "log", "fabs", "round",
                                     "fmax", "fmin") for suffix in ("", "f")}
ALLOWED_IMPORTS = frozenset({"lutc_pool_run", "memcpy", "memset", "memmove", "__extendhfsf2", "__truncsfhf2",
                             "__truncdfhf2", "__gnu_h2f_ieee", "__gnu_f2h_ieee"} | _LIBM)

_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}
_MACHO_CPUS = {0x01000007: "x86_64", 0x0100000C: "aarch64"}


class ObjectFormatError(ValueError):
    """Bytes that are not the relocatable object lutc was expected to produce."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a relocatable object is: format ('elf' or 'macho'), architecture, C-level symbols."""

    format: str
    arch: str
    defined: tuple       # global symbols the object exports
    undefined: tuple     # symbols it needs from the linker

    @property
    def foreign_imports(self) -> tuple:
        return tuple(s for s in self.undefined if s not in ALLOWED_IMPORTS)


def inspect_object(blob: bytes) -> ObjectInfo:
    """Parse a 64-bit little-endian ELF or Mach-O relocatable object's header and symbol table."""
    try:
        if blob[:4] == b"\x7fELF":
            return _elf(blob)
        if blob[:4] == b"\xcf\xfa\xed\xfe":
            return _macho(blob)
    except (struct.error, IndexError) as e:
        raise ObjectFormatError(f"truncated or corrupt object file ({e})") from None
    raise ObjectFormatError(f"not a 64-bit little-endian ELF or Mach-O object (starts {blob[:4]!r})")


def _cstr(blob, off):
    end = blob.index(b"\0", off)
    return blob[off:end].decode("utf-8", "replace")


def _elf(b: bytes) -> ObjectInfo:
    if b[4] != 2 or b[5] != 1:
        raise ObjectFormatError("only 64-bit little-endian ELF objects are supported")
    (machine,) = struct.unpack_from("<H", b, 18)
    (shoff,) = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", b, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    defined, undefined = [], []
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        off, size, entsize = sh[4], sh[5], sh[9] or 24
        for s in range(off + entsize, off + size, entsize):  # entry 0 is the null symbol
            name_off, info, _other, shndx = struct.unpack_from("<IBBH", b, s)
            name = _cstr(b, strtab[4] + name_off)
            if info >> 4 not in (1, 2) or not name:  # STB_GLOBAL, STB_WEAK
                continue
            (undefined if shndx == 0 else defined).append(name)
    return ObjectInfo("elf", _ELF_MACHINES.get(machine, f"elf-machine-{machine}"),
                      tuple(sorted(defined)), tuple(sorted(undefined)))


def _macho(b: bytes) -> ObjectInfo:
    cputype, _sub, _ftype, ncmds = struct.unpack_from("<IIII", b, 4)
    defined, undefined = [], []
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", b, off)
        if cmd == 0x2:  # LC_SYMTAB
            symoff, nsyms, stroff, _strsize = struct.unpack_from("<IIII", b, off + 8)
            for i in range(nsyms):
                strx, ntype, _sect, _desc, _value = struct.unpack_from("<IBBHQ", b, symoff + 16 * i)
                if not ntype & 0x01 or ntype & 0xE0:  # not external, or a debug (stab) entry
                    continue
                name = _cstr(b, stroff + strx)
                name = name[1:] if name.startswith("_") else name  # Darwin's C-symbol prefix
                kind = ntype & 0x0E
                if kind == 0xE:
                    defined.append(name)
                elif kind == 0:
                    undefined.append(name)
        off += size
    return ObjectInfo("macho", _MACHO_CPUS.get(cputype, f"macho-cpu-{cputype:#x}"),
                      tuple(sorted(defined)), tuple(sorted(undefined)))


def check_object(blob: bytes, target, exports=()) -> ObjectInfo:
    """Verify blob is target's object format and architecture, exports `exports` and imports
    nothing but ALLOWED_IMPORTS; ObjectFormatError otherwise."""
    info = inspect_object(blob)
    arch = "aarch64" if target.is_aarch64 else target.arch
    if (info.format, info.arch) != (target.object_format, arch):
        raise ObjectFormatError(f"expected a {target.object_format} {arch} object for target {target.name}, "
                                f"got {info.format} {info.arch}")
    missing = [e for e in exports if e not in info.defined]
    if missing:
        raise ObjectFormatError(f"object does not define {', '.join(missing)} (defines {', '.join(info.defined)})")
    if info.foreign_imports:
        raise ObjectFormatError(f"object imports {', '.join(info.foreign_imports)}; a lutc kernel may only "
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
