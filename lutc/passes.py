"""Named IR rewrite passes: lookup lowering, memory-access analysis and dead-code removal."""
from __future__ import annotations

from .ir import IRBuilder, Region, verify, walk_region
from .ir import types as T

_SIDE_EFFECTS = {"store", "prefetch", "for", "if", "yield"}


def _rewrite(region: Region, rewrite_op, subst: dict):
    """Rebuild `region`'s op list, letting `rewrite_op(builder, op)` expand ops.

    rewrite_op returns None to keep the op, or a list of replacement values for its results.
    `subst` maps replaced values to their replacements in all later operands.
    """
    old = region.ops
    region.ops = []
    b = IRBuilder(region)
    for op in old:
        op.operands = [subst.get(v, v) for v in op.operands]
        for r in op.regions:
            _rewrite(r, rewrite_op, subst)
        b.loc = op.loc
        new_vals = rewrite_op(b, op)
        if new_vals is None:
            region.ops.append(op)
            continue
        for r, v in zip(op.results, new_vals):
            subst[r] = v


# ---------------------------------------------------------------------------- lower_lookup

def _pad16(b, v):
    """Pad a block of u8 to 16 lanes with zeros."""
    n = v.type.size
    if n == 16:
        return v
    zeros = b.splat(b.const(0, T.uint8), 16 - n)
    return b.concat(v, zeros)


def _lower_one_lookup(b, op):
    table, idx = op.operands
    tdt = table.type.elem
    size = table.type.size
    idx = b.bitcast(idx, T.uint8) if idx.type.elem != T.uint8 else idx
    idx = b.binary("and", idx, b.splat(b.const(size - 1, T.uint8), idx.type.size))
    if tdt.nbytes == 1:
        tab = b.bitcast(table, T.uint8) if tdt != T.uint8 else table
        out = b.shuffle_bytes(_pad16(b, tab), idx)
        return [b.bitcast(out, tdt) if tdt != T.uint8 else out]
    planes = b.bytes_split(table)
    looked = [b.shuffle_bytes(_pad16(b, p), idx) for p in planes]
    return [b.bytes_combine(looked, tdt)]


def lower_lookup(fn, target=None):
    """Rewrite `lookup(table, idx)` into byte shuffles over the table's byte planes.

    1-byte tables need one shuffle per 16/32/64 lookups. fp16 and fp32 tables are split
    into 2 or 4 byte planes (as in ELUTQ), each shuffled with the same indices, and the
    looked-up bytes are recombined into values. The target decides which instruction a
    shuffle becomes (`vpshufb`, `tbl`, or a portable select chain).
    """
    _rewrite(fn.body, lambda b, op: _lower_one_lookup(b, op) if op.opname == "lookup" else None, {})
    return fn


# ---------------------------------------------------------------------------- analyze_access

def _strides(fn, blocked):
    """Lane stride (in elements) of every int or pointer block that is affine in the lane.

    For a 2-D block this is the stride along its last axis (columns): `x[None, :]` and its
    broadcasts keep x's stride, a column `x[:, None]` and its broadcasts have 0.
    Loop-carried blocks take their initial value's stride unless listed in `blocked`.
    """
    stride = {}
    for op in walk_region(fn.body):  # pre-order: a for op is seen before its body
        name, o, res = op.opname, op.operands, op.results
        if name == "arange":
            stride[res[0]] = 1
        elif name == "splat":
            stride[res[0]] = 0
        elif name == "reshape" and res[0].type.rank == 2 and o[0].type.rank == 1:
            if res[0].type.shape[1] == 1:
                stride[res[0]] = 0
            elif o[0] in stride:
                stride[res[0]] = stride[o[0]]
        elif name == "broadcast" and res[0].type.rank == 2 and o[0].type.rank == 2:
            if o[0].type.shape[1] == 1:
                stride[res[0]] = 0
            elif o[0] in stride:
                stride[res[0]] = stride[o[0]]
        elif name == "binary" and all(v in stride for v in o):
            k, s0, s1 = op.attrs["kind"], stride[o[0]], stride[o[1]]
            if k == "add":
                stride[res[0]] = s0 + s1
            elif k == "sub":
                stride[res[0]] = s0 - s1
            elif k == "mul" and 0 in (s0, s1):
                c = _splat_const(o[1] if s1 == 0 else o[0])
                if c is not None:
                    stride[res[0]] = (s0 if s1 == 0 else s1) * c
            elif k == "shl" and s1 == 0:
                c = _splat_const(o[1])
                if c is not None:
                    stride[res[0]] = s0 << c
        elif name == "cast" and o[0] in stride and T.scalar_of(res[0].type).is_int:
            if T.scalar_of(res[0].type).bits >= T.scalar_of(o[0].type).bits:
                stride[res[0]] = stride[o[0]]
        elif name == "addptr" and all(v in stride for v in o):
            stride[res[0]] = stride[o[0]] + stride[o[1]]
        elif name == "for":
            for init, arg, r in zip(o[3:], op.regions[0].args[1:], res):
                if init in stride and arg not in blocked:
                    stride[arg] = stride[r] = stride[init]
    return stride


def _splat_const(v):
    op = v.owner
    if getattr(op, "opname", None) == "splat":
        inner = op.operands[0].owner
        if getattr(inner, "opname", None) == "const":
            return inner.attrs["value"]
    return None


def _loop_consistent_strides(fn):
    """Fixpoint: a loop-carried block keeps its stride only if the loop body preserves it."""
    blocked = set()
    while True:
        stride = _strides(fn, blocked)
        bad = set()
        for op in walk_region(fn.body):
            if op.opname == "for":
                body = op.regions[0]
                for arg, y in zip(body.args[1:], body.ops[-1].operands):
                    if arg in stride and stride.get(y) != stride[arg]:
                        bad.add(arg)
        if not bad:
            return stride
        blocked |= bad


def analyze_access(fn, target=None):
    """Mark block loads/stores as 'contig' (one vector access), 'uniform' or 'gather'; 2-D ones
    as 'rows' (one vector access per row, when columns are contiguous) or 'gather'."""
    stride = _loop_consistent_strides(fn)
    for op in walk_region(fn.body):
        if op.opname in ("load", "store") and isinstance(op.operands[0].type, T.BlockType):
            s = stride.get(op.operands[0])
            if op.operands[0].type.rank == 2:
                op.attrs["access"] = "rows" if s == 1 else "gather"
                continue
            op.attrs["access"] = {1: "contig", 0: "uniform"}.get(s, "gather")
    return fn


# ---------------------------------------------------------------------------- dce

def dce(fn, target=None):
    """Remove ops without side effects whose results are never used."""
    while True:
        used = set()
        for op in walk_region(fn.body):
            used.update(op.operands)
        removed = _dce_region(fn.body, used)
        if not removed:
            return fn


def _dce_region(region, used):
    keep, removed = [], 0
    for op in region.ops:
        for r in op.regions:
            removed += _dce_region(r, used)
        if op.opname not in _SIDE_EFFECTS and op.results and not any(r in used for r in op.results):
            removed += 1
            continue
        keep.append(op)
    region.ops = keep
    return removed


PIPELINE = (("lower_lookup", lower_lookup), ("dce", dce), ("analyze_access", analyze_access))


def run_pipeline(fn, target, verify_each=True, trace=None):
    """Run every pass in order; verify the IR after each. `trace` collects (name, text)."""
    verify(fn)
    for name, p in PIPELINE:
        p(fn, target)
        if verify_each:
            verify(fn)
        if trace is not None:
            trace.append((name, str(fn)))
    return fn
