"""The lowering of each lutc.language builtin (`tl.load`, `tl.arange`, ...) and of `x.to(dtype)`.

Each is declared once with `@builtin(tl.<name>)`; its parameters come from its stub in
lutc/language.py (see registry.py).
"""
from __future__ import annotations

from .. import language as tl
from ..ir import Value
from ..ir import types as T
from .registry import builtin, compile_time, method, unrolled


def _dtype_arg(gen, node, v, what="dtype"):
    if not isinstance(v, T.DType):
        raise gen.error(node, f"{what} must be a lutc dtype such as tl.float32, got {v!r}")
    return v


def _const_int(gen, node, v, what):
    if isinstance(v, Value) or not isinstance(v, int) or isinstance(v, bool):
        raise gen.error(node, f"{what} must be a compile-time integer, got {v!r}")
    return v


def _need_ir(gen, node, v, what):
    if not isinstance(v, Value):
        raise gen.error(node, f"'{what}' must be a kernel value, got the constant {v!r}")
    return v


def _shape(gen, node, shape):
    """A compile-time block shape: an int or a tuple of one or two ints, 1..4096 lanes in all."""
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not 1 <= len(dims) <= 2:
        raise gen.error(node, f"lutc blocks are 1-D or 2-D; got shape {dims}")
    dims = tuple(_const_int(gen, node, d, "block size") for d in dims)
    size = 1
    for d in dims:
        size *= d
    if not 1 <= size <= 4096 or min(dims) < 1:
        raise gen.error(node, f"block size must be 1..4096 lanes, got {size}")
    return dims


# grid and blocks ------------------------------------------------------------------------
def _axis(gen, node, axis):
    axis = _const_int(gen, node, axis, "axis")
    if not 0 <= axis < gen.grid_rank:
        raise gen.error(node, f"axis {axis} is outside this kernel's grid of rank {gen.grid_rank}")
    return axis


@builtin(tl.program_id)
def program_id(gen, node, axis):
    return gen.b.program_id(_axis(gen, node, axis))


@builtin(tl.num_programs)
def num_programs(gen, node, axis):
    return gen.b.num_programs(_axis(gen, node, axis))


@builtin(tl.arange)
def arange(gen, node, start, end):
    return gen.b.arange(_const_int(gen, node, start, "start"), _const_int(gen, node, end, "end"))


def _splat(gen, node, shape, value, dtype):
    dims = _shape(gen, node, shape)
    dt = _dtype_arg(gen, node, dtype)
    v = gen.b.cast(gen.to_ir(value), dt) if isinstance(value, Value) else gen.b.const(value, dt)
    return gen.b.splat(v, dims)


@builtin(tl.zeros)
def zeros(gen, node, shape, dtype):
    return _splat(gen, node, shape, 0, dtype)


@builtin(tl.full)
def full(gen, node, shape, value, dtype):
    return _splat(gen, node, shape, value, dtype)


# memory ---------------------------------------------------------------------------------
@builtin(tl.load)
def load(gen, node, pointer, mask, other):
    pointer = _need_ir(gen, node, pointer, "pointer")
    mask = None if mask is None else gen.to_ir(mask)
    other = None if other is None else gen.to_ir(other)
    return gen.b.load(pointer, mask, other)


@builtin(tl.store)
def store(gen, node, pointer, value, mask):
    pointer = _need_ir(gen, node, pointer, "pointer")
    elem = T.scalar_of(pointer.type)
    value = gen.to_ir(value, like=gen.b.const(0, elem.elem) if isinstance(elem, T.PointerType)
                      and not isinstance(value, Value) else None)
    gen.b.store(pointer, value, None if mask is None else gen.to_ir(mask))


@builtin(tl.prefetch)
def prefetch(gen, node, pointer, locality):
    pointer = _need_ir(gen, node, pointer, "pointer")
    locality = _const_int(gen, node, locality, "prefetch locality")
    if not 0 <= locality <= 3:
        raise gen.error(node, f"prefetch locality must be 0..3, got {locality}")
    if not isinstance(pointer.type, T.PointerType):
        raise gen.error(node, f"prefetch() takes one scalar pointer (a cache line), got {pointer.type}")
    gen.b.prefetch(pointer, locality)


# lane-wise and reductions ---------------------------------------------------------------
@builtin(tl.where)
def where(gen, node, condition, x, y):
    x_ir = gen.to_ir(x, like=y if isinstance(y, Value) else None)
    return gen.b.select(gen.to_ir(condition), x_ir, gen.to_ir(y, like=x_ir))


def _lane_binary(op):
    def lower(gen, node, x, y):
        return gen.binop(op, x, y)
    return lower


