"""The frontend: walks a kernel's Python AST and emits typed lutc IR (no tracing, no templates)."""
from __future__ import annotations

import ast
import builtins as _py

from .. import language as tl
from ..errors import CompilationError
from ..ir import IRBuilder, IRTypeError, Loc, Value
from ..ir import types as T
from . import builtins as B

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div",
           ast.FloorDiv: "floordiv", ast.Mod: "rem", ast.BitAnd: "and", ast.BitOr: "or",
           ast.BitXor: "xor", ast.LShift: "shl", ast.RShift: "shr"}
_CMPS = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}
_PY_BINOPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
              "div": lambda a, b: a / b, "floordiv": lambda a, b: a // b, "rem": lambda a, b: a % b,
              "and": lambda a, b: a & b, "or": lambda a, b: a | b, "xor": lambda a, b: a ^ b,
              "shl": lambda a, b: a << b, "shr": lambda a, b: a >> b}
_PY_CMPS = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
            "ge": lambda a, b: a >= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b}
_PY_BUILTINS = {"range": _py.range, "min": _py.min, "max": _py.max, "len": _py.len,
                "int": _py.int, "float": _py.float, "bool": _py.bool, "abs": _py.abs,
                "tuple": _py.tuple, "list": _py.list, "enumerate": _py.enumerate,
                "zip": _py.zip, "True": True, "False": False, "None": None}


class _Return(Exception):
    def __init__(self, value):
        self.value = value


def is_ir(v) -> bool:
    return isinstance(v, Value)


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


