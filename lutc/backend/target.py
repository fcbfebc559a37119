"""Targets: a capability table per CPU (triple, cpu, features, vector width, byte shuffle)."""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass

import llvmlite.binding as llvm

from ..errors import LaunchError


@functools.lru_cache(maxsize=None)
def init_llvm():
    """Initialize LLVM's targets once per process (all of them, for cross compilation)."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return True


@dataclass(frozen=True)
class Target:
    """What the backend needs to know about a CPU. `key` enters every cache key."""

    name: str
    triple: str
    cpu: str
    features: str            # LLVM feature string, e.g. "+avx2,+fma,+f16c"
    vector_bits: int         # widest integer SIMD register the code may use
    byte_shuffle: str | None  # "pshufb" (x86), "tbl" (AArch64) or None (portable fallback)
    is_host: bool = False

    @property
    def arch(self) -> str:
        return self.triple.split("-")[0]

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "i386", "i686")

    @property
    def is_aarch64(self) -> bool:
        return self.arch in ("aarch64", "arm64")

    def has(self, feature: str) -> bool:
        return f"+{feature}" in self.features.split(",")

    @property
    def shuffle_bytes_width(self) -> int:
        """Lanes per native byte-shuffle instruction (16, 32 or 64); 0 without one."""
        if self.byte_shuffle == "pshufb":
            if self.has("avx512bw") and self.vector_bits >= 512:
                return 64
            return 32 if self.has("avx2") else 16
        return 16 if self.byte_shuffle == "tbl" else 0

    @property
    def key(self) -> str:
        """The 'magic tuple' identifying generated code: triple, cpu and features.

        '|native' marks targets this process executes: compiled functions for them are loaded,
        so the in-memory cache must not hand them out for a cross-compile of the same code.
        """
        native = "|native" if self.is_host else ""
        return f"{self.triple}|{self.cpu}|{self.features}|{self.vector_bits}|{self.byte_shuffle}{native}"

    @property
    def object_format(self) -> str:
        return "macho" if "apple" in self.triple or "darwin" in self.triple else "elf"

    def target_machine(self, opt: int = 3, jit: bool = False):
        init_llvm()
        tgt = llvm.Target.from_triple(self.triple)
        return tgt.create_target_machine(cpu=self.cpu, features=self.features, opt=opt,
                                         reloc="pic" if not jit else "default",
                                         codemodel="jitdefault" if jit else "default")

    @property
    def os(self) -> str:
        """'darwin', 'linux', 'windows' or the triple's OS field."""
        t = self.triple.lower()
        if any(s in t for s in ("apple", "darwin", "macos")):
            return "darwin"
        for name in ("linux", "windows"):
            if name in t:
                return name
        parts = t.split("-")
        return parts[2] if len(parts) > 2 else "unknown"

    def describe(self) -> dict:
        return {"name": self.name, "triple": self.triple, "cpu": self.cpu,
                "vector_bits": self.vector_bits, "byte_shuffle": self.byte_shuffle,
                "object_format": self.object_format,
                "features": [f for f in self.features.split(",") if f.startswith("+")]}

    def to_dict(self) -> dict:
        """Every field, for sending a target description over the wire."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Target":
        """A Target from to_dict() output; never marked as the host (see `runnable`)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(d) - set(fields) or not all(k in d for k in ("name", "triple", "cpu", "features")):
            raise ValueError(f"not a target description: {sorted(d)}")
        t = cls(str(d["name"]), str(d["triple"]), str(d["cpu"]), str(d["features"]),
                int(d.get("vector_bits", 128)), d.get("byte_shuffle"), False)
        if t.byte_shuffle not in (None, "pshufb", "tbl"):
            raise ValueError(f"unknown byte_shuffle {t.byte_shuffle!r}")
        return t

    @staticmethod
    def host() -> "Target":
        return _host()


_X86_BASE = "+64bit,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16"
_X86_AVX2 = _X86_BASE + ",+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe"
_X86_AVX512 = _X86_AVX2 + ",+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx512cd"
_ARM_V82 = "+neon,+fp-armv8,+v8.2a,+fullfp16,+dotprod,+crc,+lse,+rdm"

