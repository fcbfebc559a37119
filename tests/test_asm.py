"""Generated code really uses the byte-shuffle instruction in the hot loop, per target."""
import re

import pytest

import lutc
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
