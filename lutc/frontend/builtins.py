"""Frontend handlers for lutc.language builtins and value methods (x.to(dtype))."""
from __future__ import annotations

from ..ir import Value
from ..ir import types as T


class BoundMethod:
    """A method looked up on a kernel value, such as `x.to`."""

    def __init__(self, name, value):
        self.name = name
        self.value = value


def _dtype_arg(gen, node, v, what="dtype"):
    if not isinstance(v, T.DType):
        raise gen.error(node, f"{what} must be a lutc dtype such as tl.float32, got {v!r}")
    return v


def _const_int(gen, node, v, what):
    if isinstance(v, Value) or not isinstance(v, int) or isinstance(v, bool):
        raise gen.error(node, f"{what} must be a compile-time integer, got {v!r}")
    return v


def _shape_size(gen, node, shape):
    if isinstance(shape, (tuple, list)):
        if len(shape) != 1:
            raise gen.error(node, f"lutc blocks are 1-D; got shape {tuple(shape)}")
        shape = shape[0]
    size = _const_int(gen, node, shape, "block size")
    if not 1 <= size <= 4096:
        raise gen.error(node, f"block size must be 1..4096 lanes, got {size}")
    return size


def call_method(gen, node, m: BoundMethod, args, kwargs):
    if m.name == "to":
        if len(args) + len(kwargs) != 1:
            raise gen.error(node, "x.to(dtype) takes exactly one dtype")
        dt = _dtype_arg(gen, node, args[0] if args else kwargs.get("dtype"))
        return gen.b.cast(m.value, dt)
    raise gen.error(node, f"unknown method {m.name}")


def _bind(gen, node, name, args, kwargs, params, defaults=None):
    defaults = defaults or {}
    if len(args) > len(params):
        raise gen.error(node, f"tl.{name}() takes at most {len(params)} arguments, got {len(args)}")
    out = dict(zip(params, args))
    for k, v in kwargs.items():
        if k not in params:
            raise gen.error(node, f"tl.{name}() got an unexpected keyword argument '{k}'")
        if k in out:
            raise gen.error(node, f"tl.{name}() got multiple values for '{k}'")
        out[k] = v
    for p in params:
        if p not in out:
            if p not in defaults:
                raise gen.error(node, f"tl.{name}() missing required argument '{p}'")
            out[p] = defaults[p]
    return [out[p] for p in params]


_UNARY = ("abs", "round", "floor", "ceil", "sqrt", "exp", "log")
_REDUCE = {"sum": "sum", "max": "max", "min": "min"}


def call_builtin(gen, node, name, args, kwargs):
    b = gen.b
    if name in ("program_id", "num_programs"):
        (axis,) = _bind(gen, node, name, args, kwargs, ["axis"])
        axis = _const_int(gen, node, axis, "axis")
        if not 0 <= axis < gen.grid_rank:
            raise gen.error(node, f"axis {axis} is outside this kernel's grid of rank {gen.grid_rank}")
        return b.program_id(axis) if name == "program_id" else b.num_programs(axis)
    if name == "arange":
        start, end = _bind(gen, node, name, args, kwargs, ["start", "end"])
        return b.arange(_const_int(gen, node, start, "start"), _const_int(gen, node, end, "end"))
    if name in ("zeros", "full"):
        params = ["shape", "dtype"] if name == "zeros" else ["shape", "value", "dtype"]
        vals = _bind(gen, node, name, args, kwargs, params)
        size = _shape_size(gen, node, vals[0])
        dt = _dtype_arg(gen, node, vals[-1])
        value = 0 if name == "zeros" else vals[1]
        v = b.cast(gen.to_ir(value), dt) if isinstance(value, Value) else b.const(value, dt)
        return b.splat(v, size)
    if name == "load":
        ptr, mask, other = _bind(gen, node, name, args, kwargs, ["pointer", "mask", "other"],
                                 {"mask": None, "other": None})
        ptr = _need_ir(gen, node, ptr, "pointer")
        mask = None if mask is None else gen.to_ir(mask)
        other = None if other is None else gen.to_ir(other)
        return b.load(ptr, mask, other)
    if name == "store":
        ptr, value, mask = _bind(gen, node, name, args, kwargs, ["pointer", "value", "mask"],
                                 {"mask": None})
        ptr = _need_ir(gen, node, ptr, "pointer")
        elem = T.scalar_of(ptr.type)
        value = gen.to_ir(value, like=b.const(0, elem.elem) if isinstance(elem, T.PointerType)
                          and not isinstance(value, Value) else None)
        b.store(ptr, value, None if mask is None else gen.to_ir(mask))
        return None
    if name == "where":
        c, x, y = _bind(gen, node, name, args, kwargs, ["condition", "x", "y"])
        x_ir = gen.to_ir(x, like=y if isinstance(y, Value) else None)
        return b.select(gen.to_ir(c), x_ir, gen.to_ir(y, like=x_ir))
    if name in ("minimum", "maximum"):
        x, y = _bind(gen, node, name, args, kwargs, ["x", "y"])
        return gen.binop("min" if name == "minimum" else "max", x, y)
    if name in _UNARY:
        (x,) = _bind(gen, node, name, args, kwargs, ["x"])
        return b.unary(name, _need_ir(gen, node, x, "x"))
    if name in _REDUCE:
        (x,) = _bind(gen, node, name, args, kwargs, ["x"])
        return b.reduce(_REDUCE[name], _need_ir(gen, node, x, "x"))
    if name == "cdiv":
        x, y = _bind(gen, node, name, args, kwargs, ["x", "y"])
        if not isinstance(x, Value) and not isinstance(y, Value):
            return -(-x // y)
        return gen.binop("floordiv", gen.binop("sub", gen.binop("add", x, y), 1), y)
    if name == "bitcast":
        x, dt = _bind(gen, node, name, args, kwargs, ["x", "dtype"])
        return b.bitcast(_need_ir(gen, node, x, "x"), _dtype_arg(gen, node, dt))
    if name == "concat":
        x, y = _bind(gen, node, name, args, kwargs, ["x", "y"])
        return b.concat(_need_ir(gen, node, x, "x"), _need_ir(gen, node, y, "y"))
    if name == "lut_build":
        (xs,) = _bind(gen, node, name, args, kwargs, ["xs"])
        return b.lut_build(_need_ir(gen, node, xs, "xs"))
    if name == "lookup":
        table, idx = _bind(gen, node, name, args, kwargs, ["table", "idx"])
        return b.lookup(_need_ir(gen, node, table, "table"), _need_ir(gen, node, idx, "idx"))
    if name == "static_assert":
        cond, msg = _bind(gen, node, name, args, kwargs, ["condition", "message"], {"message": ""})
        if isinstance(cond, Value):
            raise gen.error(node, "static_assert needs a compile-time condition")
        if not cond:
            raise gen.error(node, f"static assertion failed: {msg}" if msg else "static assertion failed")
        return None
    raise gen.error(node, f"tl.{name} is not implemented")


def _need_ir(gen, node, v, what):
    if not isinstance(v, Value):
        raise gen.error(node, f"'{what}' must be a kernel value, got the constant {v!r}")
    return v
