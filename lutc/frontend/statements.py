"""Statements of a kernel: assignments, return and assert, static and dynamic if, for loops."""
from __future__ import annotations

import ast

from ..ir import Value
from ..ir import types as T
from . import registry
from .expressions import BINOPS
from .values import is_ir


class Return(Exception):
    """A `return` statement unwinding the body it ends (caught by the caller or the kernel)."""

    def __init__(self, value):
        self.value = value


def _assigned_names(stmts):
    """Names stored to anywhere in `stmts` (including `lst[i] = ...` on a list named lst)."""
    names = set()
    for st in stmts:
        for node in ast.walk(st):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                base = node.value
                if isinstance(base, ast.Name):
                    names.add(base.id)
    return names


class Statements:
    """Mixin of CodeGenerator: the visit_* methods for statements."""

    def run_body(self, stmts):
        for st in stmts:
            self.visit(st)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # docstring
        self.visit(node.value)

    def visit_Pass(self, node):
        pass

    def visit_Assign(self, node):
        value = self.visit(node.value)
        for tgt in node.targets:
            self.assign(tgt, value)

    def visit_AnnAssign(self, node):
        if node.value is None:
            raise self.error(node, "annotation without a value is not supported")
        self.assign(node.target, self.visit(node.value))

    def visit_AugAssign(self, node):
        cur = self.visit(_load_copy(node.target))
        kind = BINOPS.get(type(node.op))
        if kind is None:
            raise self.error(node, f"unsupported operator {type(node.op).__name__}")
        self.assign(node.target, self.binop(kind, cur, self.visit(node.value)))

    def assign(self, tgt, value):
        if isinstance(tgt, ast.Name):
            self.scope[tgt.id] = value
        elif isinstance(tgt, (ast.Tuple, ast.List)):
            vals = list(value) if isinstance(value, (tuple, list)) else None
            if vals is None or len(vals) != len(tgt.elts):
                raise self.error(tgt, "cannot unpack: value count does not match targets")
            for t, v in zip(tgt.elts, vals):
                self.assign(t, v)
        elif isinstance(tgt, ast.Subscript):
            container = self.visit(tgt.value)
            if not isinstance(container, list):
                raise self.error(tgt, "only Python lists support item assignment in kernels")
            idx = self.visit(tgt.slice)
            if is_ir(idx):
                raise self.error(tgt, "list index must be a compile-time constant")
            container[idx] = value
        else:
            raise self.error(tgt, f"unsupported assignment target {type(tgt).__name__}")

    def visit_Return(self, node):
        raise Return(None if node.value is None else self.visit(node.value))

    def visit_Assert(self, node):
        cond = self.visit(node.test)
        if is_ir(cond):
            raise self.error(node, "assert needs a compile-time condition (use constexpr values)")
        if not cond:
            msg = self.visit(node.msg) if node.msg is not None else "assertion failed"
            raise self.error(node, f"static assertion failed: {msg}")

    def visit_If(self, node):
        cond = self.visit(node.test)
        if not is_ir(cond):
            self.run_body(node.body if cond else node.orelse)
            return
        if T.scalar_of(cond.type) != T.int1 or T.block_size(cond.type) is not None:
            cond = self.b.cmp("ne", cond, self.to_ir(0, like=cond)) if not T.block_size(cond.type) else None
            if cond is None:
                raise self.error(node.test, "if-condition must be a scalar, not a block")
        self.dynamic_if(node, cond)

    def dynamic_if(self, node, cond):
        before = dict(self.scope)
        op, then_r, else_r = self.b.if_op(cond, [])
        outer_region = self.b.region
        branch_scopes = []
        for region, body in ((then_r, node.body), (else_r, node.orelse)):
            self.scope = dict(before)
            self.b.region = region
            self.run_nested(body, "if")
            branch_scopes.append(self.scope)
        merged = []  # names whose value differs between the branches, merged as if-results
        for n in sorted(_assigned_names(node.body + node.orelse)):
            vals = [s.get(n) for s in branch_scopes]
            if any(v is None for v in vals) or not all(is_ir(v) or isinstance(v, (int, float)) for v in vals):
                continue  # defined in one branch only, or not a value: not visible after the if
            if not any(is_ir(v) for v in vals) and vals[0] == vals[1]:
                before[n] = vals[0]
                continue
            merged.append(n)
        yields = ([], [])
        for n in merged:
            like = next(s[n] for s in branch_scopes if is_ir(s[n]))
            for i, region in enumerate((then_r, else_r)):
                self.b.region = region
                v = self.to_ir(branch_scopes[i][n], like=like)
                if v.type != like.type:
                    raise self.error(node, f"variable '{n}' has type {v.type} in one branch and "
                                           f"{like.type} in the other")
                yields[i].append(v)
        for i, region in enumerate((then_r, else_r)):
            self.b.region = region
            self.b.yield_(yields[i])
        self.b.region = outer_region
        op.results = [Value(v.type, op, i) for i, v in enumerate(yields[0])]
        self.scope = before
        for n, r in zip(merged, op.results):
            self.scope[n] = r

    def run_nested(self, stmts, what):
        try:
            self.run_body(stmts)
        except Return:
            raise self.error(stmts[-1], f"return inside a dynamic {what} is not supported") from None

    def visit_For(self, node):
        """`for target in f(...)`: what it means is declared with f (registry.loop)."""
        if node.orelse:
            raise self.error(node, "for-else is not supported")
        it = node.iter
        entry = None
        if isinstance(it, ast.Call):
            entry, _ = registry.resolve(self.visit(it.func))
        if entry is None or entry.loop is None:
            raise self.error(it, "for loops must iterate over range(...) or tl.static_range(...)")
        entry.loop(self, node, *(self.visit(a) for a in it.args))

    def unrolled_for(self, node, values):
        """A loop unrolled at compile time: the body once per value, the target a constant."""
        for v in values:
            self.assign(node.target, v)
            self.run_body(node.body)

    def dynamic_for(self, node, bounds):
        assigned = _assigned_names(node.body) - {node.target.id}
        carried = []  # (name, index-in-list or None)
        inits = []
        for n in sorted(assigned):
            if n not in self.scope:
                continue
            v = self.scope[n]
            if isinstance(v, list):
                for i, e in enumerate(v):
                    carried.append((n, i))
                    inits.append(self.to_ir(e))
            elif is_ir(v) or isinstance(v, (bool, int, float)):
                carried.append((n, None))
                inits.append(self.to_ir(v))
        op, body = self.b.for_op(bounds[0], bounds[1], bounds[2], inits)
        outer_region, before = self.b.region, dict(self.scope)
        self.b.region = body
        self.scope = dict(before)
        for n in {n for n, i in carried if i is not None}:
            self.scope[n] = list(self.scope[n])
        self.scope[node.target.id] = body.args[0]
        body.args[0].name = node.target.id
        for (n, i), arg in zip(carried, body.args[1:]):
            arg.name = n if i is None else f"{n}{i}"
            if i is None:
                self.scope[n] = arg
            else:
                self.scope[n][i] = arg
        self.run_nested(node.body, "loop")
        outs = []
        for (n, i), init in zip(carried, inits):
            cur = self.scope[n] if i is None else self.scope[n][i]
            cur = self.to_ir(cur, like=init) if not is_ir(cur) else cur
            if cur.type != init.type:
                raise self.error(node, f"loop-carried variable '{n}' changes type from {init.type} "
                                       f"to {cur.type} inside the loop")
            outs.append(cur)
        self.b.yield_(outs)
        self.b.region = outer_region
        self.scope = before
        for n in {n for n, i in carried if i is not None}:
            self.scope[n] = list(self.scope[n])
        for (n, i), r in zip(carried, op.results):
            if i is None:
                self.scope[n] = r
            else:
                self.scope[n][i] = r

    def visit_While(self, node):
        raise self.error(node, "while loops are not supported; use range() or tl.static_range()")


def _load_copy(target):
    """A Load-context copy of an assignment target (for augmented assignment)."""
    node = ast.parse(ast.unparse(target), mode="eval").body
    return ast.copy_location(_relocate(node, target), target)


def _relocate(node, like):
    for n in ast.walk(node):
        if hasattr(n, "lineno"):
            n.lineno, n.col_offset = like.lineno, like.col_offset
    return node
