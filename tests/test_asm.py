"""Generated code really uses the byte-shuffle instruction in the hot loop, per target."""
import re

import pytest

import lutc
import lutc.language as tl
from lutc.backend.target import get_target
from lutc import Schedule
from lutc.kernels.compiled import CompiledKernel


def _loop_bodies(asm: str):
    """Text of the innermost loops: blocks that branch back to an earlier label."""
    lines = asm.splitlines()
    labels = {}
    for i, ln in enumerate(lines):
        m = re.match(r"^(\.?L?BB\d+_\d+|\.LBB\d+_\d+|LBB\d+_\d+):", ln)
        if m:
            labels[m.group(1)] = i
    bodies = []
    for i, ln in enumerate(lines):
        m = re.search(r"\s(j\w+|b\.\w+|b|cbnz|cbz|tbnz|tbz)\s+.*?((?:\.L|L)BB\d+_\d+)\s*$", ln)
        if m and m.group(2) in labels and labels[m.group(2)] < i:
            bodies.append("\n".join(lines[labels[m.group(2)]:i + 1]))
    return bodies


@pytest.mark.skipif(not get_target("host").is_x86, reason="host is not x86")
def test_host_inner_loop_uses_vpshufb():
    k = lutc.compile(Schedule.make(bits=2, group_size=128))
    loops = _loop_bodies(k.emit("asm"))
    assert loops, "no loop found in the gemm kernel"
    assert any("vpshufb" in body for body in loops)


@pytest.mark.parametrize("target,insn", [("x86-avx2", "vpshufb"), ("aarch64-linux", "tbl"),
                                         ("m2", "tbl")])
def test_cross_targets_inner_loop_uses_shuffle(target, insn):
    k = CompiledKernel(Schedule.make(bits=3, group_size=64), target)
    asm = k.emit("asm")
    loops = _loop_bodies(asm)
    assert any(re.search(rf"\b{insn}\b", body) for body in loops), asm[:2000]
    if target == "x86-avx2":
        assert "zmm" not in asm  # no AVX-512 on an AVX2 target



@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512"])
def test_pair_ratio_is_one_byte_broadcast(target):
    """W2's integer table ratio (a float's bits, gemm.round_i32) reaches vpmaddubsw by one vpbroadcastb
    from the vector register the float is in: no trip through a general register (vmovd) in the lookup loop."""
    from lutc.ops import default_schedule
    k = CompiledKernel(default_schedule(2, 128, 1, target), target)
    inner = min((b for b in _loop_bodies(k.emit("asm")) if "vpmaddubsw" in b), key=len)
    assert "vpbroadcastb" in inner and not re.search(r"\bvmovd\b", inner), inner

def test_portable_fallback_has_no_shuffle():
    k = CompiledKernel(Schedule.make(bits=2, group_size=64), "generic-x86")
    asm = k.emit("asm")
    assert "pshufb" not in asm


def test_cross_target_kernels_refuse_to_run():
    import numpy as np
    import quant
    qw = quant.quantize(np.ones((4, 32), np.float32), 2, 32, method="rtn")
    k = CompiledKernel(Schedule.make(bits=2, group_size=32), "aarch64-linux")
    with pytest.raises(lutc.LaunchError, match="compiled for aarch64-linux"):
        k(np.ones((1, 32), np.float32), qw)


# -- tl.dot: the instruction each target's lowering must use (tests/test_dot.py checks the results)
_DOT_SIG = {"b": "*i8", "c": "*i32", "M": "i32", "N": "i32", "K": "i32"}
_DOT_INSNS = r"\b(vpdpbusd|vpmaddubsw|vpmaddwd|pmaddwd|sdot|udot|usdot|sudot|smmla|usmmla)\b"


def _dot_asm(target, a="*u8", clamp=False, extra="", bm=4, b="*i8"):
    import dataclasses
    from test_dot import tile_dot
    t = get_target(target)
    if extra:
        t = dataclasses.replace(t, name=f"{target}{extra}", features=t.features + extra)
    return tile_dot.emit({"a": a, **_DOT_SIG, "b": b}, dict(BM=bm, BN=16, BK=32, CLAMP=int(clamp)), 2, t,
                         kind="asm")


@pytest.mark.parametrize("target,extra,a,clamp,insn,bm", [
    ("x86-avx2", "", "*u8", False, "vpmaddwd", 4),             # saturation-free: bytes widened to i16
    ("x86-avx2", "", "*i8", False, "vpmaddwd", 4),
    ("x86-avx2", "", "*u8", True, "vpmaddubsw|vpmaddwd", 4),   # B proven in [-64, 64]: no i16 saturation
    ("x86-avx2", ",+avxvnni", "*u8", False, "vpdpbusd", 4),    # AVX-VNNI ({vex} encoded, ymm)
    ("x86-avx2", ",+avxvnni", "*i8", False, "vpdpbusd", 4),    # s8 A: XOR 0x80 and a column-sum fix
    ("x86-avx512", "", "*u8", False, "vpmaddwd", 4),
    ("x86-avx512", "", "*u8", True, "vpmaddubsw|vpmaddwd", 4),  # zmm with AVX-512BW
    ("x86-avx512", ",+avx512vnni", "*i8", False, "vpdpbusd", 4),
    ("generic-x86", "", "*u8", False, "pmaddwd", 4),
    ("aarch64-linux", "", "*i8", False, "sdot", 4),
    ("aarch64-linux", "", "*u8", False, "sdot", 4),            # u8 A without i8mm: XOR 0x80 + sdot
    ("aarch64-linux", ",+i8mm", "*i8", False, "smmla", 4),     # 2 x 2 tiles of (2 x 8) x (8 x 2)
    ("aarch64-linux", ",+i8mm", "*u8", False, "usmmla", 4),
    ("aarch64-linux", ",+i8mm", "*u8", False, "usdot|sudot", 1),  # a single row: no mmla
    ("m2", "", "*i8", False, "sdot", 4),
])
def test_dot_instruction_per_target(target, extra, a, clamp, insn, bm):
    asm = _dot_asm(target, a, clamp, extra, bm)
    found = set(re.findall(_DOT_INSNS, asm))
    assert found and all(re.fullmatch(insn, f) for f in found), (target + extra, a, clamp, found)
    if target == "x86-avx2":
        assert "zmm" not in asm
    if clamp:
        assert "vpmaddubsw" in found
    if extra == ",+avx512vnni":
        assert re.search(r"vpdpbusd\s+.*zmm", asm)


