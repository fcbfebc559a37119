"""Lowering of lutc arithmetic, comparisons and casts to LLVM, with Python semantics.

Integer division and remainder never trap: a zero divisor (and INT_MIN / -1) is replaced
by 1 before the instruction, because x86 `idiv` would kill the process.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ..ir import types as T


def _splat_like(b, like, value):
    if isinstance(like.type, ir.VectorType):
        return ir.Constant(like.type, [value] * like.type.count)
    return ir.Constant(like.type, value)


def _safe_divisor(b, dt, a, d):
    zero = _splat_like(b, d, 0)
    one = _splat_like(b, d, 1)
    bad = b.icmp_unsigned("==", d, zero)
    if dt.is_signed:
        int_min = _splat_like(b, a, -(1 << (dt.bits - 1)))
        minus1 = _splat_like(b, d, -1)
        bad = b.or_(bad, b.and_(b.icmp_signed("==", a, int_min), b.icmp_signed("==", d, minus1)))
    return b.select(bad, one, d)


def emit_binary(b, intr, kind, dt, x, y):
    if dt.is_float:
        if kind == "add":
            return b.fadd(x, y)
        if kind == "sub":
            return b.fsub(x, y)
        if kind == "mul":
            return b.fmul(x, y)
        if kind == "div":
            return b.fdiv(x, y)
        if kind == "floordiv":
            return intr.unary(b, "floor", b.fdiv(x, y))
        if kind == "rem":
            return b.fsub(x, b.fmul(intr.unary(b, "floor", b.fdiv(x, y)), y))
        if kind in ("min", "max"):
            return intr.call(b, "llvm.minnum" if kind == "min" else "llvm.maxnum", [x, y])
        raise NotImplementedError(kind)
    if kind == "add":
        return b.add(x, y)
    if kind == "sub":
        return b.sub(x, y)
    if kind == "mul":
        return b.mul(x, y)
    if kind in ("and", "or", "xor"):
        return {"and": b.and_, "or": b.or_, "xor": b.xor}[kind](x, y)
    if kind in ("shl", "shr"):
        amt = b.and_(y, _splat_like(b, y, dt.bits - 1))  # shift counts wrap, never poison
        if kind == "shl":
            return b.shl(x, amt)
        return b.ashr(x, amt) if dt.is_signed else b.lshr(x, amt)
    if kind in ("min", "max"):
        pre = ("s" if dt.is_signed else "u") + kind
        return intr.call(b, f"llvm.{pre}", [x, y])
    d = _safe_divisor(b, dt, x, y)
    if not dt.is_signed:
        return b.udiv(x, d) if kind in ("div", "floordiv") else b.urem(x, d)
    q, r = b.sdiv(x, d), b.srem(x, d)
    zero = _splat_like(b, r, 0)
    # Python floors: adjust when the remainder is non-zero and its sign differs from d's
    fix = b.and_(b.icmp_signed("!=", r, zero), b.icmp_signed("<", b.xor(r, d), zero))
    if kind == "div":
        return q
    if kind == "floordiv":
        return b.sub(q, b.zext(fix, q.type))
    return b.add(r, b.select(fix, d, zero))


_ICMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def emit_cmp(b, pred, dt, x, y):
    op = _ICMP[pred]
    if dt.is_float:
        return b.fcmp_unordered(op, x, y) if pred == "ne" else b.fcmp_ordered(op, x, y)
    if dt.is_signed:
        return b.icmp_signed(op, x, y)
    return b.icmp_unsigned(op, x, y)


def emit_unary(b, intr, kind, dt, x):
    if kind == "neg":
        return b.fneg(x) if dt.is_float else b.sub(_splat_like(b, x, 0), x)
    if kind == "not":
        return b.xor(x, _splat_like(b, x, -1 if dt.bits > 1 else 1))
    if kind == "abs":
        if dt.is_float:
            return intr.unary(b, "fabs", x)
        if not dt.is_signed:
            return x
        return intr.call(b, "llvm.abs", [x, ir.Constant(ir.IntType(1), 0)])
    return intr.unary(b, kind, x)


def emit_cast(b, intr, x, src, dst, lt):
    if src == dst:
        return x
    if dst == T.int1:
        zero = _splat_like(b, x, 0.0 if src.is_float else 0)
        return b.fcmp_unordered("!=", x, zero) if src.is_float else b.icmp_unsigned("!=", x, zero)
    if src.is_float and dst.is_float:
        return b.fpext(x, lt) if dst.bits > src.bits else b.fptrunc(x, lt)
    if src.is_float:
        name = "llvm.fptosi.sat" if dst.is_signed else "llvm.fptoui.sat"
        return intr.call(b, name, [x], ret=lt)
    if dst.is_float:
        return b.sitofp(x, lt) if src.is_signed else b.uitofp(x, lt)
    if dst.bits < src.bits:
        return b.trunc(x, lt)
    if dst.bits > src.bits:
        return b.sext(x, lt) if src.is_signed else b.zext(x, lt)
    return x
