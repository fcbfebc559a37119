"""tl.prefetch and Schedule.prefetch: lut_gemm with software prefetch computes bit for bit what it
computes without, and the prefetch instruction is in the generated loop on x86 and AArch64."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lutc
import lutc.language as tl
from lutc import Schedule
from lutc.errors import CompilationError
from lutc.ir import types as T
from lutc.kernels.compiled import CompiledKernel
from test_asm import _loop_bodies
from test_kernels import _case, problems


@settings(max_examples=20, deadline=None)
@given(problems(), st.sampled_from([1, 2, 4]), st.sampled_from(["host", "x86-avx2"]))
def test_prefetch_is_bit_identical_to_none(p, pf, target):
    bits, gs, knobs, N, K, M, seed, method, xkind = p
    qw, x = _case(*p)
    ys = [lutc.compile(Schedule.make(bits=bits, group_size=gs, **dict(knobs, prefetch=d)), target=target)(x, qw)
          for d in (0, pf)]
    np.testing.assert_array_equal(ys[0], ys[1])


@pytest.mark.parametrize("target,insn", [("host", r"prefetcht0"), ("x86-avx2", r"prefetcht0"),
                                         ("aarch64-linux", r"prfm\s+pldl1keep")])
def test_prefetch_is_in_the_group_loop(target, insn):
    s = Schedule.make(bits=2, group_size=64, prefetch=2)
    asm = CompiledKernel(s, target).emit("asm")
    assert any(re.search(insn, body) for body in _loop_bodies(asm)), asm[:2000]
    off = CompiledKernel(s.replace(prefetch=0), target).emit("asm")
    assert not re.search(r"prefetch|prfm", off)


@lutc.jit
def _copy(x, y, PF: tl.constexpr, LOC: tl.constexpr):
    for i in range(0, 64, 16):
        tl.prefetch(x + i + PF, LOC)
        tl.store(y + i + tl.arange(0, 16), tl.load(x + i + tl.arange(0, 16)))


_SIG = dict(x=T.PointerType(T.float32), y=T.PointerType(T.float32))


@pytest.mark.parametrize("loc,insn", [(0, "prefetchnta"), (1, "prefetcht2"), (2, "prefetcht1"), (3, "prefetcht0")])
def test_locality_picks_the_x86_instruction(loc, insn):
    asm = _copy.emit(_SIG, dict(PF=1000, LOC=loc), target="x86-avx2")
    assert re.search(rf"\b{insn}\b", asm)


def test_prefetch_runs_and_is_a_no_op_for_results():
    x = np.arange(64, dtype=np.float32)
    y = np.zeros(64, np.float32)
    _copy[(1,)](x, y, PF=1 << 20, LOC=0)          # far past the buffer: a prefetch never faults
    np.testing.assert_array_equal(x, y)


@lutc.jit
def _block_pointer(x, L: tl.constexpr):
    tl.prefetch(x + tl.arange(0, 16))


@lutc.jit
def _bad_locality(x, L: tl.constexpr):
    tl.prefetch(x, L)


@pytest.mark.parametrize("kernel,loc,msg", [(_block_pointer, 3, "scalar pointer"), (_bad_locality, 4, "0..3"),
                                            (_bad_locality, 1.5, "compile-time integer")])
def test_bad_prefetch_is_a_compile_error(kernel, loc, msg):
    with pytest.raises(CompilationError, match=msg):
        kernel.emit(dict(x=T.PointerType(T.float32)), dict(L=loc), target="x86-avx2")


def test_schedule_knob():
    assert Schedule.make(bits=2, group_size=64).prefetch == 0
    with pytest.raises(ValueError, match="prefetch"):
        Schedule.make(bits=2, group_size=64, prefetch=3)
    from lutc.tuning.space import Problem, describe, space_for
    assert space_for(Problem(2, 64, 1, 4096, 4096), 2)["prefetch"] == (0, 1, 2, 4, 8, 16)
    assert "pf2" in describe(Schedule.make(bits=2, group_size=64, prefetch=2))
