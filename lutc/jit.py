"""@lutc.jit: kernel functions, their specialization, compilation (cached) and launch."""
from __future__ import annotations

import ast
import ctypes
import functools
import hashlib
import inspect
import linecache
import struct
import textwrap
import threading

import llvmlite
import llvmlite.binding as llvm
import numpy as np

from . import __version__
from .backend.codegen import GRID_SLOTS, build_module
from .backend.jit import JITModule, emit_assembly, emit_object, parse_and_optimize, runs_here
from .backend.target import Target, get_target
from .cache import DiskCache, hash_key
from .errors import CompilationError, LaunchError
from .frontend.ast_to_ir import CodeGenerator, Return as _Return
from .ir import Function, IRBuilder, Param
from .ir import types as T
from .passes import run_pipeline

_DTYPE_ALIASES = {"fp16": T.float16, "fp32": T.float32, "fp64": T.float64, "float16": T.float16,
                  "float32": T.float32, "float64": T.float64, "int8": T.int8, "uint8": T.uint8,
                  "int16": T.int16, "uint16": T.uint16, "int32": T.int32, "uint32": T.uint32,
                  "int64": T.int64, "uint64": T.uint64, "bool": T.int1}
_MEMORY_CACHE: dict = {}
_DISK_CACHE = DiskCache()
_LOCK = threading.RLock()


def parse_type(t):
    """A param type from a DType, PointerType, or a string such as '*f32', 'i32', 'fp16'."""
    if isinstance(t, (T.DType, T.PointerType)):
        return t
    if isinstance(t, str):
        s = t.strip()
        if s.startswith("*"):
            return T.PointerType(parse_type(s[1:]))
        if s in T.DTYPES_BY_NAME:
            return T.DTYPES_BY_NAME[s]
        if s in _DTYPE_ALIASES:
            return _DTYPE_ALIASES[s]
    raise ValueError(f"unknown kernel parameter type {t!r} (expected e.g. '*f32', 'i32', 'f32')")


def _is_constexpr_annotation(ann) -> bool:
    from .language import constexpr
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
                params.append(Param(n, parse_type(signature[n])))
        fn = Function(self.name, params, grid_rank)
        for p, arg in zip(params, fn.body.args):
            scope[p.name] = arg
        gen = CodeGenerator(self, IRBuilder(fn.body), scope, grid_rank)
        try:
            gen.run_body(self.parse().body)
        except _Return as r:
            if r.value is not None:
                raise CompilationError("a kernel launched with a grid cannot return a value",
                                       self.filename, self.line_offset + 1, 0) from None
        return fn

    def compile(self, signature, constexprs=None, grid_rank=1, target="host"):
        """Compile (or fetch from cache) a specialization; returns a CompiledFunction."""
        try:
            return compile_function(self, signature, constexprs or {}, grid_rank, target)
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


# ---------------------------------------------------------------------- compilation

class CompiledFunction:
    """Native code for one specialization, launched over a grid through the thread pool."""

    def __init__(self, name, params, obj, target, ir_text):
        self.name = name
        self.params = params
        self.target = target
        self._ir = ir_text
        self.obj = obj
        self._module = JITModule(obj, target) if runs_here(target) else None
        self._launch = None
        if self._module is not None:
            addr = self._module.address(f"{name}_launch")
            self._launch = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(addr)
        self._packers = [_packer(p.type) for p in params]
        self._ctx_type = ctypes.c_uint64 * (GRID_SLOTS + len(params))

    @property
    def ir(self) -> str:
        """The lutc IR after passes (text)."""
        if callable(self._ir):
            self._ir = self._ir()
        return self._ir

    @property
    def launch_address(self) -> int:
        return self._module.address(f"{self.name}_launch")

    @property
    def native_launch(self):
        """The ctypes entry `launch(ctx_address, ntasks, nthreads)` (no checks at all)."""
        if self._launch is None:
            raise LaunchError(f"{self.name} was compiled for {self.target.name}, not this host")
        return self._launch

    def make_ctx(self, grid, values):
        """The argument block passed to native code: grid dims, then one 8-byte slot per param."""
        if len(values) != len(self.params):
            raise LaunchError(f"{self.name} takes {len(self.params)} arguments, got {len(values)}")
        g = list(grid) + [1] * (3 - len(grid))
        if any((not isinstance(d, int)) or d < 0 for d in g):
            raise LaunchError(f"grid dimensions must be non-negative ints, got {tuple(grid)}")
        ctx = self._ctx_type()
        ctx[0], ctx[1], ctx[2] = g
        for i, (p, pack, v) in enumerate(zip(self.params, self._packers, values)):
            ctx[GRID_SLOTS + i] = pack(p.name, v)
        return ctx, g[0] * g[1] * g[2]

    def launch(self, grid, values, threads=1):
        if self._launch is None:
            raise LaunchError(f"{self.name} was compiled for {self.target.name}, not this host")
        threads = int(threads)
        if threads < 1:
            raise LaunchError(f"threads must be >= 1, got {threads}")
        ctx, ntasks = self.make_ctx(grid, values)
        if ntasks:
            self._launch(ctypes.addressof(ctx), ntasks, threads)


