"""The host toolchain: the one module that drives LLVM's machine layer (as numba's CPUCodegen).

It alone initializes LLVM, parses target triples, detects this machine's CPU, builds every
TargetMachine, runs the optimization pipeline, emits objects and assembly, creates MCJIT
engines, decides whether code for a target runs on this machine, and reads the symbols of the
object files LLVM emits. Everything else (targets, kernels, the thread pool, the fp16 support
module, the runtime's launch lists, the tuner and the remote runner) goes through it.
"""
from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass

import llvmlite.binding as llvm

__all__ = ["init_llvm", "Triple", "parse_triple", "HostCPU", "host_cpu", "target_machine", "host_jit_machine",
           "kernel_target_machine", "optimize", "parse_and_optimize", "emit_object", "emit_assembly",
           "mcjit", "mcjit_object", "native_mismatch", "runs_here", "ObjectFormatError", "ObjectInfo",
           "inspect_object"]


@functools.lru_cache(maxsize=None)
def init_llvm():
    """Initialize LLVM's targets once per process (all of them, for cross compilation)."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return True


# ----------------------------------------------------------------------------- triples

_X86 = ("x86_64", "amd64", "i386", "i486", "i586", "i686")
_AARCH64 = ("aarch64", "arm64", "arm64e")


@dataclass(frozen=True)
class Triple:
    """What lutc reads from a target triple."""

    arch: str       # the architecture field as written: 'x86_64', 'arm64', 'aarch64'
    family: str     # 'x86', 'aarch64', or `arch` for any other architecture
    os: str         # 'darwin', 'linux', 'windows' or the triple's OS field

    @property
    def canonical_arch(self) -> str:
        """The architecture as object files name it: 'aarch64' for arm64, 'x86_64' for amd64."""
        if self.family == "aarch64":
            return "aarch64"
        return "x86_64" if self.arch.lower() in ("x86_64", "amd64") else self.arch

    @property
    def object_format(self) -> str:
        return "macho" if self.os == "darwin" else "elf"


@functools.lru_cache(maxsize=None)
def parse_triple(triple: str) -> Triple:
    """The one parser of target triples ('arm64-apple-macosx13.0.0' -> arm64, aarch64, darwin)."""
    low = triple.lower()
    parts = low.split("-")
    arch = triple.split("-")[0]
    family = "x86" if parts[0] in _X86 else "aarch64" if parts[0] in _AARCH64 else arch
    if any(s in low for s in ("apple", "darwin", "macos")):
        os_name = "darwin"
    else:
        os_name = next((n for n in ("linux", "windows") if n in low),
                       parts[2] if len(parts) > 2 else "unknown")
    return Triple(arch, family, os_name)


# ----------------------------------------------------------------------------- this machine

@dataclass(frozen=True)
class HostCPU:
    """This process's triple and CPU as LLVM detects them."""

    triple: str
    cpu: str
    features: tuple     # ((name, enabled), ...) sorted by name; empty when LLVM cannot list them

    @property
    def enabled(self) -> list:
        return [k for k, v in self.features if v]

    @property
    def llvm_features(self) -> str:
        """Every detected feature, '+on' and '-off' (llvmlite's FeatureMap.flatten())."""
        return ",".join(f"{'+' if v else '-'}{k}" for k, v in self.features)


@functools.lru_cache(maxsize=1)
def host_cpu() -> HostCPU:
    init_llvm()
    try:
        feats = tuple(sorted(llvm.get_host_cpu_features().items()))
    except RuntimeError:
        feats = ()
    return HostCPU(llvm.get_process_triple(), llvm.get_host_cpu_name(), feats)


# ----------------------------------------------------------------------------- target machines

def target_machine(triple: str | None = None, cpu: str = "", features: str = "", *, opt: int = 2,
                   jit: bool = False, reloc: str = "default", codemodel: str = "jitdefault"):
    """An LLVM TargetMachine (llvmlite's defaults unless told); `triple` None: this process's."""
    init_llvm()
    tgt = llvm.Target.from_triple(triple or llvm.get_process_triple())
    return tgt.create_target_machine(cpu=cpu, features=features, opt=opt, reloc=reloc,
                                     codemodel=codemodel, jit=jit)


