"""The Python builtins a kernel may use, and what each means there.

`min`/`max` fold any mix of constants and kernel values lane-wise, `abs` works on both, `range` is
a real loop in a `for` statement, `for` over `enumerate`/`zip` is unrolled, and the rest run as
in Python on compile-time values. Any other Python builtin is a compile error.
"""
from __future__ import annotations

import ast
import builtins as _py

from ..ir import Value
from ..ir import types as T
from .registry import builtin, compile_time, loop, unrolled


def _fold(op, py_fn):
    def lower(gen, node, *args, **kwargs):
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])  # min(iterable)
        if not any(isinstance(a, Value) for a in args):
            return py_fn(*args, **kwargs)
        if kwargs:
            raise gen.error(node, f"{op}() on kernel values takes no keyword arguments")
        if len(args) < 2:
            raise gen.error(node, f"{op}() of one kernel value: use tl.{op}(x) to reduce a block")
        acc = args[0]
        for a in args[1:]:
            acc = gen.binop(op, acc, a)
        return acc
    return lower


builtin(_py.min)(_fold("min", _py.min))
builtin(_py.max)(_fold("max", _py.max))


@builtin(_py.abs)
def py_abs(gen, node, x):
    return gen.b.unary("abs", x) if isinstance(x, Value) else _py.abs(x)


compile_time(_py.range, _py.len, _py.int, _py.float, _py.bool, _py.tuple, _py.list, _py.enumerate,
             _py.zip, T.DType)


@loop(_py.range)
def dynamic_range(gen, node, *args):
    """`for i in range(...)`: a real loop (variables the body changes are carried through it)."""
    it = node.iter
    if not isinstance(node.target, ast.Name):
        raise gen.error(node.target, "a range loop variable must be a plain name")
    if not 1 <= len(args) <= 3:
        raise gen.error(it, "range() takes 1 to 3 arguments")
    lo, hi, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) == 3 else 1)
    if not isinstance(step, Value) and step <= 0:
        raise gen.error(it, "range() step must be a positive constant")
    if isinstance(step, Value):
        raise gen.error(it, "range() step must be a compile-time constant")
    gen.dynamic_for(node, [gen.b.cast(gen.to_ir(v), T.int32) for v in (lo, hi, step)])


unrolled(_py.enumerate, _py.zip)