def _packer(t):
    if isinstance(t, T.PointerType):
        np_dtype = _np_dtype(t.elem)

        def pack(name, v):
            if type(v) is np.ndarray:
                if v.dtype != np_dtype:
                    raise LaunchError(f"argument '{name}': expected an array of {t.elem}, got {v.dtype}")
                return v.ctypes.data
            if isinstance(v, int) and not isinstance(v, bool):
                return v  # a raw address
            if hasattr(v, "data_ptr"):
                if str(v.dtype).replace("torch.", "") != np_dtype.name:
                    raise LaunchError(f"argument '{name}': expected a tensor of {t.elem}, got {v.dtype}")
                return v.data_ptr()
            if isinstance(v, np.ndarray):
                return pack(name, np.asarray(v))
            raise LaunchError(f"argument '{name}': expected an array, got {type(v).__name__}")
        return pack
    if t.is_float:
        fmt = {16: "<e", 32: "<f", 64: "<d"}[t.bits]
        ufmt = {16: "<H", 32: "<I", 64: "<Q"}[t.bits]
        return lambda name, v: struct.unpack(ufmt, struct.pack(fmt, float(v)))[0]
    lo = -(1 << (t.bits - 1)) if t.is_signed else 0
    hi = (1 << (t.bits - (1 if t.is_signed else 0))) - 1

    def pack_int(name, v):
        v = int(v)
        if not lo <= v <= hi:
            raise LaunchError(f"argument '{name}': {v} does not fit in {t}")
        return v & 0xFFFFFFFFFFFFFFFF
    return pack_int


def _np_dtype(dt):
    names = {v: k for k, v in _DTYPE_ALIASES.items() if not k.startswith("fp")}
    return np.dtype(names[dt])


@functools.lru_cache(maxsize=1)
def compiler_hash() -> str:
    """Hash of the compiler's own source (frontend, IR, passes, backend), so that a changed
    compiler never reuses objects built by another one with the same version number."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parent
    h = hashlib.sha256()
    files = [root / n for n in ("jit.py", "passes.py", "language.py")]
    for sub in ("ir", "frontend", "backend"):
        files += sorted((root / sub).glob("*.py"))
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def cache_key(jitfn, signature, constexprs, grid_rank, target):
    return hash_key("lutc", __version__, compiler_hash(), llvmlite.__version__, llvm.llvm_version_info,
                    jitfn.source_hash(), jitfn.name,
                    tuple((k, str(parse_type(v))) for k, v in sorted(signature.items())),
                    tuple(sorted((k, repr(v)) for k, v in constexprs.items())),
                    grid_rank, target.key)


def lower(jitfn, signature, constexprs, grid_rank, target: Target, trace=None):
    """Frontend + passes: the verified, lowered IR Function."""
    fn = jitfn.specialize(signature, constexprs, grid_rank)
    return run_pipeline(fn, target, trace=trace)


def emit(jitfn, signature, constexprs, grid_rank=1, target="host", kind="asm"):
    """'ir' (lutc IR after passes), 'llvm' (optimized LLVM IR), 'asm' (text) or 'obj' (bytes)."""
    target = get_target(target)
    fn = lower(jitfn, signature, constexprs, grid_rank, target)
    if kind == "ir":
        return str(fn)
    mod, tm = parse_and_optimize(build_module(fn, target), target)
    if kind == "llvm":
        return str(mod)
    if kind == "asm":
        return emit_assembly(mod, tm)
    if kind == "obj":
        return emit_object(mod, tm)
    raise ValueError(f"unknown emit kind {kind!r}: expected ir, llvm, asm or obj")


def _params_from_signature(jitfn, signature):
    """Kernel params in declaration order, or None if the signature does not cover them all."""
    names = [n for n in jitfn.signature.parameters if n not in jitfn.constexpr_names]
    if any(n not in signature for n in names):
        return None
    return [Param(n, signature[n]) for n in names]


def compile_function(jitfn, signature, constexprs, grid_rank, target) -> CompiledFunction:
    target = get_target(target)
    signature = {k: parse_type(v) for k, v in signature.items()}
    key = cache_key(jitfn, signature, constexprs, grid_rank, target)
    with _LOCK:
        hit = _MEMORY_CACHE.get(key)
        if hit is not None:
            return hit
        params = _params_from_signature(jitfn, signature)
        obj = _DISK_CACHE.get(key) if params is not None else None
        if obj is None:  # a miss: run the frontend and passes, then LLVM
            fn = lower(jitfn, signature, constexprs, grid_rank, target)
            params = fn.params
            mod, tm = parse_and_optimize(build_module(fn, target), target)
            obj = emit_object(mod, tm)
            _DISK_CACHE.put(key, obj)
            ir_text = str(fn)
        else:  # a hit needs no frontend work; the IR text is rebuilt only if asked for
            ir_text = lambda: str(lower(jitfn, signature, constexprs, grid_rank, target))  # noqa: E731
        compiled = CompiledFunction(jitfn.name, params, obj, target, ir_text)
        _MEMORY_CACHE[key] = compiled
        return compiled
