"""The builtin registry: what calling an object inside a kernel means, declared once per object.

    @builtin(tl.load)
    def load(gen, node, pointer, mask, other):
        return gen.b.load(...)

`builtin(obj)` declares the lowering of `obj(...)`, `loop(obj)` what `for v in obj(...):` means,
and `method(name)` what `x.name(...)` means on a kernel value; `compile_time(obj)` declares
a callable that runs as in Python on compile-time arguments, and `unrolled(obj)` a for loop over
`obj(...)` that is unrolled at compile time. A lutc.language builtin states its
parameters and defaults once, in its stub in lutc/language.py: calls are bound against the stub and
the lowering receives the values in the stub's order (its parameter names must be the stub's,
checked when it is registered). Other callables (Python builtins, methods) receive the arguments
as written. The AST visitor dispatches every call through `resolve()`, and finds the Python
builtins a kernel may name through `python_name()`.
"""
from __future__ import annotations

import builtins as _py
import inspect

from ..ir import Value

_REQUIRED = inspect.Parameter.empty


class Builtin:
    """One thing kernels may call: its lowering, and its meaning as the iterator of a for loop."""

    def __init__(self, name, params=None):
        self.name = name
        self.params = params  # [(name, default or _REQUIRED)] to bind calls against, or None
        self.lower = None     # (gen, node, *args) -> value
        self.loop = None      # (gen, for_node, *args) -> None; emits the whole loop

    def call(self, gen, node, args, kwargs):
        if self.lower is None:
            raise gen.error(node, f"{self.name}() can only be iterated over by a for loop")
        if self.params is None:
            return self.lower(gen, node, *args, **kwargs)
        return self.lower(gen, node, *_bind(gen, node, self.name, args, kwargs, self.params))


class BoundMethod:
    """A method looked up on a kernel value, such as `x.to`."""

    def __init__(self, builtin: Builtin, value):
        self.builtin = builtin
        self.value = value


_TABLE: dict = {}     # called object -> Builtin
_METHODS: dict = {}   # method name -> Builtin
_PY_NAMES: dict = {}  # name -> Python builtin registered here


def builtin(*objs):
    """Decorator: the lowering of calls to each of `objs`."""
    def register(lower):
        for obj in objs:
            entry = _entry(obj)
            if entry.lower is not None:
                raise ValueError(f"builtin {entry.name} is declared twice")
            _check_params(entry, lower)
            entry.lower = lower
        return lower
    return register


def loop(*objs):
    """Decorator: what `for target in obj(*args): body` means, for each of `objs`."""
    def register(emit):
        for obj in objs:
            _entry(obj).loop = emit
        return emit
    return register


def method(name):
    """Decorator: the lowering of `value.name(...)` on a kernel value (the value comes first)."""
    def register(lower):
        _METHODS[name] = Builtin(name)
        _METHODS[name].lower = lower
        return lower
    return register


def compile_time(*objs):
    """Declare callables that kernels may call on compile-time values only; they run as in Python."""
    for obj in objs:
        builtin(obj)(_run_in_python(obj))


def _run_in_python(fn):
    def lower(gen, node, *args, **kwargs):
        if any(isinstance(a, Value) for a in (*args, *kwargs.values())):
            raise gen.error(node, f"cannot call {getattr(fn, '__name__', fn)!r} on kernel values "
                                  "inside a lutc kernel")
        return fn(*args, **kwargs)
    return lower


def unrolled(*objs):
    """Declare that `for target in obj(*args): body` is unrolled over Python's `obj(*args)`."""
    for obj in objs:
        loop(obj)(_unroll_over(obj))


def _unroll_over(fn):
    def emit(gen, node, *args):
        gen.unrolled_for(node, fn(*args))
    return emit


def resolve(fn):
    """(Builtin, leading arguments) for a called object, or (None, ()) if kernels cannot call it."""
    if isinstance(fn, BoundMethod):
        return fn.builtin, (fn.value,)
    try:
        return _TABLE.get(fn), ()
    except TypeError:  # unhashable, so not registered
        return None, ()


def bound_method(name, value):
    """`value.name` for a kernel value if `name` is a registered method, else None."""
    entry = _METHODS.get(name)
    return None if entry is None else BoundMethod(entry, value)


def python_name(name):
    """The Python builtin a kernel means by `name`, or None if kernels cannot use it."""
    return _PY_NAMES.get(name)


def _entry(obj):
    entry = _TABLE.get(obj)
    if entry is None:
        name = getattr(obj, "__name__", repr(obj))
        entry = _TABLE[obj] = Builtin(name, _stub_params(obj))
        if getattr(_py, name, None) is obj:
            _PY_NAMES[name] = obj
    return entry


def _stub_params(obj):
    """The parameters of a lutc.language stub, or None for callables that take any arguments."""
    if not inspect.isfunction(obj):
        return None
    params = inspect.signature(obj).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return [(p.name, p.default) for p in params]


def _check_params(entry, lower):
    if entry.params is None:
        return
    names = list(inspect.signature(lower).parameters)[2:]  # after (gen, node)
    stub = [p for p, _ in entry.params]
    if names != stub:
        raise TypeError(f"the lowering of tl.{entry.name} takes {names}, "
                        f"but its stub in lutc/language.py takes {stub}")


def _bind(gen, node, name, args, kwargs, params):
    if len(args) > len(params):
        raise gen.error(node, f"tl.{name}() takes at most {len(params)} arguments, got {len(args)}")
    out = dict(zip((p for p, _ in params), args))
    for k, v in kwargs.items():
        if all(k != p for p, _ in params):
            raise gen.error(node, f"tl.{name}() got an unexpected keyword argument '{k}'")
        if k in out:
            raise gen.error(node, f"tl.{name}() got multiple values for '{k}'")
        out[k] = v
    for p, default in params:
        if p not in out:
            if default is _REQUIRED:
                raise gen.error(node, f"tl.{name}() missing required argument '{p}'")
            out[p] = default
    return [out[p] for p, _ in params]