def kernel_target_machine(target, opt: int = 3, jit: bool = False):
    """The machine kernels are compiled with: the target's triple, cpu and features; position
    independent code in the default code model for objects, JIT settings for loading them."""
    return target_machine(target.triple, target.cpu, target.features, opt=opt, jit=jit,
                          reloc="default" if jit else "pic", codemodel="jitdefault" if jit else "default")


def host_jit_machine(opt: int = 2):
    """This CPU with every detected feature, for code JITted into this process only (the pool)."""
    h = host_cpu()
    return target_machine(h.triple, h.cpu, h.llvm_features, opt=opt, jit=True)


# ----------------------------------------------------------------------------- optimize, emit, JIT

def optimize(mod, tm, speed_level: int, vectorize: bool = False):
    """Give the parsed module `tm`'s triple and data layout and run LLVM's new-pass-manager
    pipeline at `speed_level` (with the loop and SLP vectorizers forced on if `vectorize`)."""
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    if vectorize:
        pto.loop_vectorization = True
        pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod


def _parse(ir_module, triple: str | None = None):
    init_llvm()
    mod = llvm.parse_assembly(str(ir_module))
    if triple is not None:
        mod.triple = triple
    mod.verify()
    return mod


def parse_and_optimize(ir_module, target, opt: int = 3, jit: bool = False):
    """Parse a llvmlite.ir module, verify it, and run LLVM's O3 pipeline for `target`."""
    mod = _parse(ir_module, target.triple)
    tm = kernel_target_machine(target, opt=opt, jit=jit)
    return optimize(mod, tm, opt, vectorize=True), tm


def emit_object(mod, tm) -> bytes:
    return tm.emit_object(mod)


def emit_assembly(mod, tm) -> str:
    return tm.emit_assembly(mod)


def mcjit(module, tm=None, speed_level: int | None = None):
    """Parse, verify and JIT a llvmlite.ir `module` with MCJIT for this process (or `tm`); return
    the engine. With `speed_level`, the module is first optimized for `tm` at that level. Keep the
    engine alive as long as any of its function addresses is used."""
    mod = _parse(module)
    tm = tm if tm is not None else target_machine(jit=True)
    if speed_level is not None:
        optimize(mod, tm, speed_level)
    return _finalize(llvm.create_mcjit_compiler(mod, tm))


def mcjit_object(obj: bytes, target):
    """An MCJIT engine holding the relocatable object `obj` compiled for `target`."""
    init_llvm()
    empty = llvm.parse_assembly("")
    empty.triple = target.triple
    engine = llvm.create_mcjit_compiler(empty, kernel_target_machine(target, jit=True))
    engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    return _finalize(engine)


def _finalize(engine):
    engine.finalize_object()
    return engine


# ----------------------------------------------------------------------------- runs here?

_ARCH_LEVEL = re.compile(r"^v\d+(\.\d+)?a$")  # 'v8.2a': implied by the cpu, not reported by host detection


def native_mismatch(target) -> str | None:
    """Why code compiled for `target` (a lutc.Target) cannot run on this machine, or None
    when it can: the one "runs here" check.

    Compares architecture, OS (object format and ABI) and every '+feature' of the target
    against what LLVM detects on this CPU. Features a `cpu` name implies without listing
    them are not checked: named targets list what their code relies on.
    """
    if target.is_host:
        return None
    host = host_cpu()
    t, h = parse_triple(target.triple), parse_triple(host.triple)
    if t.canonical_arch != h.canonical_arch:
        return f"its code is {t.canonical_arch} ({target.triple}) and this machine is {h.canonical_arch}"
    if t.os != h.os:
        return f"it targets {t.os} ({t.object_format} objects) and this machine runs {h.os}"
    have = set(host.enabled)
    want = [f[1:] for f in target.features.split(",") if f.startswith("+") and not _ARCH_LEVEL.match(f[1:])]
    if not have:
        return None if target.cpu == host.cpu else f"LLVM cannot list this CPU's features ({host.cpu})"
    missing = [f for f in want if f not in have]
    if missing:
        return f"this CPU ({host.cpu}) lacks {', '.join(missing)}"
    return None


def runs_here(target) -> bool:
    """Whether code for `target` can execute in this process (native_mismatch finds no reason)."""
    return native_mismatch(target) is None


# ----------------------------------------------------------------------------- object files

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


def inspect_object(blob: bytes) -> ObjectInfo:
    """Parse a 64-bit little-endian ELF or Mach-O relocatable object's header and symbol table
    (the one object reader)."""
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
