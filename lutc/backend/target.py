"""Targets: a capability table per CPU (triple, cpu, features, vector width, byte shuffle)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import llvmlite.binding as llvm


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
        """The 'magic tuple' identifying generated code: triple, cpu and features."""
        return f"{self.triple}|{self.cpu}|{self.features}|{self.vector_bits}|{self.byte_shuffle}"

    @property
    def object_format(self) -> str:
        return "macho" if "apple" in self.triple or "darwin" in self.triple else "elf"

    def target_machine(self, opt: int = 3, jit: bool = False):
        init_llvm()
        tgt = llvm.Target.from_triple(self.triple)
        return tgt.create_target_machine(cpu=self.cpu, features=self.features, opt=opt,
                                         reloc="pic" if not jit else "default",
                                         codemodel="jitdefault" if jit else "default")

    def describe(self) -> dict:
        return {"name": self.name, "triple": self.triple, "cpu": self.cpu,
                "vector_bits": self.vector_bits, "byte_shuffle": self.byte_shuffle,
                "features": [f for f in self.features.split(",") if f.startswith("+")]}

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
