"""Expressions of a kernel: names, constants, containers, attributes, subscripts and operators."""
from __future__ import annotations

import ast
import builtins as _py

from ..ir import types as T
from . import registry
from .values import fold_cmp, is_ir

BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div",
          ast.FloorDiv: "floordiv", ast.Mod: "rem", ast.BitAnd: "and", ast.BitOr: "or",
          ast.BitXor: "xor", ast.LShift: "shl", ast.RShift: "shr"}
_CMPS = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}


class Expressions:
    """Mixin of CodeGenerator: the visit_* methods for expressions other than calls."""

    def visit_Constant(self, node):
        return node.value

    def visit_Name(self, node):
        return self.lookup_name(node, node.id)

    def visit_Tuple(self, node):
        return tuple(self.visit(e) for e in node.elts)

    def visit_List(self, node):
        return [self.visit(e) for e in node.elts]

    def visit_ListComp(self, node):
        if len(node.generators) != 1 or node.generators[0].ifs:
            raise self.error(node, "only simple list comprehensions over static ranges are supported")
        gen = node.generators[0]
        seq = self.visit(gen.iter)
        if is_ir(seq):
            raise self.error(gen.iter, "list comprehensions must iterate over compile-time values")
        out = []
        saved = dict(self.scope)
        for v in seq:
            self.assign(gen.target, v)
            out.append(self.visit(node.elt))
        self.scope = saved
        return out

    def visit_Attribute(self, node):
        base = self.visit(node.value)
        if is_ir(base):
            if node.attr == "dtype":
                return T.scalar_of(base.type)
            method = registry.bound_method(node.attr, base)
            if method is not None:
                return method
            raise self.error(node, f"kernel values have no attribute '{node.attr}'")
        try:
            return getattr(base, node.attr)
        except AttributeError:
            raise self.error(node, f"'{type(base).__name__}' object has no attribute '{node.attr}'") from None

    def visit_Subscript(self, node):
        base = self.visit(node.value)
        if is_ir(base):
            sl = node.slice
            if isinstance(sl, ast.Tuple) or _is_none(sl):
                return self._index_axes(node, base, sl.elts if isinstance(sl, ast.Tuple) else [sl])
            if not isinstance(sl, ast.Slice) or sl.step is not None:
                raise self.error(node, "blocks support only constant slices x[a:b]")
            size = base.type.size if isinstance(base.type, T.BlockType) else None
            if size is None:
                raise self.error(node, "cannot slice a scalar")
            lo = 0 if sl.lower is None else self.visit(sl.lower)
            hi = size if sl.upper is None else self.visit(sl.upper)
            if is_ir(lo) or is_ir(hi):
                raise self.error(node, "slice bounds must be compile-time constants")
            return self.b.slice(base, lo, hi - lo)
        idx = self.visit(node.slice)
        if is_ir(idx):
            raise self.error(node, "indexing a Python list or tuple needs a constant index")
        return base[idx]

    def _index_axes(self, node, base, elts):
        """x[:, None], x[None, :], x[None], x[:, :]: new axes of size 1 on a block (no data moves)."""
        shape = list(T.block_shape(base.type))
        if sum(1 for e in elts if not _is_none(e)) != len(shape):
            raise self.error(node, f"index {len(elts)} axes of a block of shape {tuple(shape)}: "
                                   "use ':' for each axis and None for new ones")
        out, i = [], 0
        for e in elts:
            if _is_none(e):
                out.append(1)
                continue
            if not (isinstance(e, ast.Slice) and e.lower is None and e.upper is None and e.step is None):
                raise self.error(node, "a block indexed along several axes takes only ':' and None")
            out.append(shape[i])
            i += 1
        if len(out) > 2:
            raise self.error(node, f"blocks have at most 2 axes; this index makes {len(out)}")
        if not shape:
            return self.b.splat(base, tuple(out))
        return self.b.reshape(base, tuple(out))

    def visit_Slice(self, node):
        return slice(*(None if x is None else self.visit(x) for x in (node.lower, node.upper, node.step)))

    def visit_BinOp(self, node):
        kind = BINOPS.get(type(node.op))
        left, right = self.visit(node.left), self.visit(node.right)
        if kind is None:
            if not is_ir(left) and not is_ir(right) and isinstance(node.op, ast.Pow):
                return left ** right
            raise self.error(node, f"unsupported operator {type(node.op).__name__}")
        if isinstance(left, list) and kind == "mul" and not is_ir(right):
            return left * right
        return self.binop(kind, left, right)

    def visit_UnaryOp(self, node):
        v = self.visit(node.operand)
        if not is_ir(v):
            return {ast.USub: lambda x: -x, ast.UAdd: lambda x: +x, ast.Not: lambda x: not x,
                    ast.Invert: lambda x: ~x}[type(node.op)](v)
        if isinstance(node.op, ast.USub):
            return self.b.unary("neg", v)
        if isinstance(node.op, ast.UAdd):
            return v
        if isinstance(node.op, ast.Invert):
            return self.b.unary("not", v)
        return self.b.binary("xor", self.b.cmp("ne", v, self.to_ir(0, like=v)), self.to_ir(True))

    def visit_BoolOp(self, node):
        vals = [self.visit(v) for v in node.values]
        if not any(is_ir(v) for v in vals):
            return _py.all(vals) if isinstance(node.op, ast.And) else _py.any(vals)
        kind = "and" if isinstance(node.op, ast.And) else "or"
        acc = self.to_ir(vals[0])
        for v in vals[1:]:
            acc = self.b.binary(kind, acc, self.to_ir(v))
        if T.scalar_of(acc.type) != T.int1:
            raise self.error(node, "'and'/'or' on kernel values need boolean operands")
        return acc

    def visit_Compare(self, node):
        if len(node.ops) != 1:
            left = self.visit(node.left)
            rights = [self.visit(c) for c in node.comparators]
            if any(is_ir(x) for x in [left] + rights):
                raise self.error(node, "chained comparisons are not supported on kernel values")
            vals = [left] + rights
            return _py.all(fold_cmp(_CMPS[type(o)], a, b) for o, a, b in zip(node.ops, vals, vals[1:]))
        op = type(node.ops[0])
        left, right = self.visit(node.left), self.visit(node.comparators[0])
        if op in (ast.Is, ast.IsNot, ast.In, ast.NotIn):
            if is_ir(left) or is_ir(right):
                raise self.error(node, "is / in comparisons need compile-time values")
            return {ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b,
                    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}[op](left, right)
        return self.cmp(_CMPS[op], left, right)

    def visit_IfExp(self, node):
        cond = self.visit(node.test)
        if is_ir(cond):
            a, b = self.visit(node.body), self.visit(node.orelse)
            return self.b.select(cond, self.to_ir(a, like=b if is_ir(b) else None),
                                 self.to_ir(b, like=a if is_ir(a) else None))
        return self.visit(node.body) if cond else self.visit(node.orelse)

    def visit_JoinedStr(self, node):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            else:
                parts.append(str(self.visit(v.value)))
        return "".join(parts)


def _is_none(e):
    return isinstance(e, ast.Constant) and e.value is None