@pytest.mark.parametrize("target,extra,clamp,insn,bm", [     # i8 A x u8 B: B is the unsigned operand
    ("x86-avx2", "", 0, "vpmaddwd", 4),
    ("x86-avx2", "", 2, "vpmaddubsw|vpmaddwd", 4),            # B & 127: vpmaddubsw(B, A) cannot saturate
    ("x86-avx2", ",+avxvnni", 0, "vpdpbusd", 4),
    ("x86-avx512", ",+avx512vnni", 0, "vpdpbusd", 4),
    ("aarch64-linux", "", 0, "sdot", 4),                        # B XOR 0x80 + a per-row fix
    ("aarch64-linux", ",+i8mm", 0, "usmmla", 4),                # C^T = B^T A^T with B first
    ("aarch64-linux", ",+i8mm", 0, "usdot|sudot", 1),
])
def test_signed_a_unsigned_b_instruction(target, extra, clamp, insn, bm):
    found = set(re.findall(_DOT_INSNS, _dot_asm(target, "*i8", clamp, extra, bm, b="*u8")))
    assert found and all(re.fullmatch(insn, f) for f in found), (target + extra, clamp, found)
    if clamp:
        assert "vpmaddubsw" in found


@lutc.jit
def bcast_dot(a, b, c, BM: tl.constexpr):
    """(BM, 32) i8 rows from memory x (32, 16) u8: A's 4-byte groups are only broadcast."""
    x = tl.reshape(tl.load(a + tl.arange(0, BM * 32)), (BM, 32))
    w = tl.reshape(tl.load(b + tl.arange(0, 32 * 16)), (32, 16))
    tl.store(c + tl.arange(0, BM)[:, None] * 16 + tl.arange(0, 16)[None, :], tl.dot(x, w))


@pytest.mark.skipif(not get_target("host").has("avx512vnni"), reason="host has no AVX-512 VNNI")
def test_signed_a_groups_fold_into_vpdpbusd_as_broadcast_loads():
    """Every vpdpbusd reads its activation group as an embedded {1to16} memory broadcast (a load
    uop), not a register shuffle (the port vpdpbusd also needs)."""
    asm = bcast_dot.emit({"a": "*i8", "b": "*u8", "c": "*i32"}, dict(BM=8), 1, get_target("host"), kind="asm")
    dots = [ln for ln in asm.splitlines() if "vpdpbusd" in ln]
    assert len(dots) == 8 * 8 and all("{1to16}" in ln and "zmm" in ln for ln in dots), dots[:4]


def test_dot_vpmaddubsw_only_with_a_proof():
    """Unclamped u8 x i8 could saturate vpmaddubsw (2 * 255 * -128 < -32768): never used."""
    assert "vpmaddubsw" not in _dot_asm("x86-avx2", "*u8", False)
    assert "vpmaddubsw" not in _dot_asm("x86-avx512", "*i8", False)


@pytest.mark.skipif(not get_target("host").has("avx512vnni"), reason="host has no AVX-512 VNNI")
def test_host_dot_uses_vpdpbusd():
    assert re.search(r"vpdpbusd\s+.*zmm", _dot_asm("host"))


def test_portable_dot_has_no_dot_instruction():
    import dataclasses
    from test_dot import tile_dot
    t = dataclasses.replace(get_target("generic-x86"), name="portable", features="+64bit")
    asm = tile_dot.emit({"a": "*i8", **_DOT_SIG}, dict(BM=4, BN=16, BK=32, CLAMP=False), 2, t, kind="asm")
    assert not re.findall(_DOT_INSNS, asm)


def test_avx2_dot_gemm_int16_form_inner_loop():
    """The AVX2 dot GEMM with the residual (dotgemm.act_i16): its hot loop is vpmaddwd on
    vpbroadcastd activation pairs loaded from memory, with no vpmaddubsw and no per-row address
    arithmetic (vpextrq / vpinsr*: the 2-D activation load keeps one base register)."""
    from lutc.ops import default_schedule
    s = default_schedule(4, 128, 128, "x86-avx2")
    assert s.path == "dot" and s.act_residual
    asm = CompiledKernel(s, "x86-avx2").emit("asm")
    hot = [b for b in _loop_bodies(asm) if b.count("vpmaddwd") >= 64 and "vmulps" not in b]
    assert hot, "no vpmaddwd loop"
    for b in hot:
        assert "vpmaddubsw" not in b and not re.search(r"\b(vpextrq|vpinsr[bdq])\b", b)
        assert re.search(r"vpbroadcastd\s+-?\d*\(%", b)