_NAMED = {
    "x86-avx2": Target("x86-avx2", "x86_64-unknown-linux-gnu", "haswell", _X86_AVX2, 256, "pshufb"),
    "x86-avx512": Target("x86-avx512", "x86_64-unknown-linux-gnu", "skylake-avx512", _X86_AVX512,
                         512, "pshufb"),
    "aarch64-linux": Target("aarch64-linux", "aarch64-unknown-linux-gnu", "cortex-a76", _ARM_V82,
                            128, "tbl"),
    "m2": Target("m2", "arm64-apple-macosx13.0.0", "apple-m2", _ARM_V82 + ",+fp16fml,+sha3",
                 128, "tbl"),
    "generic-x86": Target("generic-x86", "x86_64-unknown-linux-gnu", "x86-64", "+64bit,+sse2",
                          128, None),
}


@functools.lru_cache(maxsize=1)
def _host() -> Target:
    init_llvm()
    triple = llvm.get_process_triple()
    cpu = llvm.get_host_cpu_name()
    feats = llvm.get_host_cpu_features()
    enabled = sorted(k for k, v in feats.items() if v)
    features = ",".join(f"+{k}" for k in enabled)
    arch = triple.split("-")[0]
    if arch == "x86_64":
        if feats.get("avx512bw"):
            vbits = 512
        elif feats.get("avx2"):
            vbits = 256
        else:
            vbits = 128
        shuffle = "pshufb" if feats.get("ssse3") else None
    elif arch in ("aarch64", "arm64"):
        vbits, shuffle = 128, "tbl" if feats.get("neon", True) else None
    else:
        vbits, shuffle = 128, None
    return Target("host", triple, cpu, features, vbits, shuffle, is_host=True)


class NativeOnlyError(LaunchError):
    """Something that needs a CPU of the target (running, timing) was asked of another machine."""


_ARCH_LEVEL = re.compile(r"^v\d+(\.\d+)?a$")  # 'v8.2a': implied by the cpu, not reported by host detection


def _norm_arch(arch: str) -> str:
    return "aarch64" if arch in ("arm64", "aarch64") else arch


def native_mismatch(target) -> str | None:
    """Why code compiled for `target` cannot run on this machine, or None when it can.

    Compares architecture, OS (object format and ABI) and every '+feature' of the target
    against what LLVM detects on this CPU. Features a `cpu` name implies without listing
    them are not checked: named targets list what their code relies on.
    """
    t = get_target(target)
    if t.is_host:
        return None
    host = _host()
    if _norm_arch(t.arch) != _norm_arch(host.arch):
        return f"its code is {_norm_arch(t.arch)} ({t.triple}) and this machine is {_norm_arch(host.arch)}"
    if t.os != host.os:
        return f"it targets {t.os} ({t.object_format} objects) and this machine runs {host.os}"
    have = {f[1:] for f in host.features.split(",") if f.startswith("+")}
    want = [f[1:] for f in t.features.split(",") if f.startswith("+") and not _ARCH_LEVEL.match(f[1:])]
    if not have:
        return None if t.cpu == host.cpu else f"LLVM cannot list this CPU's features ({host.cpu})"
    missing = [f for f in want if f not in have]
    if missing:
        return f"this CPU ({host.cpu}) lacks {', '.join(missing)}"
    return None


def runnable(target) -> Target:
    """`target` as one this process may execute (is_host=True); NativeOnlyError if it cannot run here."""
    t = get_target(target)
    why = native_mismatch(t)
    if why is not None:
        raise NativeOnlyError(
            f"cannot run {t.name} code on this machine: {why}. Here you can compile it "
            f"(lutc compile --target {t.name} --emit asm|obj) and check it under emulation "
            "(tests/test_aarch64_emulated.py); to time it, run `lutc runner` on the device and "
            "pass --runner HOST:PORT, or rank schedules without a device with --estimate (see docs/targets.md)")
    return t if t.is_host else dataclasses.replace(t, is_host=True)


def linux_twin(target) -> Target:
    """The same cpu and features with a Linux triple: ELF code that qemu-user can execute.

    Used to check m2 code under qemu-aarch64: instruction selection is the same; what
    differs is the object format and the ABI details of Darwin (x18 is reserved there).
    """
    t = get_target(target)
    if t.os == "linux":
        return t
    arch = _norm_arch(t.arch)
    return dataclasses.replace(t, name=f"{t.name}-elf", triple=f"{arch}-unknown-linux-gnu", is_host=False)


def target_names():
    return ["host"] + sorted(_NAMED)


def get_target(target) -> Target:
    """Resolve a Target, a registered name, or 'host'."""
    if isinstance(target, Target):
        return target
    if target in (None, "host", "native"):
        return _host()
    if target not in _NAMED:
        raise ValueError(f"unknown target {target!r}; known targets: {', '.join(target_names())}")
    return _NAMED[target]
