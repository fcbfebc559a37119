"""The IR verifier: SSA dominance in structured regions and per-op type rules."""
from __future__ import annotations

from . import types as T
from .core import Function, Op, Region


class VerificationError(Exception):
    """The IR is malformed (a compiler bug, never a user error)."""


def _fail(op: Op, msg: str):
    where = f" (from {op.loc})" if op.loc else ""
    raise VerificationError(f"{op.opname}: {msg}{where}")


def _same(op, a, b, what):
    if a != b:
        _fail(op, f"{what}: {a} != {b}")


def _check_op(op: Op):
    o, r = op.operands, op.results
    name = op.opname
    if name == "binary":
        _same(op, o[0].type, o[1].type, "operand types")
        _same(op, r[0].type, o[0].type, "result type")
    elif name == "cmp":
        _same(op, o[0].type, o[1].type, "operand types")
        _same(op, r[0].type, T.with_elem(o[0].type, T.int1), "result type")
    elif name == "select":
        _same(op, o[1].type, o[2].type, "value types")
        _same(op, T.block_shape(o[0].type), T.block_shape(o[1].type), "condition shape")
    elif name == "load":
        _same(op, r[0].type, T.with_elem(o[0].type, T.scalar_of(o[0].type).elem), "result type")
        if len(o) == 3:
            _same(op, T.block_shape(o[1].type), T.block_shape(o[0].type), "mask shape")
            _same(op, o[2].type, r[0].type, "other type")
    elif name == "store":
        _same(op, T.scalar_of(o[1].type), T.scalar_of(o[0].type).elem, "stored type")
        _same(op, T.block_shape(o[1].type), T.block_shape(o[0].type), "value shape")
        if len(o) == 3:
            _same(op, T.block_shape(o[2].type), T.block_shape(o[0].type), "mask shape")
    elif name == "addptr":
        _same(op, T.block_shape(o[0].type), T.block_shape(o[1].type), "offset shape")
    elif name in ("reshape", "broadcast", "transpose"):
        _same(op, T.scalar_of(r[0].type), T.scalar_of(o[0].type), "element type")
        if name != "broadcast":
            _same(op, r[0].type.size, o[0].type.size, "lanes")
    elif name == "dot":
        (m, k), (k2, n) = o[0].type.shape, o[1].type.shape
        _same(op, k, k2, "inner dimension")
        _same(op, r[0].type.shape, (m, n), "result shape")
        _same(op, o[2].type, r[0].type, "accumulator type")
    elif name == "shuffle_bytes":
        _same(op, o[0].type, T.BlockType(T.uint8, 16), "table type")
        _same(op, T.block_size(o[1].type), T.block_size(r[0].type), "index lanes")
    elif name == "for":
        body = op.regions[0]
        for v in o[:3]:
            _same(op, v.type, T.int32, "loop bound type")
        carried = [v.type for v in o[3:]]
        _same(op, [a.type for a in body.args[1:]], carried, "carried arg types")
        _same(op, [v.type for v in r], carried, "result types")
        _check_yield(op, body, carried)
    elif name == "if":
        _same(op, o[0].type, T.int1, "condition type")
        for reg in op.regions:
            _check_yield(op, reg, [v.type for v in r])
    elif name == "pair_madd":
        _same(op, o[1].type, o[0].type, "pair operand types")
        _same(op, r[0].type, T.BlockType(T.int16, T.block_size(o[0].type)), "pair_madd result type")
    elif name == "pair_order":
        _same(op, r[0].type, o[0].type, "pair_order result type")
    elif name == "lookup" and T.scalar_of(o[0].type) != T.scalar_of(r[0].type):
        _fail(op, "lookup result dtype differs from the table dtype")


def _check_yield(op, region: Region, types):
    if not region.ops or region.ops[-1].opname != "yield":
        _fail(op, "region does not end with yield")
    _same(op, [v.type for v in region.ops[-1].operands], types, "yielded types")


def _verify_region(region: Region, visible: set):
    visible = set(visible) | set(region.args)
    for i, op in enumerate(region.ops):
        for v in op.operands:
            if v not in visible:
                _fail(op, f"operand {v} is used before it is defined or out of scope")
        if op.opname == "yield" and i != len(region.ops) - 1:
            _fail(op, "yield must be the last op of its region")
        if op.opname == "yield" and region.parent is None:
            _fail(op, "yield at function level")
        for reg in op.regions:
            _verify_region(reg, visible)
        _check_op(op)
        visible.update(op.results)


def verify(fn: Function) -> Function:
    """Check `fn`; raise VerificationError on the first problem. Returns fn."""
    _same_args = [a.type for a in fn.body.args] == [p.type for p in fn.params]
    if not _same_args:
        raise VerificationError("function body args do not match its params")
    _verify_region(fn.body, set())
    return fn
