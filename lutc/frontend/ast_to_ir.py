"""The frontend's entry point: walks a kernel's Python AST and emits typed lutc IR (no tracing, no
templates). CodeGenerator holds the state (builder, scope, grid rank) and the error locations,
resolves names, and dispatches calls: @lutc.jit callees are inlined, everything else goes through
the builtin registry. Statements, expressions and value arithmetic are its mixins."""
from __future__ import annotations

import ast
import builtins as _py

from ..errors import CompilationError
from ..ir import IRBuilder, IRTypeError, Loc
from . import language_builtins, python_builtins, registry  # noqa: F401  (they fill the registry)
from .expressions import Expressions
from .statements import Return, Statements
from .values import Values, is_ir

__all__ = ["CodeGenerator", "Return"]


class CodeGenerator(Statements, Expressions, Values, ast.NodeVisitor):
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
        except (CompilationError, Return):
            raise
        except IRTypeError as e:
            raise self.error(node, str(e)) from None
        except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, OverflowError) as e:
            raise self.error(node, f"{type(e).__name__}: {e}") from None

    def generic_visit(self, node):
        raise self.error(node, f"unsupported syntax in a lutc kernel: {type(node).__name__}")

    # ------------------------------------------------------------------ names and calls
    def lookup_name(self, node, name):
        if name in self.scope:
            return self.scope[name]
        if name in self.free:
            return self.free[name]
        fn = registry.python_name(name)
        if fn is not None:
            return fn
        if hasattr(_py, name):
            raise self.error(node, f"the Python builtin '{name}' is not supported in a lutc kernel")
        raise self.error(node, f"name '{name}' is not defined")

    def visit_Call(self, node):
        fn = self.visit(node.func)
        args = [self.visit(a) for a in node.args]
        kwargs = {k.arg: self.visit(k.value) for k in node.keywords}
        if getattr(fn, "__lutc_jit__", False):
            return self.inline_call(node, fn, args, kwargs)
        entry, leading = registry.resolve(fn)
        if entry is None:
            raise self.error(node, f"cannot call {getattr(fn, '__name__', fn)!r} inside a lutc kernel; "
                                   "only lutc.language builtins, some Python builtins and @lutc.jit functions")
        return entry.call(self, node, [*leading, *args], kwargs)

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
        except Return as r:
            return r.value
        finally:
            self.b.loc = None
        return None


def _copy_lists(v):
    return [_copy_lists(e) for e in v] if isinstance(v, list) else v

