"""Value ranges of integer IR values: the proofs that tl.dot's AVX2 `vpmaddubsw` cannot saturate.

`value_range(v)` walks the definitions of `v` (constants, splats, shape changes, casts, `&`,
`min`/`max`, `>>`, `+`/`-`, `where`, `concat`) and returns (lo, hi) bounds that every lane of `v` is proven
to lie in; anything it does not understand (loads, loop-carried values, lookups) gets the full
range of its dtype, so the result is always sound.
"""
from __future__ import annotations

from . import types as T


def dtype_range(dt):
    if dt == T.int1:
        return 0, 1
    if dt.kind == "uint":
        return 0, (1 << dt.bits) - 1
    return -(1 << (dt.bits - 1)), (1 << (dt.bits - 1)) - 1


def value_range(v, depth=0):
    """(lo, hi) with lo <= every lane of `v` <= hi, for an integer value `v`."""
    dt = T.scalar_of(v.type)
    full = dtype_range(dt)
    op = v.owner
    name = getattr(op, "opname", None)
    if depth > 32 or name is None or not isinstance(dt, T.DType) or dt.is_float:
        return full
    o = op.operands
    if name == "const":
        c = int(op.attrs["value"])
        return c, c
    if name in ("splat", "broadcast", "reshape", "transpose", "slice"):
        return value_range(o[0], depth + 1)
    if name == "cast":
        src = T.scalar_of(o[0].type)
        if isinstance(src, T.DType) and not src.is_float:
            return _fit(value_range(o[0], depth + 1), full)
        return full
    if name == "concat":
        (a, b), (c, d) = value_range(o[0], depth + 1), value_range(o[1], depth + 1)
        return min(a, c), max(b, d)
    if name == "select":
        (a, b), (c, d) = value_range(o[1], depth + 1), value_range(o[2], depth + 1)
        return min(a, c), max(b, d)
    if name != "binary":
        return full
    kind = op.attrs["kind"]
    ra, rb = value_range(o[0], depth + 1), value_range(o[1], depth + 1)
    if kind == "and":
        nonneg = [r[1] for r in (ra, rb) if r[0] >= 0]
        return (0, min(nonneg)) if nonneg else full
    if kind == "min":
        return min(ra[0], rb[0]), min(ra[1], rb[1])
    if kind == "max":
        return max(ra[0], rb[0]), max(ra[1], rb[1])
    if kind == "shr" and ra[0] >= 0 and rb[0] == rb[1] and 0 <= rb[0] < dt.bits:
        return ra[0] >> rb[0], ra[1] >> rb[0]
    if kind == "add":
        return _fit((ra[0] + rb[0], ra[1] + rb[1]), full)
    if kind == "sub":
        return _fit((ra[0] - rb[1], ra[1] - rb[0]), full)
    return full


def _fit(r, full):
    """`r` if it fits the dtype's range (no wraparound happened), else the full range."""
    return r if full[0] <= r[0] and r[1] <= full[1] else full


def maddubs_safe(a_range, b_range) -> bool:
    """Whether `vpmaddubsw` (u8 x s8 products summed in pairs, saturated to i16) is exact.

    Each i16 lane is a0*b0 + a1*b1 with a in a_range (unsigned bytes) and b in b_range (signed
    bytes); it is exact iff every such sum lies in [-32768, 32767]. Products are extreme at the
    corners of the ranges, so 2 * (the extreme products) must fit. With a in [0, 255] this holds
    iff b in [-64, 64]: 2 * 255 * 64 = 32640 <= 32767, while 2 * 255 * 65 = 33150 is not.
    """
    if a_range[0] < 0 or a_range[1] > 255 or b_range[0] < -128 or b_range[1] > 127:
        return False
    corners = [x * y for x in a_range for y in b_range]
    return -32768 <= 2 * min(corners) and 2 * max(corners) <= 32767
