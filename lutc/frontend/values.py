"""Kernel values and compile-time values: weak typing of Python constants, and the arithmetic
and comparisons that fold when both sides are constants."""
from __future__ import annotations

import builtins as _py

from ..ir import IRTypeError, Value
from ..ir import types as T

_PY_BINOPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
              "div": lambda a, b: a / b, "floordiv": lambda a, b: a // b, "rem": lambda a, b: a % b,
              "and": lambda a, b: a & b, "or": lambda a, b: a | b, "xor": lambda a, b: a ^ b,
              "shl": lambda a, b: a << b, "shr": lambda a, b: a >> b,
              "min": _py.min, "max": _py.max}
_PY_CMPS = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
            "ge": lambda a, b: a >= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b}


def is_ir(v) -> bool:
    return isinstance(v, Value)


def fold_cmp(pred, a, b):
    """A comparison of two compile-time values."""
    return _PY_CMPS[pred](a, b)


class Values:
    """Mixin of CodeGenerator: turning constants into IR and combining two operands."""

    def to_ir(self, v, like=None) -> Value:
        """Materialize a Python constant as IR, typed after `like` when given (weak typing)."""
        if is_ir(v):
            return v
        if isinstance(v, bool):
            return self.b.const(v, T.int1)
        if isinstance(v, int):
            if like is not None:
                dt = T.scalar_of(like.type)
                if isinstance(dt, T.DType) and dt != T.int1:
                    try:
                        return self.b.const(v, dt)
                    except IRTypeError:
                        if dt.is_float:
                            raise
                return self.b.const(v, T.int32 if -2**31 <= v < 2**31 else T.int64)
            return self.b.const(v, T.int32 if -2**31 <= v < 2**31 else T.int64)
        if isinstance(v, float):
            dt = T.scalar_of(like.type) if like is not None else None
            return self.b.const(v, dt if isinstance(dt, T.DType) and dt.is_float else T.float32)
        raise IRTypeError(f"cannot use a Python {type(v).__name__} ({v!r}) as a kernel value")

    def binop(self, kind, a, b):
        if not is_ir(a) and not is_ir(b):
            return _PY_BINOPS[kind](a, b)
        if kind == "add" and is_ir(a) and T.is_pointer(a.type):
            return self.b.addptr(a, self.to_ir(b))
        if kind == "add" and is_ir(b) and T.is_pointer(b.type):
            return self.b.addptr(b, self.to_ir(a))
        a_ir = self.to_ir(a, like=b if is_ir(b) else None)
        b_ir = self.to_ir(b, like=a_ir)
        if kind == "div":
            dt = T.promote(T.scalar_of(a_ir.type), T.scalar_of(b_ir.type))
            if not dt.is_float:
                a_ir, b_ir = self.b.cast(a_ir, T.float32), self.b.cast(b_ir, T.float32)
        return self.b.binary(kind, a_ir, b_ir)

    def cmp(self, pred, a, b):
        if not is_ir(a) and not is_ir(b):
            return fold_cmp(pred, a, b)
        a_ir = self.to_ir(a, like=b if is_ir(b) else None)
        return self.b.cmp(pred, a_ir, self.to_ir(b, like=a_ir))