def _lane_unary(op):
    def lower(gen, node, x):
        return gen.b.unary(op, _need_ir(gen, node, x, "x"))
    return lower


def _reduction(op):
    def lower(gen, node, x, axis):
        axis = None if axis is None else _const_int(gen, node, axis, "axis")
        return gen.b.reduce(op, _need_ir(gen, node, x, "x"), axis)
    return lower


builtin(tl.minimum)(_lane_binary("min"))
builtin(tl.maximum)(_lane_binary("max"))
for _op in ("abs", "round", "floor", "ceil", "sqrt", "exp", "log"):
    builtin(getattr(tl, _op))(_lane_unary(_op))
for _op in ("sum", "max", "min"):
    builtin(getattr(tl, _op))(_reduction(_op))


@builtin(tl.cdiv)
def cdiv(gen, node, x, y):
    if not isinstance(x, Value) and not isinstance(y, Value):
        return -(-x // y)
    return gen.binop("floordiv", gen.binop("sub", gen.binop("add", x, y), 1), y)


# casts, shapes, tables ------------------------------------------------------------------
@method("to")
def to(gen, node, x, *args, **kwargs):
    if len(args) + len(kwargs) != 1:
        raise gen.error(node, "x.to(dtype) takes exactly one dtype")
    return gen.b.cast(x, _dtype_arg(gen, node, args[0] if args else kwargs.get("dtype")))


@builtin(tl.bitcast)
def bitcast(gen, node, x, dtype):
    return gen.b.bitcast(_need_ir(gen, node, x, "x"), _dtype_arg(gen, node, dtype))


@builtin(tl.concat)
def concat(gen, node, x, y):
    return gen.b.concat(_need_ir(gen, node, x, "x"), _need_ir(gen, node, y, "y"))


@builtin(tl.reshape)
def reshape(gen, node, x, shape):
    return gen.b.reshape(_need_ir(gen, node, x, "x"), _shape(gen, node, shape))


@builtin(tl.expand_dims)
def expand_dims(gen, node, x, axis):
    axis = _const_int(gen, node, axis, "axis")
    if axis not in (0, 1, -1):
        raise gen.error(node, f"expand_dims axis must be 0 or 1, got {axis}")
    x = _need_ir(gen, node, x, "x")
    return gen.b.expand_dims(x, axis % (len(T.block_shape(x.type)) + 1))


@builtin(tl.broadcast_to)
def broadcast_to(gen, node, x, shape):
    return gen.b.splat(gen.to_ir(x), _shape(gen, node, shape))


@builtin(tl.trans)
def trans(gen, node, x):
    return gen.b.trans(_need_ir(gen, node, x, "x"))


@builtin(tl.dot)
def dot(gen, node, a, b, acc):
    a, b = _need_ir(gen, node, a, "a"), _need_ir(gen, node, b, "b")
    return gen.b.dot(a, b, None if acc is None else _need_ir(gen, node, acc, "acc"))


@builtin(tl.lut_build)
def lut_build(gen, node, xs):
    return gen.b.lut_build(_need_ir(gen, node, xs, "xs"))


@builtin(tl.lookup)
def lookup(gen, node, table, idx):
    return gen.b.lookup(_need_ir(gen, node, table, "table"), _need_ir(gen, node, idx, "idx"))


def _u8_arg(gen, node, v, what):
    """A uint8 kernel scalar, or a compile-time int 0..255 as a constant."""
    if isinstance(v, Value):
        if v.type != T.uint8:
            raise gen.error(node, f"'{what}' must be a uint8 scalar (use .to(tl.uint8)), got {v.type}")
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
        raise gen.error(node, f"'{what}' must be a uint8 scalar or an int 0..255, got {v!r}")
    return gen.b.const(v, T.uint8)


@builtin(tl.pair_madd)
def pair_madd(gen, node, a, b, ra, rb):
    return gen.b.pair_madd(_need_ir(gen, node, a, "a"), _need_ir(gen, node, b, "b"),
                           _u8_arg(gen, node, ra, "ra"), _u8_arg(gen, node, rb, "rb"))


@builtin(tl.pair_order)
def pair_order(gen, node, x):
    return gen.b.pair_order(_need_ir(gen, node, x, "x"))


# compile time ---------------------------------------------------------------------------
@builtin(tl.static_assert)
def static_assert(gen, node, condition, message):
    if isinstance(condition, Value):
        raise gen.error(node, "static_assert needs a compile-time condition")
    if not condition:
        raise gen.error(node, f"static assertion failed: {message}" if message else "static assertion failed")


compile_time(tl.static_range)
unrolled(tl.static_range)
