"""Runtime support symbols that LLVM may call from generated code (compiler-rt builtins).

On CPUs without F16C, LLVM lowers half <-> float conversions to `__extendhfsf2` and
`__truncsfhf2`, which CPython processes do not provide. We build them here with IRBuilder
(branchless bit manipulation; float -> half rounds to nearest even) in their own engine and
register them with MCJIT.
"""
from __future__ import annotations

import functools

import llvmlite.binding as llvm
import llvmlite.ir as ir

from .toolchain import host_cpu, mcjit, target_machine

I16, I32 = ir.IntType(16), ir.IntType(32)
F16, F32 = ir.HalfType(), ir.FloatType()
_NAMES = {"__extendhfsf2": "extend", "__gnu_h2f_ieee": "extend",
          "__truncsfhf2": "trunc", "__gnu_f2h_ieee": "trunc"}


def _c(v, t=I32):
    return ir.Constant(t, v)


def _half_to_float(b: ir.IRBuilder, h):
    x = b.zext(b.bitcast(h, I16), I32)
    sign = b.shl(b.and_(x, _c(0x8000)), _c(16))
    exp = b.and_(b.lshr(x, _c(10)), _c(0x1F))
    mant = b.and_(x, _c(0x3FF))
    normal = b.or_(b.shl(b.add(exp, _c(112)), _c(23)), b.shl(mant, _c(13)))
    special = b.or_(_c(0x7F800000), b.shl(mant, _c(13)))                # inf / nan
    sub = b.bitcast(b.fmul(b.uitofp(mant, F32), ir.Constant(F32, 2.0 ** -24)), I32)  # exact
    bits = b.select(b.icmp_unsigned("==", exp, _c(0x1F)), special,
                    b.select(b.icmp_unsigned("==", exp, _c(0)), sub, normal))
    return b.bitcast(b.or_(bits, sign), F32)


def _float_to_half(b: ir.IRBuilder, f):
    u = b.bitcast(f, I32)
    sign = b.and_(u, _c(0x80000000))
    a = b.xor(u, sign)
    is_big = b.icmp_unsigned(">=", a, _c((127 + 16) << 23))              # >= 65536: inf or nan
    big = b.select(b.icmp_unsigned(">", a, _c(255 << 23)), _c(0x7E00), _c(0x7C00))
    magic = _c(((127 - 15) + (23 - 10) + 1) << 23)                      # subnormal alignment
    small = b.sub(b.bitcast(b.fadd(b.bitcast(a, F32), b.bitcast(magic, F32)), I32), magic)
    odd = b.and_(b.lshr(a, _c(13)), _c(1))
    norm = b.lshr(b.add(b.add(a, _c(((15 - 127) << 23) + 0xFFF)), odd), _c(13))
    res = b.select(is_big, big, b.select(b.icmp_unsigned("<", a, _c(113 << 23)), small, norm))
    res = b.or_(res, b.lshr(sign, _c(16)))
    return b.bitcast(b.trunc(res, I16), F16)


def build_support_module(triple: str) -> ir.Module:
    m = ir.Module("lutc_support")
    m.triple = triple
    for name, kind in _NAMES.items():
        if kind == "extend":
            fn = ir.Function(m, ir.FunctionType(F32, [F16]), name)
            b = ir.IRBuilder(fn.append_basic_block())
            b.ret(_half_to_float(b, fn.args[0]))
        else:
            fn = ir.Function(m, ir.FunctionType(F16, [F32]), name)
            b = ir.IRBuilder(fn.append_basic_block())
            b.ret(_float_to_half(b, fn.args[0]))
    return m


@functools.lru_cache(maxsize=1)
def register_support_symbols():
    """Compile the support module for the host once and register its symbols with MCJIT."""
    triple = host_cpu().triple
    # baseline x86-64/AArch64 features: the code must not itself need F16C
    engine = mcjit(build_support_module(triple), target_machine(triple, opt=2))
    for name in _NAMES:
        llvm.add_symbol(name, engine.get_function_address(name))
    return engine  # kept alive by the cache for the life of the process


SUPPORT_SYMBOLS = frozenset(_NAMES)
