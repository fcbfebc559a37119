"""Compiling a @lutc.jit specialization: parameter types, the cache key, lowering (frontend +
passes), LLVM, object emission, and the memory and disk caches of compiled objects."""
from __future__ import annotations

import collections
import functools
import hashlib
import pathlib
import threading

import llvmlite
import llvmlite.binding as llvm

from . import __version__
from .backend.llvm import build_module
from .backend.target import Target, get_target
from .backend.toolchain import emit_assembly, emit_object, parse_and_optimize
from .cache import DiskCache, hash_key
from .ir import Param
from .ir import types as T
from .launcher import CompiledFunction
from .passes import run_pipeline

_DTYPE_ALIASES = {"fp16": T.float16, "fp32": T.float32, "fp64": T.float64, "float16": T.float16,
                  "float32": T.float32, "float64": T.float64, "int8": T.int8, "uint8": T.uint8,
                  "int16": T.int16, "uint16": T.uint16, "int32": T.int32, "uint32": T.uint32,
                  "int64": T.int64, "uint64": T.uint64, "bool": T.int1}
_MEMORY_CACHE: "collections.OrderedDict" = collections.OrderedDict()   # least recently used first
MEMORY_CACHE_SIZE = 256      # compiled functions kept in memory (each owns an MCJIT engine)
_DISK_CACHE = DiskCache()
_LOCK = threading.RLock()
EMIT_KINDS = ("ir", "llvm", "asm", "obj")


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


@functools.lru_cache(maxsize=1)
def compiler_hash() -> str:
    """Hash of the compiler's own source (frontend, IR, passes, backend), so that a changed
    compiler never reuses objects built by another one with the same version number."""
    root = pathlib.Path(__file__).resolve().parent
    h = hashlib.sha256()
    files = [root / n for n in ("jitfunction.py", "compiler.py", "launcher.py", "passes.py", "language.py")]
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
    if kind not in EMIT_KINDS:
        raise ValueError(f"unknown emit kind {kind!r}: expected one of {', '.join(EMIT_KINDS)}")
    target = get_target(target)
    signature = {k: parse_type(v) for k, v in signature.items()}
    fn = lower(jitfn, signature, constexprs, grid_rank, target)
    if kind == "ir":
        return str(fn)
    mod, tm = parse_and_optimize(build_module(fn, target), target)
    if kind == "llvm":
        return str(mod)
    return emit_assembly(mod, tm) if kind == "asm" else emit_object(mod, tm)


def _params_from_signature(jitfn, signature):
    """Kernel params in declaration order, or None if the signature does not cover them all."""
    names = [n for n in jitfn.signature.parameters if n not in jitfn.constexpr_names]
    if any(n not in signature for n in names):
        return None
    return [Param(n, signature[n]) for n in names]


def compile_function(jitfn, signature, constexprs, grid_rank, target) -> CompiledFunction:
    """The CompiledFunction of one specialization: from memory, else from disk, else compiled."""
    target = get_target(target)
    signature = {k: parse_type(v) for k, v in signature.items()}
    key = cache_key(jitfn, signature, constexprs, grid_rank, target)
    with _LOCK:
        hit = _MEMORY_CACHE.get(key)
        if hit is not None:
            _MEMORY_CACHE.move_to_end(key)
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
        while len(_MEMORY_CACHE) > MEMORY_CACHE_SIZE:   # callers holding a function keep it alive
            _MEMORY_CACHE.popitem(last=False)
        return compiled
