"""@lutc.jit: DSL kernel functions (JITFunction), their specialization to IR, and grid launches."""
from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import textwrap

from . import compiler
from .errors import CompilationError, LaunchError
from .frontend.ast_to_ir import CodeGenerator, Return
from .ir import Function, IRBuilder, Param
from .ir import types as T
from .language import constexpr

def _is_constexpr_annotation(ann) -> bool:
    if ann is constexpr or isinstance(ann, constexpr):
        return True
    return isinstance(ann, str) and ann.split(".")[-1] == "constexpr"


class JITFunction:
    """A kernel written in the lutc DSL. Launch with `kernel[grid](*args, threads=T)`."""

    __lutc_jit__ = True

    def __init__(self, fn):
        self.fn = fn
        self.name = fn.__name__
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.globals = fn.__globals__
        self.signature = inspect.signature(fn)
        self.constexpr_names = [n for n, p in self.signature.parameters.items()
                                if _is_constexpr_annotation(p.annotation)]
        self.filename = inspect.getsourcefile(fn) or "<unknown>"
        lines, start = inspect.getsourcelines(fn)
        raw = "".join(lines)
        self.source = textwrap.dedent(raw)
        first = next(ln for ln in lines if ln.strip())
        self.col_offset = len(first) - len(first.lstrip())
        self.line_offset = start - 1
        self._fdef = None
        self._launch_cache = {}

    def __repr__(self) -> str:
        return f"<lutc.jit kernel {self.name}>"

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"launch lutc kernels with a grid: {self.name}[grid](...); "
                           "inside another kernel, calls are inlined")

    def source_line(self, line):
        return linecache.getline(self.filename, line) or None

    def parse(self) -> ast.FunctionDef:
        if self._fdef is None:
            mod = ast.parse(self.source)
            self._fdef = next(n for n in mod.body if isinstance(n, ast.FunctionDef))
        return self._fdef

    def free_vars(self) -> dict:
        """Names the kernel reads from its closure or module globals, with their values."""
        closure = {}
        if self.fn.__closure__:
            closure = {n: c.cell_contents for n, c in zip(self.fn.__code__.co_freevars, self.fn.__closure__)
                       if _cell_filled(c)}
        out = {}
        for node in ast.walk(self.parse()):
            if isinstance(node, ast.Name) and node.id not in self.signature.parameters:
                if node.id in closure:
                    out[node.id] = closure[node.id]
                elif node.id in self.globals:
                    out[node.id] = self.globals[node.id]
        return out

    def callees(self):
        """@lutc.jit functions this kernel refers to by name."""
        return [v for v in self.free_vars().values() if isinstance(v, JITFunction) and v is not self]

    def source_hash(self) -> str:
        """Hash of the source of this kernel and its callees, and of the constants they read."""
        seen, stack, h = set(), [self], hashlib.sha256()
        while stack:
            f = stack.pop()
            if id(f) in seen:
                continue
            seen.add(id(f))
            h.update(f.name.encode() + b"\0" + f.source.encode() + b"\0")
            consts = sorted((k, repr(v)) for k, v in f.free_vars().items() if _is_constant(v))
            h.update(repr(consts).encode())
            stack.extend(sorted(f.callees(), key=lambda c: c.name))
        return h.hexdigest()

    # ------------------------------------------------------------------ specialization
    def specialize(self, signature: dict, constexprs: dict, grid_rank: int = 1) -> Function:
        """Build the IR for given param types and constexpr values."""
        params, scope = [], {}
        missing = [n for n in self.signature.parameters if n not in signature and n not in constexprs
                   and not (n in self.constexpr_names and
                            self.signature.parameters[n].default is not inspect.Parameter.empty)]
        if missing:
            raise TypeError(f"{self.name}: no type or value given for parameter(s) {', '.join(missing)}")
        for n, p in self.signature.parameters.items():
            if n in self.constexpr_names:
                scope[n] = constexprs[n] if n in constexprs else p.default
            elif n in constexprs:
                raise TypeError(f"{self.name}: parameter '{n}' is not constexpr (annotate it tl.constexpr)")
            else:
                params.append(Param(n, compiler.parse_type(signature[n])))
        fn = Function(self.name, params, grid_rank)
        for p, arg in zip(params, fn.body.args):
            scope[p.name] = arg
        gen = CodeGenerator(self, IRBuilder(fn.body), scope, grid_rank)
        try:
            gen.run_body(self.parse().body)
        except Return as r:
            if r.value is not None:
                raise CompilationError("a kernel launched with a grid cannot return a value",
                                       self.filename, self.line_offset + 1, 0) from None
        return fn

    def compile(self, signature, constexprs=None, grid_rank=1, target="host"):
        """Compile (or fetch from cache) a specialization; returns a CompiledFunction."""
        try:
            return compiler.compile_function(self, signature, constexprs or {}, grid_rank, target)
        except CompilationError as e:
            raise e.with_traceback(None) from None

    # ------------------------------------------------------------------ launch
    def __getitem__(self, grid):
        def launcher(*args, threads=1, **kwargs):
            return self.launch(grid, args, kwargs, threads)
        return launcher

    def launch(self, grid, args, kwargs, threads=1):
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        sig, cexpr, values = {}, {}, []
        for n, v in bound.arguments.items():
            if n in self.constexpr_names:
                cexpr[n] = v
            else:
                sig[n] = _infer_type(n, v)
                values.append(v)
        meta = dict(bound.arguments)
        g = grid(meta) if callable(grid) else grid
        g = tuple(g) if isinstance(g, (tuple, list)) else (g,)
        key = (tuple(sig.values()), tuple(sorted((k, repr(v)) for k, v in cexpr.items())), len(g))
        compiled = self._launch_cache.get(key)
        if compiled is None:
            compiled = self.compile(sig, cexpr, len(g))
            self._launch_cache[key] = compiled
        compiled.launch(g, values, threads)

    def emit(self, signature, constexprs=None, grid_rank=1, target="host", kind="asm"):
        """This specialization's 'ir', 'llvm', 'asm' (text) or 'obj' (bytes)."""
        try:
            return compiler.emit(self, signature, constexprs or {}, grid_rank, target, kind)
        except CompilationError as e:
            raise e.with_traceback(None) from None


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def _is_constant(v) -> bool:
    if isinstance(v, (int, float, bool, str, T.DType, type(None))):
        return True
    return isinstance(v, tuple) and all(_is_constant(e) for e in v)


def jit(fn=None):
    """Decorator: turn a Python function written in the lutc DSL into a JITFunction."""
    if fn is None:
        return jit
    return JITFunction(fn)


def _infer_type(name, v):
    if isinstance(v, bool):
        return T.int1
    if isinstance(v, int):
        return T.int32 if -2**31 <= v < 2**31 else T.int64
    if isinstance(v, float):
        return T.float32
    dt = getattr(v, "dtype", None)
    if dt is not None and hasattr(v, "ctypes"):
        return T.PointerType(T.dtype_from_numpy(dt))
    if dt is not None and hasattr(v, "data_ptr"):
        return T.PointerType(T.dtype_from_numpy(str(dt).replace("torch.", "")))
    if dt is not None and hasattr(v, "item"):  # numpy scalar
        return T.dtype_from_numpy(dt)
    raise LaunchError(f"argument '{name}': cannot pass {type(v).__name__} to a lutc kernel")
