"""Targets: a capability table per CPU (triple, cpu, features, vector width, byte shuffle)."""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass

from ..errors import LaunchError
from .toolchain import host_cpu, native_mismatch, parse_triple

__all__ = ["Target", "get_target", "target_names", "runnable", "linux_twin", "NativeOnlyError"]


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
        """The triple's architecture field as written ('x86_64', 'arm64')."""
        return parse_triple(self.triple).arch

    @property
    def is_x86(self) -> bool:
        return parse_triple(self.triple).family == "x86"

    @property
    def is_aarch64(self) -> bool:
        return parse_triple(self.triple).family == "aarch64"

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
        return parse_triple(self.triple).object_format

    @property
    def os(self) -> str:
        """'darwin', 'linux', 'windows' or the triple's OS field."""
        return parse_triple(self.triple).os

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
    h = host_cpu()
    feats = dict(h.features)
    features = ",".join(f"+{k}" for k in h.enabled)
    tr = parse_triple(h.triple)
    if tr.arch == "x86_64":
        if feats.get("avx512bw"):
            vbits = 512
        elif feats.get("avx2"):
            vbits = 256
        else:
            vbits = 128
        shuffle = "pshufb" if feats.get("ssse3") else None
    elif tr.family == "aarch64":
        vbits, shuffle = 128, "tbl" if feats.get("neon", True) else None
    else:
        vbits, shuffle = 128, None
    return Target("host", h.triple, h.cpu, features, vbits, shuffle, is_host=True)


class NativeOnlyError(LaunchError):
    """Something that needs a CPU of the target (running, timing) was asked of another machine."""


def runnable(target) -> Target:
    """`target` as one this process may execute (is_host=True); NativeOnlyError if it cannot run here."""
    t = get_target(target)
    why = native_mismatch(t)
    if why is not None:
        raise NativeOnlyError(
            f"cannot run {t.name} code on this machine: {why}. Here you can compile it "
            f"(lutc compile --target {t.name} --emit asm|obj) and check it under emulation (qemu-user, "
            "see docs/targets.md); to time it, run `lutc runner` on the device and pass --runner HOST:PORT, "
            "or rank schedules without a device with --estimate")
    return t if t.is_host else dataclasses.replace(t, is_host=True)


def linux_twin(target) -> Target:
    """The same cpu and features with a Linux triple: ELF code that qemu-user can execute.

    Used to check m2 code under qemu-aarch64: instruction selection is the same; what
    differs is the object format and the ABI details of Darwin (x18 is reserved there).
    """
    t = get_target(target)
    if t.os == "linux":
        return t
    arch = parse_triple(t.triple).canonical_arch
    return dataclasses.replace(t, name=f"{t.name}-elf", triple=f"{arch}-unknown-linux-gnu", is_host=False)


HOST_TARGET_ENV = "LUTC_HOST_TARGET"   # e.g. x86-avx2: "host" means that named target (it must run here)


def target_names():
    return ["host"] + sorted(_NAMED)


def get_target(target) -> Target:
    """Resolve a Target, a registered name, or 'host'."""
    if isinstance(target, Target):
        return target
    if target in (None, "host", "native"):
        name = os.environ.get(HOST_TARGET_ENV)
        return runnable(name) if name else _host()
    if target not in _NAMED:
        raise ValueError(f"unknown target {target!r}; known targets: {', '.join(target_names())}")
    return _NAMED[target]