class CodeGenerator(ast.NodeVisitor):
    """Translates one kernel (or inlined callee) body into IR appended to `builder`."""

    def __init__(self, jitfn, builder: IRBuilder, scope: dict, grid_rank: int, depth: int = 0):
        self.jitfn = jitfn
        self.b = builder
        self.scope = scope
        self.grid_rank = grid_rank
        self.depth = depth
        self.filename = jitfn.filename
        self.free = jitfn.free_vars()  # closure and global names the kernel reads

    # ------------------------------------------------------------------ errors and locations
    def error(self, node, msg) -> CompilationError:
        line = getattr(node, "lineno", 1) + self.jitfn.line_offset
        col = getattr(node, "col_offset", 0) + self.jitfn.col_offset
        return CompilationError(msg, self.filename, line, col, self.jitfn.source_line(line))

    def visit(self, node):
        if hasattr(node, "lineno"):
            self.b.loc = Loc(self.filename, node.lineno + self.jitfn.line_offset,
                             node.col_offset + self.jitfn.col_offset)
        try:
            return super().visit(node)
        except (CompilationError, _Return):
            raise
        except IRTypeError as e:
            raise self.error(node, str(e)) from None
        except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, OverflowError) as e:
            raise self.error(node, f"{type(e).__name__}: {e}") from None

    def generic_visit(self, node):
        raise self.error(node, f"unsupported syntax in a lutc kernel: {type(node).__name__}")

    # ------------------------------------------------------------------ values
    def lookup_name(self, node, name):
        if name in self.scope:
            return self.scope[name]
        if name in self.free:
            return self.free[name]
        if name in _PY_BUILTINS:
            return _PY_BUILTINS[name]
        raise self.error(node, f"name '{name}' is not defined")

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
            return _PY_CMPS[pred](a, b)
        a_ir = self.to_ir(a, like=b if is_ir(b) else None)
        return self.b.cmp(pred, a_ir, self.to_ir(b, like=a_ir))

    # ------------------------------------------------------------------ statements
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
        kind = _BINOPS.get(type(node.op))
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
        raise _Return(None if node.value is None else self.visit(node.value))

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
        except _Return:
            raise self.error(stmts[-1], f"return inside a dynamic {what} is not supported") from None

    def visit_For(self, node):
        if node.orelse:
            raise self.error(node, "for-else is not supported")
        it = node.iter
        if not isinstance(it, ast.Call):
            raise self.error(it, "for loops must iterate over range(...) or tl.static_range(...)")
        fn = self.visit(it.func)
        args = [self.visit(a) for a in it.args]
        if fn is tl.static_range or fn in (_py.enumerate, _py.zip):
            for v in fn(*args):
                self.assign(node.target, v)
                self.run_body(node.body)
            return
        if fn is not _py.range:
            raise self.error(it, "for loops must iterate over range(...) or tl.static_range(...)")
        if not isinstance(node.target, ast.Name):
            raise self.error(node.target, "a range loop variable must be a plain name")
        if not 1 <= len(args) <= 3:
            raise self.error(it, "range() takes 1 to 3 arguments")
        lo, hi, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) == 3 else 1)
        if not is_ir(step) and step <= 0:
            raise self.error(it, "range() step must be a positive constant")
        if is_ir(step):
            raise self.error(it, "range() step must be a compile-time constant")
        self.dynamic_for(node, [self.b.cast(self.to_ir(v), T.int32) for v in (lo, hi, step)])

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

    # ------------------------------------------------------------------ expressions
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
            if node.attr == "to":
                return B.BoundMethod("to", base)
            raise self.error(node, f"kernel values have no attribute '{node.attr}'")
        try:
            return getattr(base, node.attr)
        except AttributeError:
            raise self.error(node, f"'{type(base).__name__}' object has no attribute '{node.attr}'") from None

    def visit_Subscript(self, node):
        base = self.visit(node.value)
        if is_ir(base):
            sl = node.slice
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

    def visit_Slice(self, node):
        return slice(*(None if x is None else self.visit(x) for x in (node.lower, node.upper, node.step)))

    def visit_BinOp(self, node):
        kind = _BINOPS.get(type(node.op))
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
            return _py.all(_PY_CMPS[_CMPS[type(o)]](a, b) for o, a, b in zip(node.ops, vals, vals[1:]))
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

    def visit_Call(self, node):
        fn = self.visit(node.func)
        args = [self.visit(a) for a in node.args]
        kwargs = {k.arg: self.visit(k.value) for k in node.keywords}
        if isinstance(fn, B.BoundMethod):
            return B.call_method(self, node, fn, args, kwargs)
        name = getattr(fn, "__lutc_builtin__", None)
        if name is not None:
            return B.call_builtin(self, node, name, args, kwargs)
        if getattr(fn, "__lutc_jit__", False):
            return self.inline_call(node, fn, args, kwargs)
        if fn in (_py.min, _py.max) and any(is_ir(a) for a in args):
            acc = args[0]
            for a in args[1:]:
                acc = self.binop("min" if fn is _py.min else "max", acc, a)
            return acc
        if fn is _py.abs and args and is_ir(args[0]):
            return self.b.unary("abs", args[0])
        if any(is_ir(a) for a in args) or any(is_ir(v) for v in kwargs.values()):
            raise self.error(node, f"cannot call {getattr(fn, '__name__', fn)!r} on kernel values "
                                   "inside a lutc kernel")
        if fn in _PY_BUILTINS.values() or isinstance(fn, type) and issubclass(fn, T.DType):
            return fn(*args, **kwargs)
        if fn is tl.static_range:
            return fn(*args)
        raise self.error(node, f"cannot call {getattr(fn, '__name__', fn)!r} inside a lutc kernel; "
                               "only lutc.language builtins and @lutc.jit functions")

    def inline_call(self, node, callee, args, kwargs):
        if self.depth > 32:
            raise self.error(node, "call depth exceeds 32 (recursion is not supported)")
        try:
            bound = callee.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise self.error(node, f"bad call to {callee.name}: {e}") from None
        bound.apply_defaults()
        for pname in callee.constexpr_names:
            if is_ir(bound.arguments.get(pname)):
                raise self.error(node, f"argument '{pname}' of {callee.name} is constexpr and "
                                       "needs a compile-time value")
        # lists are passed by value: a callee returns what it changes
        scope = {k: _copy_lists(v) for k, v in bound.arguments.items()}
        sub = CodeGenerator(callee, self.b, scope, self.grid_rank, self.depth + 1)
        fdef = callee.parse()
        try:
            sub.run_body(fdef.body)
        except _Return as r:
            return r.value
        finally:
            self.b.loc = None
        return None


def _copy_lists(v):
    return [_copy_lists(e) for e in v] if isinstance(v, list) else v


def _load_copy(target):
    """A Load-context copy of an assignment target (for augmented assignment)."""
    node = ast.parse(ast.unparse(target), mode="eval").body
    return ast.copy_location(_relocate(node, target), target)


def _relocate(node, like):
    for n in ast.walk(node):
        if hasattr(n, "lineno"):
            n.lineno, n.col_offset = like.lineno, like.col_offset
    return node
